"""Explain a forward that raised (shape errors, in-place on leaves) and a backward
that failed because a saved tensor was modified in place.

Example (the seed LeNet on 28x28 images):
    ``shape mismatch at `fc1` (zoo.py:88): flattened size is 256 = 16*4*4, not 400 = 16*5*5``
"""
from __future__ import annotations

import dataclasses
import math
import re

import torch

from graphviz_autograd.diagnosis.findings import Finding, FindingKind, Severity, quote
from graphviz_autograd.diagnosis.flow import Pending
from graphviz_autograd.live.nodes import forward_name, stale_saved
from graphviz_autograd.live.walk import walk
from graphviz_autograd.diagnosis.watch import tag

_SHAPE_RE = re.compile(r"shape|size|dimension|mat1 and mat2|must match|expected input|channels|"
                       r"broadcast", re.I)
_INPLACE_RE = re.compile(r"in-place|inplace", re.I)
_VERSION_RE = re.compile(r"\[(\w+(?:\.\w+)*) \[([\d, ]*)\]\], which is output (\d+) of (\w+), is at "
                         r"version (\d+); expected version (\d+)")


def _at(module: str, source: str) -> str:
    return (f" at {source}" if source else "") + (f" in module `{module}`" if module else "")


def forward_failure(exc: BaseException, watch, calls, model: torch.nn.Module) -> Pending | None:
    """A finding for a forward that raised a shape or in-place error; None for other errors."""
    text = str(exc).split("\n")[0]
    fail = watch.failure if watch is not None else None
    module = fail.module if fail is not None else ((calls.failed or "") if calls is not None else "")
    source = fail.source if fail is not None else ""
    roots = {}
    if fail is not None:
        for (label, _shape), t in zip(fail.operands, fail.tensors):
            if t.requires_grad:
                name = label if not label.startswith("operand") else \
                    f"{module or fail.op}:{label.replace('operand ', 'input')}"
                roots[name] = t
    elif watch is not None:
        roots = {f"last{i}": t for i, t in enumerate(watch.recent)}
    live = [t.grad_fn for t in roots.values() if t.grad_fn is not None]
    if _INPLACE_RE.search(text) and ("leaf" in text or "is a view and" in text):
        op = fail.op if fail is not None else "an in-place op"
        return Pending(Finding(
            FindingKind.INPLACE_ERROR, Severity.ERROR,
            f"`{op}`{_at(module, source)} writes in place into a tensor autograd must keep",
            f"The forward failed: `{op}`{_at(module, source)} modifies in place a tensor that "
            f"autograd needs unchanged. torch says: {quote(text)}.",
            "Use the out-of-place op (x = x.relu() instead of x.relu_()), .clone() first, or wrap "
            "deliberate parameter updates in torch.no_grad().",
            module=module, source=source, op=op), live, roots)
    if not _SHAPE_RE.search(text):
        return None
    sub = _module(model, module)
    message, title, hint = _explain_shape(fail, sub, module, source, text, watch, model)
    nodes_params = tuple(f"{module}.{n}" if module else n for n, _ in
                         (sub.named_parameters(recurse=False) if sub is not None else ()))
    return Pending(Finding(FindingKind.SHAPE_ERROR, Severity.ERROR, title, message, hint,
                           params=nodes_params, module=module, source=source,
                           op=fail.op if fail is not None else ""), live, roots)


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def after_mixing(finding: Finding, mix: Finding) -> Finding:
    """A shape error that follows from batch mixing says so (the mixing is the cause)."""
    rows, n = int(mix.value("rows", 0)), int(mix.value("batch", 0))
    where = f" at {mix.source}" if mix.source else ""
    return dataclasses.replace(
        finding, message=finding.message + f" This follows from `{mix.op}`{where}, which turned "
        f"the batch of {n} examples into {rows} rows (see the batch_mixing finding).",
        hint=mix.hint)


def _module(model, path):
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None


def _explain_shape(fail, sub, module, source, text, watch, model):
    at = _at(module, source)
    operands = ""
    if fail is not None and fail.operands:
        operands = " Operand shapes: " + ", ".join(f"{label} {shape}" for label, shape in
                                                  fail.operands[:4]) + "."
    op = f" at `{fail.op}`" if fail is not None and not source else ""
    generic = (f"The forward failed at `{fail.op if fail else '?'}`{at}: {quote(text)}.{operands}",
               f"shape mismatch{op}{at}: {_short(quote(text))}",
               "Compare the operand shapes above with what the layer was built for; print the "
               "shapes just before this line.")
    if fail is None or not fail.tensors:
        return generic
    x = fail.tensors[0]
    origin = watch.view_origin(x) if watch is not None else None
    if isinstance(sub, torch.nn.Linear) and fail.op == "linear" and x.dim() >= 1 \
            and x.shape[-1] != sub.in_features:
        got, want = int(x.shape[-1]), sub.in_features
        called = f", called at {source}," if source else ""
        message = (f"`{module}` = {sub!r}{called} got an input of shape {tuple(x.shape)}: its "
                   f"last dimension is {got}, but in_features is {want}.")
        title = f"shape mismatch at `{module}`{' (' + source + ')' if source else ''}: input has {got} features, not {want}"
        hint = f"Make in_features match the input: nn.Linear({got}, {sub.out_features})"
        if origin is not None:
            op, before, _after, vsrc = origin
            size = _expr(before[1:])
            want_text = _factor(want, before)
            message += (f" The input was flattened by `{op}` at {vsrc} from shape {before}, so the "
                        f"flattened size is {got} = {size}, not {want_text}")
            if len(before) == 4 and want_text != str(want):
                side = int(round(math.sqrt(want / before[1])))
                message += (f": the feature map is {before[2]}x{before[3]}, but the layer was "
                            f"written for {side}x{side} (the input images are probably smaller or "
                            "larger than the model was designed for)")
            message += "."
            title = (f"shape mismatch at `{module}`{' (' + source + ')' if source else ''}: "
                     f"flattened size is {got} = {size}, not {want_text}")
            hint += (f" (= {size}), or feed inputs of the size the model was designed for, or "
                     "add nn.AdaptiveAvgPool2d before flattening / use nn.LazyLinear.")
        else:
            hint += ", or reshape the input to the size the layer was designed for."
        return message, title, hint
    conv = isinstance(sub, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
    if conv and x.dim() >= 2 and x.shape[-sub.weight.dim() + 1] != sub.in_channels:
        got = int(x.shape[-sub.weight.dim() + 1])
        called = f", called at {source}," if source else ""
        message = (f"`{module}` = {sub!r}{called} expects {sub.in_channels} input channels but got an "
                   f"input of shape {tuple(x.shape)} with {got} channels.")
        return (message, f"shape mismatch at `{module}`: {got} input channels, not {sub.in_channels}",
                f"Make in_channels match ({got}), or check which tensor is passed to `{module}`.")
    if fail.op in ("view", "reshape") and x.dim() >= 2:
        per_example = _product(tuple(x.shape[1:]))
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                   and m.in_features != per_example and str(m.in_features) in text]
        target = f" (the in_features of `{linears[0]}`)" if linears else ""
        wanted = int(linears and model.get_submodule(linears[0]).in_features or 0)
        want_text = f", not {_factor(wanted, tuple(x.shape))}{target}" if wanted else ""
        message = (f"`{fail.op}`{at} cannot reshape a tensor of shape {tuple(x.shape)}: it holds "
                   f"{per_example} = {_expr(x.shape[1:])} values per example"
                   f"{want_text}. torch says: {quote(text)}.")
        return (message, f"shape mismatch at `{fail.op}`{' (' + source + ')' if source else ''}: "
                         f"{per_example} values per example{want_text}",
                f"Keep the batch dimension and flatten the rest: x = x.flatten(1) or "
                f"x = x.view(x.size(0), -1), which gives {per_example} features per example; "
                + (f"then `{linears[0]}` needs nn.Linear({per_example}, "
                   f"{model.get_submodule(linears[0]).out_features})." if linears else
                   "then set the next layer's in_features to that size."))
    return generic


def _product(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _expr(shape) -> str:
    """``(16, 4, 4)`` -> ``"16*4*4"``."""
    return "*".join(str(int(d)) for d in shape)


def _factor(want: int, before: tuple) -> str:
    """``400`` -> ``"400 = 16*5*5"`` when ``before`` is (N, 16, H, W) and 400/16 is a square."""
    if len(before) >= 3 and before[1] and want % before[1] == 0:
        rest = want // before[1]
        if len(before) == 4:
            side = int(round(math.sqrt(rest)))
            if side * side == rest:
                return f"{want} = {before[1]}*{side}*{side}"
        return f"{want} = {before[1]}*{rest}"
    return str(want)


def inplace_backward(error: str, loss, watch, idmap, op_names) -> Finding:
    """Explain "modified by an inplace operation": who saved the tensor, who overwrote it."""
    text = error.split(" Hint:")[0]
    m = _VERSION_RE.search(text)
    shape = tuple(int(d) for d in m.group(2).split(",") if d.strip()) if m else None
    expected = int(m.group(6)) if m else None
    stale = stale_saved(walk([loss.grad_fn])) if loss.grad_fn is not None else None
    saver, attr = stale if stale else (None, "")
    write = _find_write(watch, saver, shape, expected)
    nodes = []
    parts = []
    if saver is not None:
        s_module, s_source = tag(saver)
        s_op = op_names.get(saver._sequence_nr()) or forward_name(saver.name())
        what = "its output" if attr in ("result", "result0") else f"its input `{attr}`"
        parts.append(f"`{s_op}`{_at(s_module, s_source)} ({saver.name()}) saved {what}"
                     f"{f' (shape {shape})' if shape else ''} for backward")
        nodes.append(idmap.get(saver))
    producer_text = ""
    if write is not None:
        prod = write.producer
        if prod is not None and prod is not saver:
            p_module, p_source = tag(prod)
            p_op = op_names.get(prod._sequence_nr()) or forward_name(prod.name())
            producer_text = f"; that tensor was produced by `{p_op}`{_at(p_module, p_source)}"
            nodes.append(idmap.get(prod))
        parts.append(f"`{write.op}`{_at(write.module, write.source)} then modified it in place "
                     f"(version {write.version_before} -> {write.version_after})")
        nodes.append(idmap.get(write.node))
    else:
        parts.append("an in-place op modified it afterwards (pass inputs= or a function computing "
                     "the loss to diagnose, so the forward is watched and the op can be named)")
    message = ("Backward failed: " + "; ".join(parts) + producer_text + ". Backward needs the "
               f"original values. torch says: {quote(text)}.")
    src = write.source if write is not None else ""
    title = (f"in-place `{write.op}`{_at(write.module, write.source)} overwrote a tensor saved for "
             "backward" if write is not None else "a tensor saved for backward was modified in place")
    hint = ("Make the in-place op out-of-place (nn.ReLU(inplace=False); x = x.relu() instead of "
            "x.relu_(); x = x + y instead of x += y), or .clone() the tensor before modifying it.")
    return Finding(FindingKind.INPLACE_ERROR, Severity.ERROR, title, message, hint,
                   nodes=tuple(n for n in dict.fromkeys(nodes) if n),
                   module=write.module if write is not None else "", source=src,
                   op=write.op if write is not None else "")


def _find_write(watch, saver, shape, expected):
    if watch is None or not watch.writes:
        return None
    saver_inputs = {id(n) for n, _ in saver.next_functions if n is not None} if saver else set()

    def score(w):
        s = 0
        if expected is not None and w.version_before == expected:
            s += 8
        if saver is not None and w.producer is saver:
            s += 4
        elif w.producer is not None and id(w.producer) in saver_inputs:
            s += 3
        if shape is not None and w.shape == shape:
            s += 2
        return s

    return max(reversed(watch.writes), key=score)
