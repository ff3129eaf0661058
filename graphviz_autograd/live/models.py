"""The user's model as the library names it: wrappers unwrapped, parameters named, ranks known.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> sorted(parameter_names(net).values())
    ['bias', 'weight']
"""
from __future__ import annotations

import contextlib
import sys

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers,
    so a wrapped run names its parameters like a plain one (``conv1.weight``, not
    ``module.conv1.weight`` or ``_orig_mod.conv1.weight``)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif _is_compiled(model):
            model = model._orig_mod
        else:
            return model


def is_compiled(model) -> bool:
    """Whether ``model`` is, or wraps, a ``torch.compile``-d module."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return _is_compiled(model)


def eager():
    """A context in which ``torch.compile``-d code runs its original Python (no tracing, no
    recompiling): what ``diagnose`` needs to watch a compiled model's forward op by op."""
    compiler = getattr(torch, "compiler", None)
    set_stance = getattr(compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def unwrap_optimizer(optimizer):
    """The torch optimizer inside a framework's wrapper (Hugging Face accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``), whose step hooks fire."""
    for attr in ("optimizer", "_optimizer"):
        inner = getattr(optimizer, attr, None)
        if isinstance(inner, torch.optim.Optimizer) and inner is not optimizer:
            return unwrap_optimizer(inner)
    return optimizer


def grad_scale(scaler, optimizer) -> tuple[float, bool]:
    """``(scale, unscaled)`` of a ``torch.amp.GradScaler`` now: the scale of this step's
    backward until ``scaler.update()``, and whether ``unscale_`` (which ``scaler.step``
    calls) already ran for ``optimizer`` since the last ``update()``."""
    scale = float(scaler.get_scale())
    states = getattr(scaler, "_per_optimizer_states", None)
    state = states.get(id(optimizer)) if states is not None and optimizer is not None else None
    stage = getattr(state.get("stage"), "name", "") if isinstance(state, dict) else ""
    return scale, stage in ("UNSCALED", "STEPPED")


def _is_compiled(model) -> bool:
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")    # loaded once anything compiled
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    return wrapper is not None and isinstance(model, wrapper)


def parameter_names(model: torch.nn.Module | None) -> dict[int, str]:
    """``{id(parameter): qualified name}`` of the unwrapped model ({} for None), including the
    unsharded parameters FSDP2 puts in the autograd graph in place of its sharded ones."""
    if model is None:
        return {}
    model = unwrap(model)
    names = {id(p): name for name, p in model.named_parameters()}
    names.update(_fsdp_names(model))
    return names


def _fsdp_names(model: torch.nn.Module) -> dict[int, str]:
    """FSDP2 gathers each sharded parameter into an unsharded one for forward and backward;
    those are the ``AccumulateGrad`` leaves of the graph, absent from ``named_parameters()``.
    Their owners are read from FSDP's state (private: on a torch change this returns {} and
    the leaves stay unnamed, never an error)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    cls = getattr(fsdp, "FSDPModule", None)
    if cls is None:
        return {}
    paths = {id(m): q for q, m in model.named_modules()}
    out: dict[int, str] = {}
    try:
        for module in model.modules():
            if not isinstance(module, cls):
                continue
            for group in module._get_fsdp_state()._fsdp_param_groups:
                for fp in group.fsdp_params:
                    owner = paths.get(id(fp._module_info.module))
                    if owner is None:
                        continue
                    name = f"{owner}.{fp._module_info.param_name}" if owner else fp._module_info.param_name
                    for tensor in (getattr(fp, "_unsharded_param", None), fp.sharded_param):
                        if tensor is not None:
                            out[id(tensor)] = name
    except (AttributeError, TypeError, RuntimeError):
        return out
    return out


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 when not distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
