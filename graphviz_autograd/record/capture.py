"""One recorded step's capture: every autograd node created while it is open is tagged with
its module and source line, gets a gradient detector, and (ReLU/sigmoid/tanh) activation
statistics; module outputs give per-module activation statistics.

A capture opens when the previous ``log()`` ends (or at ``Recorder.begin_step()``, or when
the model's forward starts on another thread) and closes at ``log()``, so a forward through
a submodule, ``optimizer.step(closure)`` and gradient accumulation are all inside it. The
capture owns the node-creation hook and every node hook it registers, and removes them in
:meth:`Capture.close`.

A capture takes only its model's nodes: those created inside the model's forward, the
gradient accumulators of its parameters, and ops outside it with an input it took (the
loss). Another model trained in the same process (a GAN's other half, a second Recorder)
is not mixed in; each capture marks its nodes under its own metadata key.
"""
from __future__ import annotations

import itertools
import threading
import warnings
from typing import Callable

import torch

from graphviz_autograd.live import tags
from graphviz_autograd.live.frames import user_frame
from graphviz_autograd.live.instrument import add_node_hook
from graphviz_autograd.live.modules import ModuleTracker
from graphviz_autograd.live.nodes import op_name, raw_saved
from graphviz_autograd.record import stats

MAX_SLOTS = 1_000_000
_CAPTURES = itertools.count(1)
_ACT_OPS = ("ReluBackward", "SigmoidBackward", "TanhBackward")


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


class Capture:
    """State of the capture of one recorded step (and the code path of the last one).

    Args:
        tracker: the module tracker giving the current module path (None: no module paths).
        record_nodes: register a gradient detector on every node.
        record_acts: keep activation rows of ReLU/sigmoid/tanh nodes and of leaf modules.
        source: read the user's source line of every node on a new code path.
        on_error: called with an exception a hook swallowed (the owner warns once).
    """

    def __init__(self, tracker: ModuleTracker | None, *, record_nodes: bool, record_acts: bool,
                 source: bool, on_error: Callable[[Exception], None],
                 params: Callable[[], object] = tuple):
        self.tracker = tracker
        self.params = params
        self.key = f"{tags.SLOT_KEY}.{next(_CAPTURES)}"     # this capture's mark and slot
        self.param_ids: set[int] = set()
        self.record_nodes, self.record_acts, self.source = record_nodes, record_acts, source
        self.on_error = on_error
        self.details: list = []     # per creation index: (op, module, source, saved, tag) last seen
        self.step_token = 0
        self.reset()

    def reset(self) -> None:
        self.capturing = False
        self.new_path = False       # some node differed from the last step's code path
        self.thread = None
        self.slots: list = []       # node slot -> gradient rows of its outputs
        self.n_nodes = 0            # nodes created in this capture
        self.node_acts: dict = {}   # node slot -> activation row (ReLU/sigmoid/tanh outputs)
        self.node_handles: list = []
        self.hook = None
        self.acts: dict[str, list] = {}     # module -> activation rows of its calls
        self.output = None          # the model's last forward output: a root when log() gets no loss

    def open(self, step_token: int) -> None:
        """Start capturing nodes created on this thread (no-op when already open)."""
        if self.capturing:
            return
        self.capturing = True
        self.thread = threading.get_ident()
        self.step_token = step_token
        if self.tracker is not None:
            self.tracker.calls.clear()      # call numbers count within this step
        self.new_path = False
        try:
            self.param_ids = {id(p) for p in self.params()}
        except Exception as exc:  # noqa: BLE001 - e.g. a model mid-change: ops still taken by input
            self.on_error(exc)
        self.hook = add_node_hook(self.on_node)

    def close(self) -> None:
        """Stop capturing; remove the node-creation hook and every node hook."""
        if self.capturing and self.thread != threading.get_ident():
            warnings.warn("Recorder: log() was called on another thread than the one the capture "
                          "started on; that thread keeps an idle node creation hook until it "
                          "records again", RuntimeWarning, stacklevel=3)
        if self.hook is not None:
            self.hook.remove()
        for h in self.node_handles:
            h.remove()
        self.reset()

    # -- hooks --------------------------------------------------------------------
    def on_node(self, node) -> None:
        # Runs for every autograd node of a recorded step: kept lean (attribute lookups and
        # tuple building are most of its cost). The step's code path, (op, module) per node in
        # creation order, is compared with the last step's here.
        try:
            if _is_compiling():         # torch.compile tracing with fake tensors: not the step's nodes
                return
            tracker = self.tracker
            stack = tracker.stack if tracker is not None else ()
            name = op_name(node)
            meta = node.metadata
            if not stack and not self._owns(node, name):
                return                  # another model's node (or an op on plain inputs)
            meta[self.key] = -1
            module = stack[-1] if stack else ""
            k = self.n_nodes
            self.n_nodes = k + 1
            shared = stack or tags.MODULE_KEY not in meta   # a module's tag is kept over ours
            if shared:
                meta[tags.CALL_KEY] = tracker.call_stack[-1] if stack else 0
            details = self.details
            known = details[k] if k < len(details) else None
            if self.new_path or known is None or known[0] != name or known[1] != module:
                # A new code path from here on (or the first step): read the details a new
                # graph version needs now, while the saved tensors still exist.
                self.new_path = True
                known = self._read_details(node, name, module)
                if k >= len(details):
                    details.extend([None] * (k + 1 - len(details)))
                details[k] = known
            if shared:
                meta[tags.MODULE_KEY] = known[4]
            if name == "AccumulateGrad":
                return
            if known[3] is not None:
                meta[tags.SAVED_KEY] = known[3]
            slots = self.slots
            if not self.record_nodes or len(slots) >= MAX_SLOTS:
                return
            slot = len(slots)
            slots.append(None)
            meta[self.key] = slot
            self.node_handles.append(node.register_prehook(self._grad_hook(slot)))
            if self.record_acts and name.startswith(_ACT_OPS):
                result = getattr(node, "_saved_result", None)
                if isinstance(result, torch.Tensor):
                    self.node_acts[slot] = stats.act_row(result, stats.saturation_kind(name))
        except Exception as exc:  # noqa: BLE001 - a recorder must never break training
            self.on_error(exc)

    def _owns(self, node, name: str) -> bool:
        """Whether a node created outside the model's forward is this capture's: a gradient
        accumulator of one of its parameters, or an op with an input this capture took."""
        if name == "AccumulateGrad":
            return id(getattr(node, "variable", None)) in self.param_ids
        key = self.key
        for nxt, _ in node.next_functions:
            if nxt is not None:
                meta = nxt.metadata
                if key in meta:
                    return True
        return False

    def _read_details(self, node, name: str, module: str) -> tuple:
        """(op, module, source, saved, tag) of a node on a new code path; a detail that cannot
        be read is left empty (the node keeps its place in the path)."""
        source, saved = "", None
        try:
            if self.source:
                source = user_frame(2)
            if name != "AccumulateGrad":
                tensors, attrs = raw_saved(node)
                token = self.step_token         # storage keys tagged with the step that read them
                saved = tuple((n, m, b, (token, ptr), f) for n, m, b, ptr, f in tensors), attrs
        except Exception as exc:  # noqa: BLE001 - e.g. an odd saved value
            self.on_error(exc)
        return (name, module, source, saved, (module, source))

    def _grad_hook(self, slot: int):
        slots, grad_row = self.slots, stats.grad_row

        def hook(grad_outputs):
            if slot < len(slots):       # reduced now (so the gradient can be freed), read back at log()
                try:
                    slots[slot] = [grad_row(g) for g in grad_outputs if g is not None]
                except Exception as exc:  # noqa: BLE001 - never break the backward pass
                    self.on_error(exc)
        return hook

    def on_module_output(self, name, module, output) -> None:
        """Activation rows of leaf modules (the module tracker's ``on_output``)."""
        if not self.capturing or not self.record_acts or next(module.children(), None) is not None:
            return
        t = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            return
        try:
            self.acts.setdefault(name, []).append(
                stats.act_row(t, stats.saturation_kind(type(module).__name__)))
        except Exception as exc:  # noqa: BLE001
            self.on_error(exc)
