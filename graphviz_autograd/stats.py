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


EXACT_COUNT_MAX = 65_536   # above this many elements, zero fractions are estimated from a sample


def nonzero_count(f: torch.Tensor) -> torch.Tensor:
    """Non-zero elements of flat ``f`` as a float64 0-d tensor.

    Counting is the slowest reduction here (a full pass that cannot vectorise
    like a sum), so above :data:`EXACT_COUNT_MAX` elements it is estimated from
    an evenly strided sample of about that many elements (odd stride, so it does
    not alias with power-of-two layouts); the error of the fraction is ~0.4%.
    """
    n = f.numel()
    if n <= EXACT_COUNT_MAX:
        return (f != 0).sum().double()
    stride = (n // EXACT_COUNT_MAX) | 1
    sample = f[::stride]
    return (sample != 0).sum().double() * (n / sample.numel())


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
    return torch.stack([f.sum().double(), ss.double(), nonzero_count(f), sat,
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


def batch_grad_stats(groups: list[list[torch.Tensor]]) -> list[dict[str, float] | None]:
    """Gradient statistics for many tensors at once: one dict per group (None for an empty group).

    A group is the gradients of one parameter or one autograd node (several
    outputs). ``torch._foreach_*`` kernels reduce every tensor in a handful of
    calls and one ``tolist()`` reads everything back; NaN/Inf are counted only
    for groups whose norm is not finite.
    """
    flat: list[torch.Tensor] = []
    owner: list[int] = []
    for gi, group in enumerate(groups):
        for t in group:
            if t is not None:
                f = _flat(t)
                if f.numel():
                    flat.append(f)
                    owner.append(gi)
    out: list[dict[str, float] | None] = [None] * len(groups)
    if not flat:
        return out
    with torch.no_grad():
        norms = torch.stack(torch._foreach_norm(flat)).double()
        lo_hi = [torch.aminmax(f) for f in flat]           # no |f| copy of every gradient
        absmax = torch.stack([torch.maximum(-lo, hi) for lo, hi in lo_hi]).double()
        sums = torch.stack([f.sum() for f in flat]).double()
        nonzero = torch.stack([nonzero_count(f) for f in flat])
        n2, am, sm, nz = torch.stack([norms, absmax, sums, nonzero]).tolist()
    acc: dict[int, list[float]] = {}
    for k, gi in enumerate(owner):
        a = acc.setdefault(gi, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])   # ss, sum, absmax, nz, n, nan, inf
        a[0] += n2[k] * n2[k]
        a[1] += sm[k]
        a[2] = am[k] if math.isnan(am[k]) or am[k] > a[2] else a[2]
        a[3] += nz[k]
        a[4] += flat[k].numel()
        if not math.isfinite(n2[k]):
            a[5] += float(torch.isnan(flat[k]).sum())
            a[6] += float(torch.isinf(flat[k]).sum())
    for gi, (ss, s, amax, nzc, n, nan, inf) in acc.items():
        mean = s / n
        var = (ss - n * mean * mean) / (n - 1) if n > 1 else 0.0
        std = math.sqrt(var) if var > 0 else (var if math.isnan(var) else 0.0)
        out[gi] = {"grad_norm": math.sqrt(ss) if ss >= 0 else math.nan, "grad_mean": mean,
                   "grad_std": std, "grad_absmax": amax, "grad_zero_frac": 1.0 - nzc / n,
                   "grad_nan": nan, "grad_inf": inf}
    return out
