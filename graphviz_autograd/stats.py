"""Gradient and activation statistics, computed as tensors and read back once per step.

Each tensor is reduced in four fast passes (``dot``, ``sum``, ``aminmax``,
``count_nonzero``) into a small vector; NaN/Inf are counted only when that
vector shows a non-finite value (on CPU reading one float back is cheap; on
other devices the counts are always computed to avoid a sync per tensor). The
vectors of a step are stacked and turned into Python floats with one
``tolist()``.

Example:
    >>> import torch
    >>> vec = grad_vector(torch.tensor([3.0, 0.0, -4.0]))
    >>> s = grad_stats(vec.tolist())
    >>> s["grad_norm"], s["grad_absmax"], round(s["grad_zero_frac"], 3)
    (5.0, 4.0, 0.333)
"""
from __future__ import annotations

import math

import torch

# Layout of a gradient vector.
SS, SUM, MIN, MAX, NONZERO, NAN, INF, NUMEL = range(8)
GRAD_LEN = 8
# Layout of an activation vector.
A_SUM, A_SS, A_NONZERO, A_SAT, A_NUMEL = range(5)
ACT_LEN = 5

GRAD_STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac",
              "grad_nan", "grad_inf")
ACT_STATS = ("act_mean", "act_std", "act_zero_frac", "act_sat_frac")


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.layout is not torch.strided:
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    if t.is_complex():
        t = t.abs()
    if not t.is_floating_point():
        t = t.float()
    return t.reshape(-1)


def grad_vector(t: torch.Tensor) -> torch.Tensor:
    """The 8 reductions of one gradient tensor, as a float64 tensor (no sync on GPU)."""
    f = _flat(t)
    n = f.numel()
    if n == 0:
        return torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    ss = torch.dot(f, f) if f.dtype in (torch.float32, torch.float64) else f.double().pow(2).sum()
    lo, hi = torch.aminmax(f)
    if f.device.type == "cpu":
        finite = math.isfinite(float(ss))
        nan = inf = 0.0
        if not finite:
            nan = float(torch.isnan(f).sum())
            inf = float(torch.isinf(f).sum())
        counts = torch.tensor([nan, inf], dtype=torch.float64)
    else:  # pragma: no cover - needs an accelerator
        counts = torch.stack([torch.isnan(f).sum(), torch.isinf(f).sum()]).double()
    return torch.cat([torch.stack([ss.double(), f.sum().double(), lo.double(), hi.double(),
                                   torch.count_nonzero(f).double()]),
                      counts.to(f.device), torch.tensor([float(n)], dtype=torch.float64, device=f.device)])


def combine(vectors: list[torch.Tensor]) -> torch.Tensor:
    """One vector for several tensors (a node with several gradient outputs)."""
    if len(vectors) == 1:
        return vectors[0]
    m = torch.stack(vectors)
    out = m.sum(0)
    out[MIN] = m[:, MIN].min()
    out[MAX] = m[:, MAX].max()
    return out


def grad_stats(v: list[float]) -> dict[str, float]:
    """Readable statistics from one (already ``tolist()``-ed) gradient vector."""
    n = v[NUMEL]
    if n <= 0:
        return {k: 0.0 for k in GRAD_STATS}
    ss, s = v[SS], v[SUM]
    mean = s / n
    var = (ss - n * mean * mean) / (n - 1) if n > 1 else 0.0
    std = math.sqrt(var) if var > 0 else (var if math.isnan(var) else 0.0)
    absmax = max(abs(v[MIN]), abs(v[MAX])) if not (math.isnan(v[MIN]) or math.isnan(v[MAX])) else math.nan
    return {"grad_norm": math.sqrt(ss) if ss >= 0 else math.nan, "grad_mean": mean, "grad_std": std,
            "grad_absmax": absmax, "grad_zero_frac": 1.0 - v[NONZERO] / n,
            "grad_nan": v[NAN], "grad_inf": v[INF]}


def act_vector(t: torch.Tensor, saturation: str | None) -> torch.Tensor:
    """Reductions of an activation: sum, sum of squares, non-zeros, saturated count, numel.

    ``saturation`` is ``"tanh"`` (|y| > 0.99), ``"sigmoid"`` (y < 0.01 or y > 0.99) or None.
    """
    f = _flat(t)
    n = f.numel()
    if n == 0:
        return torch.zeros(ACT_LEN, dtype=torch.float64)
    if saturation == "tanh":
        sat = (f.abs() > 0.99).sum().double()
    elif saturation == "sigmoid":
        sat = ((f < 0.01) | (f > 0.99)).sum().double()
    else:
        sat = torch.tensor(-1.0, dtype=torch.float64)
    ss = torch.dot(f, f) if f.dtype in (torch.float32, torch.float64) else f.double().pow(2).sum()
    return torch.stack([f.sum().double(), ss.double(), torch.count_nonzero(f).double(), sat,
                        torch.tensor(float(n), dtype=torch.float64)])


def act_stats(v: list[float]) -> dict[str, float | None]:
    n = v[A_NUMEL]
    if n <= 0:
        return {k: None for k in ACT_STATS}
    mean = v[A_SUM] / n
    var = (v[A_SS] - n * mean * mean) / (n - 1) if n > 1 else 0.0
    return {"act_mean": mean, "act_std": math.sqrt(var) if var > 0 else 0.0,
            "act_zero_frac": 1.0 - v[A_NONZERO] / n,
            "act_sat_frac": None if v[A_SAT] < 0 else v[A_SAT] / n}


def saturation_kind(op_or_module: str) -> str | None:
    """Which saturation test applies to an op name or module class name."""
    name = op_or_module.lower()
    if "tanh" in name:
        return "tanh"
    if "sigmoid" in name:
        return "sigmoid"
    return None


def param_vectors(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradient vectors of parameters (zeros vector when ``.grad`` is None)."""
    return [grad_vector(p.grad) if p.grad is not None else torch.zeros(GRAD_LEN, dtype=torch.float64)
            for p in params]
