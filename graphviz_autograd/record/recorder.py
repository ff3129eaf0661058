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

import time
import types
import warnings
import weakref

import torch

from graphviz_autograd.errors import ConfigError, HookError, describe
from graphviz_autograd.live import tags
from graphviz_autograd.live.models import (grad_scale, is_compiled, parameter_names, rank_and_world,
                                           unwrap, unwrap_optimizer)
from graphviz_autograd.live.modules import ModuleTracker
from graphviz_autograd.live.tensors import is_sharded, plain, shard_groups
from graphviz_autograd.record import stats
from graphviz_autograd.record.capture import Capture
from graphviz_autograd.record.gather import open_gathered
from graphviz_autograd.record.gather_options import check_detail_ranks, check_ranks
from graphviz_autograd.record.incidents import IncidentOptions, Incidents, check_action
from graphviz_autograd.record.rows import ParamSet, step_rows
from graphviz_autograd.record.scalars import scalar_value
from graphviz_autograd.store import RunWriter
from graphviz_autograd.tracer import trace_nodes

WHAT = ("params", "nodes", "activations")
VERIFY_EVERY = 100     # re-trace at least every this many recorded steps, even if nothing changed
# A step on the last step's code path reuses its graph instead of tracing (bench_recorder.py lenet).
_OPEN: "weakref.WeakKeyDictionary[torch.nn.Module, Recorder]" = weakref.WeakKeyDictionary()
_NO_CAPTURE = types.SimpleNamespace(slots=[], node_acts={}, acts={})     # a step with no capture


class Recorder:
    """Hooks a model (and optionally its optimizer) and writes the run store.

    Args:
        model: the network being trained (DistributedDataParallel, FSDP2 and
            ``torch.compile`` wrappers work; parameters are named as in the plain model).
        run_dir: directory of the run: ``rank-0.gva.sqlite`` (one ``rank-<r>.gva.sqlite`` per
            process with ``ranks="each"``).
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
        scaler: the ``torch.amp.GradScaler`` of mixed-precision training: gradient statistics
            are recorded unscaled and the scale itself as the scalar ``loss_scale``.
        incidents: catch the step where training breaks (non-finite loss, metric or gradient;
            a loss spike; exploding gradients) on every step, record it in full and the next
            steps in detail (``run.incidents()``); an :class:`IncidentOptions` tunes it, False
            turns it off.
        on_incident: ``"record"`` (default), ``"raise"`` (stop training with the incident's
            summary as an :class:`~graphviz_autograd.errors.IncidentError`, after the store is
            flushed and the detail steps taken), or a function called with each incident.
        ranks: with several ranks, ``"gather"`` (the default): make the Recorder on every rank;
            on each recorded step the ranks' statistics are reduced through torch.distributed
            and rank 0 alone writes one store with, for every statistic and scalar, the min,
            mean and max over the ranks and the ranks holding them (``run.rank_spread``), and
            flags outlier ranks (``run.outliers``); no other rank touches the filesystem
            (``record/gather.py``). ``"each"``: every rank writes its own store into
            ``run_dir``. A :class:`~graphviz_autograd.record.gather_options.GatherOptions`
            gathers with other timeouts or outlier bounds.
        detail_ranks: ranks whose full statistics rank 0 keeps at every recorded step when
            gathering (default rank 0 only); outlier ranks are kept at the steps they stand out.

    A recorded step captures the autograd nodes made between the previous ``log()`` and
    this one on the thread calling ``log()`` (a forward through a submodule,
    ``optimizer.step(closure)`` and gradient accumulation included). Call :meth:`begin_step`
    on the thread that runs the forward if that is another one.

    Use as a context manager, or call :meth:`close`; every hook is removed on
    close, also when training raises.
    """

    def __init__(self, model: torch.nn.Module, run_dir, *, optimizer=None, every: int = 50,
                 record=WHAT, overwrite: bool = False, flush_interval: float = 2.0,
                 source: bool = True, meta: dict | None = None, scaler=None,
                 incidents: bool | IncidentOptions = True, on_incident="record", ranks=None,
                 detail_ranks=(0,)):
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
        if not isinstance(incidents, (bool, IncidentOptions)):
            raise ConfigError(f"incidents={incidents!r}: pass True, False or an IncidentOptions")
        action = check_action(on_incident)
        if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
            raise ConfigError(f"scaler= must be a torch.amp.GradScaler, got {describe(scaler)}")
        if model in _OPEN:
            raise HookError(f"{type(model).__name__} already has an open Recorder writing to "
                            f"{_OPEN[model].run_dir}; close it (or use `with`) before starting another")
        optimizer = unwrap_optimizer(optimizer) if optimizer is not None else None
        self.model, self.optimizer, self.every, self.record = model, optimizer, every, set(record)
        self.scaler = scaler
        self.source = source
        rank, world = rank_and_world()
        gather, detail_ranks = check_ranks(ranks, world), check_detail_ranks(detail_ranks, world)
        # Name things after the wrapped model (DDP, torch.compile), so a 2-rank run, a compiled
        # run and a single-process run share ids (conv1.weight, not module.conv1.weight).
        self._named = unwrap(model)
        self._compiled = is_compiled(model)
        self._params = ParamSet(*_parameters(self._named))
        run_meta = _run_meta(self, meta)
        self._gather = None if gather is None else open_gathered(
            run_dir, rank=rank, world=world, options=gather, detail_ranks=detail_ranks, every=every,
            optimizer=optimizer, writer_options=dict(overwrite=overwrite, flush_interval=flush_interval,
                                                     meta={**run_meta, "ranks": "gather",
                                                           "detail_ranks": list(detail_ranks)}))
        self._writer = self._gather or RunWriter(run_dir, rank=rank, world_size=world,
                                                 overwrite=overwrite, flush_interval=flush_interval,
                                                 meta=run_meta)
        self.run_dir = str(self._writer.run_dir)
        self.rank, self.world_size = rank, world
        self._versions: dict[str, int] = {}
        self._closed = False
        self._logged = 0
        self._last_step: int | None = None
        self._warned: set[str] = set()
        self.graph = None
        self._last_len, self._last_version, self._last_slot_ids, self._unverified = -1, None, {}, 0
        self._handles: list = []        # optimizer and wrapper hooks; with the tracker's, on around recorded steps
        self._wrapped = self._named is not model
        # Module hooks inside a compiled model are traced by Dynamo, not run: a compiled model
        # gets none (module paths then come from the graph's parameters).
        record_acts = "activations" in self.record
        self._tracker = None if self._compiled else ModuleTracker(
            self._named, on_output=self._on_module_output if record_acts else None,
            on_enter=None if self._wrapped else self._on_forward_start,
            on_exit=None if self._wrapped else self._on_forward_end)
        self._capture = Capture(self._tracker, record_nodes="nodes" in self.record,
                                record_acts=record_acts, source=source, on_error=self._hook_failed,
                                params=self._named.parameters)
        self._incidents = None
        if incidents is not False:
            options = incidents if isinstance(incidents, IncidentOptions) else IncidentOptions()
            self._incidents = Incidents(options, action, self._writer, parameter_names(self._named))
        if self._gather is not None:
            self._gather.incidents = self._incidents        # a detailing rank asks all for detail
        self._node_ids: dict = {}       # live node -> graph id, of nodes an incident names
        self._reset_step()
        self._armed = False
        tags.mark_tagging()
        try:
            self._install_hooks()       # the first step records
            self._capture.open(self._logged)
        except BaseException:
            self._remove_hooks()
            self._writer.close()
            raise
        _OPEN[model] = self
        self._finalizer = weakref.finalize(self, _finalize, self._writer)

    def _reset_step(self) -> None:
        self._before = None
        self._update_norms = None
        self._stepped = False
        self._step_scale = None

    def _recording_this_step(self) -> bool:
        if self._gather is not None:        # decided alike on every rank
            return self._gather.recording_next()
        return self._logged % self.every == 0 or (self._incidents is not None and self._incidents.detailing)

    # -- hooks --------------------------------------------------------------------
    def begin_step(self) -> None:
        """Open this step's capture on the calling thread now (the next ``log()`` closes it).

        Captures open by themselves when ``log()`` ends; call this on the thread that runs the
        forward when that is not the thread calling ``log()``. A no-op on unrecorded steps.
        """
        if not self._closed and self._recording_this_step():
            try:
                self._capture.open(self._logged)
                if self._incidents is not None:     # an incident's detail step: watch the forward
                    tracker = self._tracker
                    self._incidents.start_forward_watch(lambda: tracker.current if tracker else "")
            except Exception as exc:  # noqa: BLE001 - a recorder must never break training
                self._hook_failed(exc)

    def _on_forward_start(self) -> None:
        if not self._capture.capturing:
            self.begin_step()

    def _on_forward_end(self, output) -> None:
        if self._capture.capturing:
            self._capture.output = output       # a root when log() gets no loss

    def _on_module_output(self, name, module, output) -> None:
        self._capture.on_module_output(name, module, output)

    def _before_opt_step(self, _opt, _args, _kwargs) -> None:
        if self._capture.capturing and "params" in self.record:
            try:
                self._params.updates.before()
                self._before = True
                if self.scaler is not None:         # the scale of this step, before update()
                    self._step_scale = float(self.scaler.get_scale())
            except Exception as exc:  # noqa: BLE001 - never break optimizer.step()
                self._hook_failed(exc)

    def _after_opt_step(self, _opt, _args, _kwargs) -> None:
        self._stepped = True
        if self._before:
            self._before = None
            try:
                self._update_norms = self._params.updates.after()
            except Exception as exc:  # noqa: BLE001
                self._hook_failed(exc)

    def _hook_failed(self, exc: Exception) -> None:
        self._warn_once("hook", f"a recorder hook failed and skipped a statistic: "
                                f"{type(exc).__name__}: {exc}")

    def _warn_once(self, reason: str, message: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            warnings.warn(f"graphviz-autograd Recorder: {message}", RuntimeWarning, stacklevel=3)

    # -- the public step ----------------------------------------------------------
    def log(self, step: int, loss=None, **scalars) -> None:
        """Record step ``step``: ``loss`` and any other scalar metrics (numbers or 1-element tensors).

        On recorded steps (every ``every``-th call) also writes the graph (when its
        structure changed) and the statistics gathered since the previous ``log()``. A
        step number that is not after the last one logged is skipped with one warning
        (e.g. gradient accumulation logging every micro-batch): it never stops training.
        """
        if self._closed:
            raise ConfigError(f"log({step}) on a closed Recorder ({self.run_dir}); create a new one")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ConfigError(f"step must be an int, got {describe(step)}")
        if self._last_step is not None and step <= self._last_step:
            self._warn_once("order", f"log({step}) skipped: step {step} is not after the last logged "
                                     f"step {self._last_step}. Log one increasing number per "
                                     "optimizer step (e.g. a global step counter); with gradient "
                                     "accumulation, log once per optimizer step")
            return
        values = {"loss": loss} if loss is not None else {}
        values.update(scalars)
        row = {name: scalar_value(name, v) for name, v in values.items()}
        incidents = self._incidents
        triggers = incidents.watch.check_scalars(step, row) if incidents is not None else []
        finished = None
        if self.optimizer is not None:
            groups = self.optimizer.param_groups
            for i, g in enumerate(groups):
                if "lr" in g and f"lr/{i}" not in row:
                    row["lr" if len(groups) == 1 else f"lr/{i}"] = float(g["lr"])
        logged = False
        try:
            version, rows = None, None
            watch = incidents.stop_forward_watch() if incidents is not None else None
            if self._capture.capturing:
                detail = watch is not None or bool(triggers)
                version, rows = self._collect(step, loss, row, detail=detail, watch=watch)
            elif triggers and "params" in self.record:      # off the cadence: what is still visible
                rows = self._visible_rows()
            if incidents is not None:       # written with the step, in the same flush
                finished = self._follow_incidents(step, triggers, watch, rows)
            self._writer.add_step(step, wall_time=time.time(), graph_version=version,
                                  scalars=row, stats=rows)
            logged = True
        finally:
            self._capture.close()
            self._reset_step()
            self._logged += 1
            if logged:                  # a refused step does not count as the last one logged
                self._last_step = step
            if self._recording_this_step() != self._armed:
                self._arm()
            if self._armed:
                self.begin_step()
        if finished is not None:
            self._act_on(finished)

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
        if self._wrapped:       # DDP / compiled: the wrapper's own forward runs eagerly here
            self._handles.append(self.model.register_forward_pre_hook(
                lambda _m, _a: self._on_forward_start()))
            self._handles.append(self.model.register_forward_hook(
                lambda _m, _a, out: self._on_forward_end(out)))
        optimizer = self.optimizer
        if optimizer is not None and "params" in self.record:
            self._handles.append(optimizer.register_step_pre_hook(self._before_opt_step))
            self._handles.append(optimizer.register_step_post_hook(self._after_opt_step))
        if self._tracker is not None:
            self._tracker.install()

    def _follow_incidents(self, step: int, triggers, watch, rows):
        graph = self.graph if (watch is not None or triggers) else None
        try:
            return self._incidents.after_step(step, triggers, watch, self._node_ids, graph, rows,
                                              cadence=self._logged % self.every == 0)
        finally:
            self._node_ids = {}

    def _act_on(self, incident) -> None:
        self._incidents.act(incident, self._writer.flush, self.run_dir)

    def _visible_rows(self) -> dict | None:
        """Parameter statistics of a step off the cadence (an incident's): gradients are still
        in ``.grad``; no node was captured."""
        try:
            return step_rows(_NO_CAPTURE, {}, self._params, None)
        except Exception as exc:  # noqa: BLE001
            self._hook_failed(exc)
            return None

    def _collect(self, step: int, loss, scalars: dict, detail: bool = False, watch=None):
        # The step's code path, (op, module) of each node in creation order, is the last
        # step's when no node differed from the details (which hold the last step's path) and
        # as many nodes were made; then the graph is the last one traced.
        capture = self._capture
        n = capture.n_nodes
        if n == 0 and not self._stepped:
            return None, None       # no training since the last log() (e.g. evaluation metrics)
        if n == 0:
            self._warn_once("no-nodes", f"step {step} made an optimizer step but no autograd node on "
                                        "this thread while it was recorded, so no graph and no node "
                                        "statistics: the forward ran on another thread (call "
                                        "recorder.begin_step() there before the forward)")
        if (n and not capture.new_path and n == self._last_len and self._unverified < VERIFY_EVERY
                and not detail):
            version, slot_ids = self._last_version, self._last_slot_ids   # same code path as before
            self._unverified += 1
        else:
            interest = {r.node for r in watch.nonfinite} if watch is not None else set()
            version, slot_ids = self._trace_step(step, loss, interest) if n else (None, {})
            self._last_len, self._last_version, self._last_slot_ids = n, version, slot_ids
            self._unverified = 0
        scale, param_scale = 1.0, 1.0
        if self.scaler is not None:
            scale, unscaled = grad_scale(self.scaler, self.optimizer)
            scale = self._step_scale or scale
            scalars["loss_scale"] = scale
            if not unscaled and not self._stepped:      # log() before scaler.step()
                param_scale = scale
        params = self._params if "params" in self.record else None
        try:
            rows = step_rows(capture, slot_ids, params, self._update_norms, grad_scale=scale,
                             param_grad_scale=param_scale)
        except Exception as exc:  # noqa: BLE001 - e.g. a meta-device model: no data to read back
            self._hook_failed(exc)
            rows = None
        if params is not None and rows is not None and not self._has_param_grads(rows):
            self._warn_once("no-grads", f"no parameter had a gradient at log({step}): call log() "
                                        "after backward() and before optimizer.zero_grad()")
        return version, rows

    @staticmethod
    def _has_param_grads(rows: dict) -> bool:
        return any(values[0] is not None for _key, values in rows.get("param", ()))

    def _trace_step(self, step: int, loss, interest=frozenset()):
        """Trace this step's graph: its version (stored when new) and slot -> node id."""
        attached = isinstance(loss, torch.Tensor) and loss.grad_fn is not None
        if isinstance(loss, torch.Tensor) and not attached:
            self._warn_once("detached", f"the loss given to log({step}) has no autograd graph "
                                        "(detached, or computed under no_grad), so the recorded "
                                        "graph starts at the model's output and leaves out the "
                                        "loss ops. Pass the loss tensor backward() ran on (in "
                                        "Lightning, use graphviz_autograd.integrations.lightning."
                                        "RecorderCallback)")
        root = loss if attached else self._capture.output
        slot_ids: dict[int, str] = {}
        if root is None:
            self._warn_once("no-root", f"log({step}) got no loss with an autograd graph and the "
                                       "model's forward was not seen, so no graph and no node "
                                       f"statistics were recorded. Pass loss=<the loss tensor>")
            return None, slot_ids

        slot_key = self._capture.key

        def visit(fn, node_id):
            if fn in interest:
                self._node_ids[fn] = node_id
            meta = fn.metadata
            slot = meta.get(slot_key) if meta else None
            if slot is not None and slot >= 0:
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

    # -- closing ------------------------------------------------------------------
    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Remove every hook and write what is buffered. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._capture.close()
            if self._incidents is not None:
                self._incidents.stop_forward_watch()
        finally:
            self._remove_hooks()
            self._params.updates.clear()
            _OPEN.pop(self.model, None)
            self._writer.close()

    def _remove_hooks(self) -> None:
        self._armed = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._tracker is not None:
            self._tracker.remove()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None and self._gather is not None:
            self._gather.abandon()          # the other ranks may not be closing: no last gather
        self.close()

    def __repr__(self) -> str:
        return (f"Recorder({type(self.model).__name__} -> {self.run_dir}, rank {self.rank}/"
                f"{self.world_size}, every={self.every}, record={sorted(self.record)})")


def _parameters(model: torch.nn.Module):
    """``([(name, parameter)], [local plain tensor], [(index, shard groups)])`` of the trainable
    parameters whose data can be read (a DTensor's local shard; other subclasses are left out,
    with one warning)."""
    named, local, sharded, skipped = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        data = plain(p)
        if data is None:
            skipped.append(f"{name} ({type(p).__name__})")
            continue
        if is_sharded(p):
            sharded.append((len(named), shard_groups(p)))
        named.append((name, p))
        local.append(data)
    if skipped:
        warnings.warn(f"Recorder: no statistics for {len(skipped)} parameter(s) of a tensor subclass "
                      f"whose data cannot be read: {', '.join(skipped[:5])}", RuntimeWarning, stacklevel=3)
    return named, local, sharded


def _finalize(writer: RunWriter) -> None:
    try:
        if hasattr(writer, "abandon"):     # gathered: no collective at garbage collection or exit
            writer.abandon()
        writer.close()
    except Exception:  # noqa: BLE001 - at interpreter exit, best effort
        pass


def _run_meta(rec: Recorder, extra: dict | None) -> dict:
    from graphviz_autograd import __version__

    model = rec._named
    meta = {"model": type(model).__name__, "parameters": sum(p.numel() for _, p in rec._params.named),
            "every": rec.every, "record": sorted(rec.record), "torch": torch.__version__,
            "graphviz_autograd": __version__, "stats": "native" if stats.NATIVE is not None else "numpy",
            "optimizer": type(rec.optimizer).__name__ if rec.optimizer is not None else None,
            "compiled": rec._compiled}
    if rec.optimizer is not None:       # numbers for the update rule the dashboard shows
        meta["optimizer_settings"] = {k: v for k, v in rec.optimizer.defaults.items()
                                      if isinstance(v, (int, float, str, bool)) and v is not None}
    meta.update(extra or {})
    return meta
