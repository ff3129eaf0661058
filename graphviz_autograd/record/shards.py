"""Statistics of sharded parameters (FSDP2 DTensors) as those of the full parameter.

Each rank reduces its local shard into a gradient row and squared norms; one SUM and one
MAX all-reduce of small float64 tensors per recorded step (issued together) combine them:
sums of squares, sums, counts add up, the largest |value| is the max. No parameter or
gradient is gathered: the bytes sent are ``9 * 8`` per sharded parameter, whatever the
world size (``benchmarks/bench_fsdp.py``).

Example (on every rank, in step):
    >>> combine(rows, norms_sq, updates_sq, [(i, group)])    # doctest: +SKIP
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist



def combine(rows: list, norms_sq: list, updates_sq: list | None, sharded: list[tuple[int, list]]) -> None:
    """Replace, in place, the local entries of the sharded parameters by full-parameter ones.

    Args:
        rows: gradient rows ``[ss, sum, |max|, non-zeros, nan, inf, n]`` (or None) per parameter.
        norms_sq: ``||w||^2`` of the local data per parameter.
        updates_sq: ``||w_before - w_after||^2`` per parameter, or None.
        sharded: ``(index into the lists, process groups to combine over)`` per sharded parameter,
            the same on every rank.
    """
    by_groups: dict[tuple, list[int]] = {}
    for i, groups in sharded:
        by_groups.setdefault(tuple(groups), []).append(i)
    for groups, idx in by_groups.items():
        data, peaks = [], []
        for i in idx:
            norm_sq = norms_sq[i] if norms_sq[i] is not None else 0.0
            update_sq = updates_sq[i] if updates_sq is not None and updates_sq[i] is not None else 0.0
            row = rows[i]
            if row is None:
                data.append([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, norm_sq, update_sq])
                peaks.append(0.0)
                continue
            ss, s, amax, nz, nan, inf, n = row
            data.append([ss, s, nz, nan, inf, n, norm_sq, update_sq])
            peaks.append(math.inf if amax != amax else amax)       # NaN is carried by the count
        summed = torch.tensor(data, dtype=torch.float64)          # one tensor each (bench_fsdp.py)
        peak = torch.tensor(peaks, dtype=torch.float64)
        for group in groups:
            works = [dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group, async_op=True),
                     dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group, async_op=True)]
            for work in works:
                work.wait()
        for i, (ss, s, nz, nan, inf, n, norm_sq, update_sq), amax in zip(idx, summed.tolist(),
                                                                           peak.tolist()):
            rows[i] = None if n == 0 else [ss, s, math.nan if nan else amax, nz, nan, inf, n]
            norms_sq[i] = norm_sq
            if updates_sq is not None:
                updates_sq[i] = update_sq
