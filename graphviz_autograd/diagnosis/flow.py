"""Unused trainable parameters, and where their path to the loss breaks.

A parameter whose ``AccumulateGrad`` node is not reachable from the loss gets
no gradient. To say *why*, we use what :class:`~.watch.ForwardWatch` recorded:
the first op that took a tensor carrying the parameter's gradient and returned
one without (``.detach()``, ``.data``, an op under ``torch.no_grad()``,
``argmax``, ``.item()``); otherwise the module never ran (a branch not taken)
or its output never reached the loss (discarded).

Example (what a finding reads like):
    ``2 parameters of `block` get no gradient: `.detach()` at zoo.py:41 cuts them off the loss``
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field

import torch

from graphviz_autograd.diagnosis.findings import Finding, FindingKind, Severity
from graphviz_autograd.live.nodes import Reach, forward_name
from graphviz_autograd.diagnosis.watch import tag


@dataclass
class Pending:
    """A finding whose graph node ids are filled in once the final graph is traced."""

    finding: Finding
    live_nodes: list = field(default_factory=list)
    roots: dict = field(default_factory=dict)      # extra tensors to trace, by name


_CUT_TEXT = {
    "detach": ("`.detach()` at {src} cuts them off the loss",
               "`.detach()` returns a tensor without grad_fn, so everything after it treats "
               "these parameters as constants.",
               "If the detach is a mistake, remove it. If this part should stay frozen, call "
               "requires_grad_(False) on its parameters (they are then not reported)."),
    "data": ("`.data` at {src} reads the values outside autograd",
             "`.data` gives the raw values without autograd history, so their use there "
             "contributes no gradient.",
             "Use the parameter itself (e.g. `self.weight`, not `self.weight.data`); keep "
             "`.data` / torch.no_grad() for deliberate manual updates only."),
    "no_grad": ("`{op}` at {src} ran inside torch.no_grad()",
                "Gradient recording was off when `{op}` ran: its inputs required grad but its "
                "result has no grad_fn.",
                "Move the call out of the torch.no_grad() block. If the layers are meant to "
                "be frozen, call requires_grad_(False) on their parameters instead."),
    "inference_mode": ("`{op}` at {src} ran inside torch.inference_mode()",
                       "Gradient recording was off (inference mode) when `{op}` ran.",
                       "Run the training forward outside torch.inference_mode()."),
    "integer": ("`{op}` at {src} returns {dtype} values, which carry no gradient",
                "`{op}` turns values that carry gradient into {dtype} results; autograd cannot "
                "differentiate through that, so nothing before it learns from this path.",
                "Make the loss depend on the values before `{op}` (e.g. softmax weights instead "
                "of argmax indices, Gumbel-softmax, or a straight-through estimator)."),
    "python": ("`.{op}()` at {src} turns the tensor into a Python value",
               "`.{op}()` leaves autograd: anything computed from the Python value is a constant.",
               "Keep the value a tensor (no .item() / .tolist() / .numpy() in the forward)."),
    "other": ("`{op}` at {src} returns a tensor without grad_fn",
              "`{op}` got inputs that require grad and returned a result without grad_fn.",
              "Check whether `{op}` is differentiable; use a differentiable alternative."),
}


def analyse_unused(model: torch.nn.Module, trainable, used: set[str], watch, calls,
                   outputs: dict[str, list], op_names: dict[int, str]) -> list[Pending]:
    """One :class:`Pending` finding per cause, covering every unused trainable parameter.

    Args:
        trainable: ``[(name, parameter)]`` of parameters that require grad.
        used: names of the parameters reachable from the loss.
        watch: the :class:`~.watch.ForwardWatch` of the forward (None: loss given).
        calls: the module tracker of the watched forward (None: loss given).
        outputs: module path -> output tensors of the watched forward.
        op_names: ``{sequence_nr: forward function name}``.
    """
    unused = [(n, p) for n, p in trainable if n not in used]
    if not unused:
        return []
    if watch is None or calls is None:
        names = [n for n, _ in unused]
        return [Pending(Finding(
            FindingKind.UNUSED_PARAMETER, Severity.ERROR,
            f"{_subject(names)} no gradient: no path to the loss",
            f"{_names(names)} {_be(names)} not reachable from the loss in the autograd graph, so "
            "backward leaves their .grad at None.",
            "Run diagnose(model, inputs=...) (or pass a function computing the loss) so the "
            "forward is watched and the place where the path breaks can be named.",
            params=tuple(names), module=_common_module(names)))]
    targets = {id(p) for _, p in unused}
    reach = Reach(targets)
    groups: dict[tuple, dict] = {}
    for name, p in unused:
        key, info = _cause(model, name, p, watch, calls, outputs, reach)
        group = groups.setdefault(key, dict(info, params=[]))
        group["params"].append(name)
    return [_finding(key, g, model, op_names) for key, g in groups.items()]


def _cause(model, name, p, watch, calls, outputs, reach):
    for i, cut in enumerate(watch.cuts):
        hits = [t for t in cut.tensors if id(t) == id(p)
                or (t.grad_fn is not None and id(p) in reach(t.grad_fn))]
        if hits:
            return ("cut", cut.reason, cut.source, cut.op), {"cut": cut, "tensor": hits[0]}
    owner = name.rpartition(".")[0]
    top = _top_uncalled(model, owner, calls.order)
    if top is not None:
        return ("never_called", top), {"module": top}
    path = owner
    found = None
    while True:
        for t in outputs.get(path, ()):
            if t.grad_fn is not None and id(p) in reach(t.grad_fn):
                found = (path, t)
                break
        if not path:
            break
        path = path.rpartition(".")[0]
    if found is not None:
        return ("discarded", found[0]), {"module": found[0], "tensor": found[1]}
    return ("unknown", owner), {"module": owner}


def _top_uncalled(model, owner: str, called: dict[str, int]) -> str | None:
    parts = owner.split(".") if owner else []
    for i in range(len(parts) + 1):
        path = ".".join(parts[:i])
        if path not in called:
            return path
    return None


def _finding(key, g, model, op_names) -> Pending:
    params = g["params"]
    module = _common_module(params)
    if key[0] == "cut":
        cut, tensor = g["cut"], g["tensor"]
        title, what, hint = (s.format(op=cut.op, src=cut.source or "?", dtype=cut.dtype or "integer")
                             for s in _CUT_TEXT[cut.reason])
        last = _describe_node(tensor.grad_fn, op_names) if tensor.grad_fn is not None else (
            f"the parameter `{params[0]}` itself" if len(params) == 1 else "the parameters themselves")
        where = f" in module `{cut.module}`" if cut.module else ""
        message = (f"{_names(params)} {_have(params)} no path to the loss. "
                   f"{'Its' if len(params) == 1 else 'Their'} values reach `{cut.op}` at "
                   f"{cut.source or 'an unknown line'}{where}; the last op that still carried their "
                   f"gradient is {last}, the first that did not is `{cut.op}`. {what}")
        return Pending(Finding(FindingKind.UNUSED_PARAMETER, Severity.ERROR,
                               f"{_subject(params, module)} no gradient: {title}",
                               message, hint, params=tuple(params), module=cut.module or module,
                               source=cut.source, op=cut.op),
                       [tensor.grad_fn] if tensor.grad_fn is not None else [],
                       {f"{cut.op}@{cut.source or '?'}": tensor})
    if key[0] == "never_called":
        top = g["module"]
        sub = model.get_submodule(top) if top else model
        refs = _references(model, top)
        ref_text = f" It is referenced at {', '.join(refs)}." if refs else ""
        message = (f"The forward of `{top}` ({type(sub).__name__}) never ran during this forward "
                   f"pass, so {_names(params)} {_be(params)} not in the graph at all.{ref_text} Usually a "
                   "branch that was not taken (an `if` that was false for this input) or a module "
                   "that is defined but never called.")
        return Pending(Finding(FindingKind.UNUSED_PARAMETER, Severity.ERROR,
                               f"`{top}` never ran: {_subject(params)} no gradient", message,
                               "Check the condition guarding the call. If the module is optional, "
                               "remove it or freeze it with requires_grad_(False) (DDP otherwise "
                               "needs find_unused_parameters=True).",
                               params=tuple(params), module=top, source=refs[0] if refs else "",
                               op="not called"))
    if key[0] == "discarded":
        mod, tensor = g["module"], g["tensor"]
        last = _describe_node(tensor.grad_fn, op_names)
        message = (f"`{mod}` ran and its output (last op {last}) carries gradient for "
                   f"{_names(params)}, but that output never reaches the loss: it is discarded, "
                   "or only feeds values that do not enter the loss.")
        src = tag(tensor.grad_fn)[1]
        return Pending(Finding(FindingKind.UNUSED_PARAMETER, Severity.ERROR,
                               f"output of `{mod}` never reaches the loss: {_subject(params)} no gradient",
                               message, "Check that this output is part of what the loss is "
                               "computed from (e.g. a head whose output is dropped from the return "
                               "value or from the loss sum).",
                               params=tuple(params), module=mod, source=src,
                               op=forward_name(tensor.grad_fn.name())),
                       [tensor.grad_fn], {f"unused@{mod or 'model'}": tensor})
    mod = g["module"]
    return Pending(Finding(FindingKind.UNUSED_PARAMETER, Severity.ERROR,
                           f"{_subject(params, mod)} no gradient",
                           f"{_names(params)} {_have(params)} no path to the loss, and the forward showed no "
                           "op that cut it (they may be used by custom code outside torch ops).",
                           "Check where these parameters are used in the forward.",
                           params=tuple(params), module=mod))


def _describe_node(fn, op_names: dict[int, str]) -> str:
    module, source = tag(fn)
    op = op_names.get(fn._sequence_nr()) or forward_name(fn.name())
    text = f"`{op}` ({fn.name()}"
    text += f" at {source}" if source else ""
    text += f", module `{module}`)" if module else ")"
    return text


def _references(model, path: str) -> list[str]:
    """``file.py:line`` of lines in the parent's class that use ``self.<name>`` (not assign it)."""
    parent_path, _, attr = path.rpartition(".")
    if not attr.isidentifier():
        return []
    parent = model.get_submodule(parent_path) if parent_path else model
    try:
        lines, start = inspect.getsourcelines(type(parent))
        fname = os.path.basename(inspect.getsourcefile(type(parent)) or "")
    except (OSError, TypeError):
        return []
    needle = f"self.{attr}"
    out = []
    for i, line in enumerate(lines):
        code = line.split("#", 1)[0]
        idx = code.find(needle)
        if idx < 0 or code[idx + len(needle):idx + len(needle) + 1].isidentifier():
            continue
        rest = code[idx + len(needle):].lstrip()
        if rest.startswith("=") and not rest.startswith("=="):
            continue
        out.append(f"{fname}:{start + i}")
    return out[:3]


def _common_module(names) -> str:
    owners = [n.rpartition(".")[0].split(".") if "." in n else [] for n in names]
    common = []
    for parts in zip(*owners):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _names(names) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:6])
    return shown + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _have(names) -> str:
    return "has" if len(names) == 1 else "have"


def _be(names) -> str:
    return "is" if len(names) == 1 else "are"


def _subject(names, module: str = "") -> str:
    """"`fc.weight` gets" or "3 parameters of `block` get"."""
    if len(names) == 1:
        return f"`{names[0]}` gets"
    return f"{len(names)} parameters" + (f" of `{module}`" if module else "") + " get"
