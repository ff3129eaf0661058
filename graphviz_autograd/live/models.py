"""The user's model as the library names it: wrappers unwrapped, parameters named, ranks known.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> sorted(parameter_names(net).values())
    ['bias', 'weight']
"""
from __future__ import annotations

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


def _is_compiled(model) -> bool:
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")    # loaded once anything compiled
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    return wrapper is not None and isinstance(model, wrapper)


def parameter_names(model: torch.nn.Module | None) -> dict[int, str]:
    """``{id(parameter): qualified name}`` of the unwrapped model ({} for None)."""
    if model is None:
        return {}
    return {id(p): name for name, p in unwrap(model).named_parameters()}


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 when not distributed)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
