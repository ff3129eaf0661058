"""Record a training run: loss, per-parameter, per-autograd-node and per-module statistics.

Example:
    >>> import torch, tempfile, graphviz_autograd as ga
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> with ga.Recorder(net, tempfile.mkdtemp(), optimizer=opt, every=1) as rec:
    ...     for step in range(3):
    ...         opt.zero_grad()
    ...         loss = net(torch.randn(16, 4)).pow(2).mean()
    ...         loss.backward()
    ...         opt.step()
    ...         rec.log(step, loss=loss)
    >>> len(ga.open_run(rec.run_dir).steps())
    3
"""
from __future__ import annotations

import itertools
import math
import threading
import time
import warnings
import weakref

import torch

from graphviz_autograd.errors import ConfigError, HookError, describe
from graphviz_autograd.live import tags
from graphviz_autograd.live.frames import user_frame
from graphviz_autograd.live.instrument import pop_node_hook, push_node_hook
from graphviz_autograd.live.models import rank_and_world, unwrap
from graphviz_autograd.live.modules import ModuleTracker
from graphviz_autograd.live.nodes import op_name, raw_saved
from graphviz_autograd.record import stats
from graphviz_autograd.record.scalars import scalar_value
from graphviz_autograd.store import RunWriter
from graphviz_autograd.tracer import trace_nodes

WHAT = ("params", "nodes", "activations")
MAX_SLOTS = 1_000_000
VERIFY_EVERY = 100     # re-trace at least every this many recorded steps, even if nothing changed
# A step on the last step's code path reuses its graph instead of tracing (bench_recorder.py lenet).
_ACT_OPS = ("ReluBackward", "SigmoidBackward", "TanhBackward")
# A store row: GRAD_STATS, param_norm and update_ratio, ACT_STATS (store.STATS, in its order)
ROW_STATS = stats.GRAD_STATS + ("param_norm", "update_ratio") + stats.ACT_STATS
_NO_GRAD, _NO_PARAM, _NO_ACT = (None,) * len(stats.GRAD_STATS), (None, None), (None,) * len(stats.ACT_STATS)
_OPEN: "weakref.WeakKeyDictionary[torch.nn.Module, Recorder]" = weakref.WeakKeyDictionary()


class Recorder:
    """Hooks a model (and optionally its optimizer) and writes one store per rank.

    Args:
        model: the network being trained (a ``DistributedDataParallel`` wrapper works).
        run_dir: directory of the run; one ``rank-<r>.gva.sqlite`` per process.
        optimizer: when given, learning rates and update/parameter ratios
            ``||w_after - w_before|| / ||w_after||`` are recorded; parameter norms are then
            measured right after ``optimizer.step()`` (in the same pass), else at ``log()``.
        every: record statistics every ``every``-th logged step (loss and
            scalars are written every step). Default 50: under 3% overhead even on
            LeNet-5, whose 9 ms steps make per-call costs count most (see
            ``benchmarks/README.md``); ``every=1`` records each step.
        record: which statistics: any of ``"params"``, ``"nodes"`` (one
            detector per autograd node), ``"activations"``; default all.
        overwrite: replace a run this rank already wrote in ``run_dir``.
        flush_interval: seconds between writes to disk (also flushed on close).
        source: record the source line that created each node.
        meta: extra JSON-able information stored with the run.

    Use as a context manager, or call :meth:`close`; every hook is removed on
    close, also when training raises.
    """

    def __init__(self, model: torch.nn.Module, run_dir, *, optimizer=None, every: int = 50,
                 record=WHAT, overwrite: bool = False, flush_interval: float = 2.0,
                 source: bool = True, meta: dict | None = None):
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"Recorder needs the model (an nn.Module) first, got {describe(model)}; "
                              "call ga.Recorder(model, 'runs/name', optimizer=opt)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every={every!r} must be a positive integer (1 records every step)")
        try:
            record = (record,) if isinstance(record, str) else tuple(record)
        except TypeError:
            raise ConfigError(f"record={record!r}: choose any of {WHAT}") from None
        bad = [r for r in record if r not in WHAT]
        if bad or not record:
            raise ConfigError(f"record={record!r}: choose any of {WHAT}")
        if (isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float))
                or not flush_interval >= 0):
            raise ConfigError(f"flush_interval={flush_interval!r} must be a number of seconds >= 0 "
                              "(0 writes every step)")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer= must be a torch.optim.Optimizer, got {describe(optimizer)}")
        if model in _OPEN:
            raise HookError(f"{type(model).__name__} already has an open Recorder writing to "
                            f"{_OPEN[model].run_dir}; close it (or use `with`) before starting another")
        self.model, self.optimizer, self.every, self.record = model, optimizer, every, set(record)
        self._record_nodes, self._record_acts = "nodes" in self.record, "activations" in self.record
        self.source = source
        rank, world = rank_and_world()
        # Under DistributedDataParallel name things after the wrapped model, so a
        # 2-rank run and a single-process run share ids (conv1.weight, not module.conv1.weight).
        self._named = unwrap(model)
        self._params = [(n, p) for n, p in self._named.named_parameters() if p.requires_grad]
        self._writer = RunWriter(run_dir, rank=rank, world_size=world, overwrite=overwrite,
                                 flush_interval=flush_interval, meta=_run_meta(self, meta))
        self.run_dir = str(self._writer.run_dir)
        self.rank, self.world_size = rank, world
        self._versions: dict[str, int] = {}
        self._closed = False
        self._logged = 0
        self._last_step: int | None = None
        self.graph = None
        self._details: list = []        # per creation index: (op, module, source, saved, tag) last seen
        self._updates = stats.UpdateNorms([p for _, p in self._params])   # ||w_after - w_before||
        self._last_len, self._last_version, self._last_slot_ids, self._unverified = -1, None, {}, 0
        self._reset_step()
        self._handles: list = []        # optimizer hooks; with the tracker's, on around recorded steps
        # The tracker's hooks on the top module also start and end a step's capture; a
        # DistributedDataParallel / DataParallel wrapper gets hooks of its own for that (its
        # forward runs on the calling thread, its inner module's may not).
        self._wrapped = self._named is not model
        self._tracker = ModuleTracker(
            self._named, on_output=self._on_module_output if self._record_acts else None,
            on_enter=None if self._wrapped else self._on_forward_start,
            on_exit=None if self._wrapped else self._on_forward_end)
        self._armed = False
        tags.mark_tagging()
        try:
            self._install_hooks()       # the first step records
        except BaseException:
            self._remove_hooks()
            self._writer.close()
            raise
        _OPEN[model] = self
        self._finalizer = weakref.finalize(self, _finalize, self._writer)

    # -- per-step state ----------------------------------------------------------
    def _reset_step(self) -> None:
        self._capturing = False
        self._capture_saved = False
        self._capture_thread = None
        self._slots: list = []          # node slot -> gradient rows of its outputs
        self._n_nodes = 0               # nodes created in this step's capture
        self._node_acts: dict = {}      # node slot -> activation row (ReLU/sigmoid/tanh outputs)
        self._node_handles: list = []
        self._acts: dict[str, list] = {}     # module -> activation rows of its calls
        self._output = None
        self._before = None
        self._update_norms = None

    def _recording_this_step(self) -> bool:
        return self._logged % self.every == 0

    # -- hooks --------------------------------------------------------------------
    def _on_forward_start(self) -> None:
        if self._closed or self._capturing or not self._recording_this_step():
            return
        if not torch.is_grad_enabled():
            return
        self._capturing = True
        self._capture_thread = threading.get_ident()
        self._tracker.calls.clear()     # call numbers count within this step
        self._capture_saved = False     # switched on by _on_node where this step differs
        push_node_hook(self._on_node)

    def _on_forward_end(self, output) -> None:
        if self._capturing:
            self._output = output       # fallback root when log() gets no loss

    def _on_node(self, node) -> None:
        # Runs for every autograd node of a recorded forward: kept lean (attribute
        # lookups and tuple building are most of its cost). The step's code path, (op,
        # module) per node in creation order, is compared with the last step's here.
        try:
            tracker = self._tracker
            stack = tracker.stack
            module = stack[-1] if stack else ""
            name = op_name(node)
            k = self._n_nodes
            self._n_nodes = k + 1
            meta = node.metadata
            meta[tags.CALL_KEY] = tracker.call_stack[-1] if stack else 0
            details = self._details
            known = details[k] if k < len(details) else None
            if self._capture_saved or known is None or known[0] != name or known[1] != module:
                # A new code path from here on (or the first step): read the details a new
                # graph version needs now, while the saved tensors still exist.
                self._capture_saved = True
                known = self._read_details(node, name, module)
                if k >= len(details):
                    details.extend([None] * (k + 1 - len(details)))
                details[k] = known
            meta[tags.MODULE_KEY] = known[4]
            if name == "AccumulateGrad":
                return
            if known[3] is not None:
                meta[tags.SAVED_KEY] = known[3]
            slots = self._slots
            if not self._record_nodes or len(slots) >= MAX_SLOTS:
                return
            slot = len(slots)
            slots.append(None)
            meta[tags.SLOT_KEY] = slot
            self._node_handles.append(node.register_prehook(self._grad_hook(slot)))
            if self._record_acts and name.startswith(_ACT_OPS):
                result = getattr(node, "_saved_result", None)
                if isinstance(result, torch.Tensor):
                    self._node_acts[slot] = stats.act_row(result, stats.saturation_kind(name))
        except Exception as exc:  # noqa: BLE001 - a recorder must never break training
            self._hook_failed(exc)

    def _read_details(self, node, name: str, module: str) -> tuple:
        """(op, module, source, saved, tag) of a node on a new code path; a detail that cannot
        be read is left empty (the node keeps its place in the path)."""
        source, saved = "", None
        try:
            if self.source:
                source = user_frame(2)
            if name != "AccumulateGrad":
                saved = _step_saved(node, self._logged)
        except Exception as exc:  # noqa: BLE001 - e.g. an odd saved value
            self._hook_failed(exc)
        return (name, module, source, saved, (module, source))

    def _grad_hook(self, slot: int):
        slots, grad_row = self._slots, stats.grad_row

        def hook(grad_outputs):
            if slot < len(slots):       # reduced now (so the gradient can be freed), read back at log()
                try:
                    slots[slot] = [grad_row(g) for g in grad_outputs if g is not None]
                except Exception as exc:  # noqa: BLE001 - never break the backward pass
                    self._hook_failed(exc)
        return hook

    def _on_module_output(self, name, module, output) -> None:
        if not self._capturing or "activations" not in self.record or next(module.children(), None) is not None:
            return
        t = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            return
        try:
            self._acts.setdefault(name, []).append(stats.act_row(t, stats.saturation_kind(type(module).__name__)))
        except Exception as exc:  # noqa: BLE001
            self._hook_failed(exc)

    def _before_opt_step(self, _opt, _args, _kwargs) -> None:
        if self._capturing:
            try:
                self._updates.before()
                self._before = True
            except Exception as exc:  # noqa: BLE001 - never break optimizer.step()
                self._hook_failed(exc)

    def _after_opt_step(self, _opt, _args, _kwargs) -> None:
        if self._before:
            self._before = None
            try:
                self._update_norms = self._updates.after()
            except Exception as exc:  # noqa: BLE001
                self._hook_failed(exc)

    def _hook_failed(self, exc: Exception) -> None:
        if not getattr(self, "_warned", False):
            self._warned = True
            warnings.warn(f"graphviz-autograd recorder hook failed and skipped a statistic: "
                          f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)

    # -- the public step ----------------------------------------------------------
    def log(self, step: int, loss=None, **scalars) -> None:
        """Record step ``step``: ``loss`` and any other scalar metrics (numbers or 1-element tensors).

        On recorded steps (every ``every``-th call) also writes the graph (when its
        structure changed) and the statistics gathered since the forward pass.
        """
        if self._closed:
            raise ConfigError(f"log({step}) on a closed Recorder ({self.run_dir}); create a new one")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ConfigError(f"step must be an int, got {describe(step)}")
        if self._last_step is not None and step <= self._last_step:
            raise ConfigError(f"step {step} is not after the last logged step {self._last_step}; "
                              "log increasing step numbers (e.g. a global step counter)")
        values = {"loss": loss} if loss is not None else {}
        values.update(scalars)
        row = {name: scalar_value(name, v) for name, v in values.items()}
        if self.optimizer is not None:
            groups = self.optimizer.param_groups
            for i, g in enumerate(groups):
                if "lr" in g and f"lr/{i}" not in row:
                    row["lr" if len(groups) == 1 else f"lr/{i}"] = float(g["lr"])
        logged = False
        try:
            version, step_stats = None, None
            if self._capturing:
                version, step_stats = self._collect(step, loss)
            self._writer.add_step(step, wall_time=time.time(), graph_version=version,
                                  scalars=row, stats=step_stats)
            logged = True
        finally:
            if self._capturing or self._node_handles:
                self._end_capture()
            self._logged += 1
            if logged:                  # a refused step does not count as the last one logged
                self._last_step = step
            if self._recording_this_step() != self._armed:
                self._arm()

    def _arm(self) -> None:
        """Hooks only around recorded steps: the steps in between run as if no recorder were
        there (a hook on a module sends every call of it down PyTorch's slow path; bench_recorder.py
        lenet, default every=50)."""
        want = not self._closed and self._recording_this_step()
        if want and not self._armed:
            try:
                self._install_hooks()
            except Exception as exc:  # noqa: BLE001 - the next step just records less
                self._remove_hooks()
                self._hook_failed(exc)
        elif not want and self._armed:
            self._remove_hooks()

    def _install_hooks(self) -> None:
        self._armed = True
        if self._wrapped:
            self._handles.append(self.model.register_forward_pre_hook(
                lambda _m, _a: self._on_forward_start()))
            self._handles.append(self.model.register_forward_hook(
                lambda _m, _a, out: self._on_forward_end(out)))
        optimizer = self.optimizer
        if optimizer is not None and "params" in self.record:
            self._handles.append(optimizer.register_step_pre_hook(self._before_opt_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_opt_step))
        self._tracker.install()

    def _collect(self, step: int, loss):
        # The step's code path, (op, module) of each node in creation order, is the last
        # step's when no node differed from _details (which hold the last step's path) and
        # as many nodes were made; then the graph is the last one traced.
        n = self._n_nodes
        version, slot_ids = None, {}
        if n and not self._capture_saved and n == self._last_len and self._unverified < VERIFY_EVERY:
            version, slot_ids = self._last_version, self._last_slot_ids   # same code path as before
            self._unverified += 1
        else:
            version, slot_ids = self._trace_step(step, loss)
            self._last_len, self._last_version, self._last_slot_ids = n, version, slot_ids
            self._unverified = 0
        try:
            rows = self._statistics(slot_ids)
        except Exception as exc:  # noqa: BLE001 - e.g. a meta-device model: no data to read back
            self._hook_failed(exc)
            rows = None
        return version, rows

    def _trace_step(self, step: int, loss):
        """Trace this step's graph: its version (stored when new) and slot -> node id."""
        root = loss if isinstance(loss, torch.Tensor) and loss.grad_fn is not None else self._output
        slot_ids: dict[int, str] = {}
        if root is None:
            return None, slot_ids

        def visit(fn, node_id):
            meta = fn.metadata
            slot = meta.get(tags.SLOT_KEY) if meta else None
            if slot is not None:
                slot_ids[slot] = node_id
        try:
            graph = trace_nodes(root, model=self._named, saved=True, visit=visit)
        except Exception as exc:  # noqa: BLE001 - e.g. an output without a graph
            self._hook_failed(exc)
            return None, slot_ids
        fp = graph.fingerprint()
        version = self._versions.get(fp)
        if version is None:
            version = self._versions[fp] = self._writer.add_graph(
                graph.to_json(), fp, first_step=step, n_nodes=len(graph))
        self.graph = graph
        return version, slot_ids

    def _statistics(self, slot_ids: dict[int, str]) -> dict:
        """The step's rows for the store: ``{kind: [(key, values in STATS order)]}``."""
        # Every row of the step, read back at once; spans: (kind, key, first, gradient rows, act rows)
        rows, spans = [], []
        slots, node_acts = self._slots, self._node_acts
        for slot, node_id in slot_ids.items():
            grads, act = slots[slot], node_acts.get(slot)
            if grads or act is not None:
                spans.append(("node", node_id, len(rows), len(grads) if grads else 0, act is not None))
                if grads:
                    rows.extend(grads)
                if act is not None:
                    rows.append(act)
        first_param = len(rows)
        params = [p for _, p in self._params] if "params" in self.record else []
        rows.extend(stats.grad_row(p.grad) for p in params)
        for name, group in self._acts.items():
            spans.append(("module", name, len(rows), 0, len(group)))
            rows.extend(group)
        rows = stats.read_rows(rows)
        out: dict[str, list] = {"node": [], "param": [], "module": []}
        for kind, key, first, n_grads, n_acts in spans:
            grads = stats.grad_values(rows[first:first + n_grads]) if n_grads else None
            acts = stats.act_values(rows[first + n_grads:first + n_grads + n_acts]) if n_acts else None
            out[kind].append((key, (grads or _NO_GRAD) + _NO_PARAM + (acts or _NO_ACT)))
        if params:
            updates = self._update_norms
            # measured right after optimizer.step() when the update was (one pass for both)
            sq = self._updates.after_sq if updates is not None else None
            sq = sq or stats.sq_norms(params, self._updates.params)
            sqrt, grad_values, entries = math.sqrt, stats.grad_values, out["param"]
            for (name, _), row, norm_sq, update_sq in zip(self._params, rows[first_param:], sq,
                                                          updates or itertools.repeat(None)):
                norm = sqrt(norm_sq)
                ratio = None if update_sq is None else (sqrt(update_sq) / norm if norm > 0 else math.nan)
                entries.append((name, (grad_values((row,)) or _NO_GRAD) + (norm, ratio) + _NO_ACT))
        return {kind: entries for kind, entries in out.items() if entries}

    def _end_capture(self) -> None:
        if self._capturing and self._capture_thread == threading.get_ident():
            pop_node_hook()
        elif self._capturing:
            warnings.warn("Recorder: log() was called on another thread than the forward; "
                          "the node creation hook stays on that thread until it exits",
                          RuntimeWarning, stacklevel=3)
        for h in self._node_handles:
            h.remove()
        self._reset_step()


    # -- closing ------------------------------------------------------------------
    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Remove every hook and write what is buffered. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._end_capture()
        finally:
            self._remove_hooks()
            self._updates.clear()
            _OPEN.pop(self.model, None)
            self._writer.close()

    def _remove_hooks(self) -> None:
        self._armed = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._tracker.remove()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Recorder({type(self.model).__name__} -> {self.run_dir}, rank {self.rank}/"
                f"{self.world_size}, every={self.every}, record={sorted(self.record)})")


def _step_saved(node, step_token: int):
    """Saved-tensor metadata of ``node``; storage keys tagged with the step that read them."""
    tensors, attrs = raw_saved(node)
    return tuple((n, m, b, (step_token, ptr), f) for n, m, b, ptr, f in tensors), attrs


def _finalize(writer: RunWriter) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - at interpreter exit, best effort
        pass


def _run_meta(rec: Recorder, extra: dict | None) -> dict:
    from graphviz_autograd import __version__

    model = rec._named
    meta = {"model": type(model).__name__, "parameters": sum(p.numel() for _, p in rec._params),
            "every": rec.every, "record": sorted(rec.record), "torch": torch.__version__,
            "graphviz_autograd": __version__, "stats": "native" if stats.NATIVE is not None else "numpy",
            "optimizer": type(rec.optimizer).__name__ if rec.optimizer is not None else None}
    meta.update(extra or {})
    return meta
