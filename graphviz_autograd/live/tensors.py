"""Tensor subclasses (DTensor of FSDP2 / tensor parallel, other wrapper subclasses): what the
library may read of them.

A wrapper subclass has no storage of its own: ``data_ptr()`` is a meaningless offset,
``.numpy()``/``.tolist()`` refuse, and reductions return subclass results (a DTensor's
``.item()`` silently gives this rank's partial value). So statistics read the local
plain tensor of a DTensor and combine shards explicitly; other subclasses are skipped.

Example:
    >>> import torch
    >>> t = torch.ones(3)
    >>> plain(t) is t, is_sharded(t)
    (True, False)
"""
from __future__ import annotations

import sys

import torch

# Exact types whose memory is their own (a Parameter is a plain tensor with a flag).
PLAIN_TYPES = frozenset({torch.Tensor, torch.nn.Parameter, torch.nn.parameter.Buffer})


def _dtensor_type():
    mod = sys.modules.get("torch.distributed.tensor")     # loaded once anything made a DTensor
    return getattr(mod, "DTensor", None)


def is_plain(t: torch.Tensor) -> bool:
    return type(t) in PLAIN_TYPES


def is_dtensor(t) -> bool:
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def plain(t: torch.Tensor) -> torch.Tensor | None:
    """A plain tensor holding ``t``'s data on this process: ``t`` itself, the local shard of
    a DTensor, or None for a subclass whose data cannot be read safely, or a tensor whose
    storage was freed or shrunk under it (FSDP frees unsharded parameters that way, and
    torch ops on them read freed memory)."""
    if type(t) not in PLAIN_TYPES:
        if not is_dtensor(t):
            return None
        t = t.to_local()
        if type(t) not in PLAIN_TYPES:
            return None
    return t if fits_storage(t) else None


def fits_storage(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements lie inside its storage (~1 us: not for every hot-path tensor)."""
    try:
        end = (t.storage_offset() + t.numel()) * t.element_size()
        return t.numel() == 0 or t.untyped_storage().nbytes() >= end
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def is_sharded(t) -> bool:
    """Whether ``t`` is a DTensor split across ranks (some placement is a ``Shard``)."""
    return is_dtensor(t) and any(p.is_shard() for p in t.placements)


def shard_groups(t) -> list:
    """The process groups over which ``t``'s shards must be combined (one per sharded mesh
    dimension; replicated dimensions hold copies and are left alone)."""
    mesh = t.device_mesh
    return [mesh.get_group(dim) for dim, p in enumerate(t.placements) if p.is_shard()]
