"""Gradient and activation reductions against float64 references computed independently, for
every tensor form a backward pass hands out: transposed, permuted, strided and expanded views,
half precision (normal, subnormal, extreme, NaN/Inf), empty, and tensors large enough for
sampled zero counts; through the C extension, the NumPy/torch fallback and the device path."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from graphviz_autograd.record import host, stats


@pytest.fixture(params=["native", "numpy", "device"], autouse=True)
def path(request, monkeypatch):
    """Every test runs through the C extension, the NumPy/torch fallback and the device path
    (forced on CPU tensors)."""
    if request.param == "numpy":
        monkeypatch.setattr(stats, "NATIVE", None)
    elif request.param == "native" and stats.NATIVE is None:
        pytest.skip("graphviz_autograd.record._reduce was not built (no C compiler at install time)")
    with stats.force_device_path(request.param == "device"):
        yield request.param


@pytest.mark.parametrize("path", ["native"], indirect=True)
def test_the_extension_is_built_where_a_c_compiler_is(path):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the NumPy fallback is in use")
    assert stats.NATIVE is not None and stats.NATIVE.__name__ == "graphviz_autograd.record._reduce"


def expected(t: torch.Tensor) -> dict:
    f = t.detach().double().reshape(-1)
    n = f.numel()
    return {"grad_norm": f.norm().item(), "grad_mean": f.mean().item(),
            "grad_std": f.std().item() if n > 1 else 0.0, "grad_absmax": f.abs().max().item(),
            "grad_zero_frac": (f == 0).double().mean().item(),
            "grad_nan": 0.0, "grad_inf": 0.0}


def _with_zeros(shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(sum(shape))
    t = torch.randn(*shape, generator=g, dtype=dtype)
    return t * (torch.rand(*shape, generator=g) > 0.3).to(dtype)


FORMS = {
    "contiguous": lambda: _with_zeros((7, 9)),
    "transposed": lambda: _with_zeros((40, 30)).t(),
    "permuted 4-d": lambda: _with_zeros((2, 3, 4, 5)).permute(3, 1, 0, 2),
    "strided rows": lambda: _with_zeros((20, 10))[::3],
    "expanded": lambda: _with_zeros((5, 1)).expand(5, 6),
    "sliced column": lambda: _with_zeros((6, 8))[:, 2],
    "scalar": lambda: torch.tensor(-2.5),
    "float64": lambda: _with_zeros((11, 3), torch.float64),
    "float16": lambda: _with_zeros((11, 3)).half(),
    "bfloat16": lambda: _with_zeros((11, 3)).bfloat16(),
    "above the BLAS threshold": lambda: _with_zeros((120, 100)),
    "above NUMPY_MAX (torch path)": lambda: _with_zeros((1100, 1000)),
    "negative-bit view": lambda: torch._neg_view(_with_zeros((6, 7))),
    "transposed float64, large": lambda: _with_zeros((400, 300), torch.float64).t(),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_gradient_statistics_match_torch(form):
    t = FORMS[form]()
    [got] = stats.batch_grad_stats([[t]])
    want = expected(t)
    for k, v in want.items():
        sampled = k == "grad_zero_frac" and t.numel() > stats.EXACT_COUNT_MAX
        assert got[k] == pytest.approx(v, rel=1e-4, abs=0.005 if sampled else 1e-6), (form, k)


def _half_cases(dtype: torch.dtype) -> dict:
    fi = torch.finfo(dtype)

    def special(values):        # a normal tensor with some elements replaced
        t = _with_zeros((37, 29)).to(dtype)
        t.view(-1)[:len(values)] = torch.tensor(values, dtype=dtype)
        return t
    return {
        "normal": _with_zeros((37, 29)).to(dtype),
        "transposed": _with_zeros((30, 40)).to(dtype).t(),
        "permuted 4-d": _with_zeros((2, 3, 4, 5)).to(dtype).permute(3, 1, 0, 2),
        "strided rows": _with_zeros((20, 10)).to(dtype)[::3],
        "several blocks, odd tail": _with_zeros((3, 4099)).to(dtype),
        "large": _with_zeros((300, 700)).to(dtype),
        "subnormal": (torch.linspace(-0.9, 0.9, 101, dtype=torch.float64) * fi.tiny).to(dtype),
        "extremes": torch.tensor([fi.max, -fi.max, fi.max / 2, fi.tiny, -fi.tiny, 0.0], dtype=dtype),
        "zeros": torch.zeros(64, dtype=dtype),
        "negative zeros": torch.full((64,), -0.0, dtype=dtype),
        "inf": special([math.inf, -math.inf, math.inf]),
        "nan and inf": special([math.nan, math.inf, 1.0, math.nan]),
    }


def reference(t: torch.Tensor) -> dict:
    """Gradient statistics of ``t``'s exact values, in float64."""
    f = t.detach().double().reshape(-1)
    nan, inf = int(torch.isnan(f).sum()), int(torch.isinf(f).sum())
    out = {"grad_nan": nan, "grad_inf": inf, "grad_zero_frac": (f == 0).double().mean().item()}
    if nan or inf:
        out["grad_norm"] = out["grad_absmax"] = math.nan if nan else math.inf
        return out
    return {**out, "grad_norm": f.norm().item(), "grad_mean": f.mean().item(),
            "grad_std": f.std().item(), "grad_absmax": f.abs().max().item()}


@pytest.mark.parametrize("case", list(_half_cases(torch.float16)))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_statistics_match_float64(dtype, case, path):
    t = _half_cases(dtype)[case]
    if path == "native":        # these take the one-pass C path now (no torch fallback)
        assert stats._block(t) is not None or not (t.is_contiguous() or host.one_block(t))
    [got] = stats.batch_grad_stats([[t]])
    want = reference(t)
    rms = math.sqrt(sum(v * v for v in t.double().reshape(-1).tolist() if math.isfinite(v)) / t.numel())
    sampled = path == "numpy" and t.numel() > stats.EXACT_COUNT_MAX    # the torch path samples zeros
    for k, v in want.items():
        if k in ("grad_nan", "grad_inf"):
            assert got[k] == v, (k, got[k], v)
        elif math.isnan(v):
            assert math.isnan(got[k]), k
        elif k == "grad_mean":
            assert got[k] == pytest.approx(v, abs=1e-6 * rms + 1e-300), k
        elif k == "grad_zero_frac":
            assert got[k] == pytest.approx(v, abs=0.01 if sampled else 1e-12), k     # 3 sigma
        else:
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-300), (k, got[k], v)
    if not (want["grad_nan"] or want["grad_inf"]):          # the same values as an activation
        act = stats.act_stats(stats.read_rows([stats.act_row(t, "tanh")]))
        f = t.double().reshape(-1)      # (the torch path estimates from a sample above 65,536)
        assert act["act_mean"] == pytest.approx(f.mean().item(),
                                                abs=(0.03 if sampled else 1e-6) * rms + 1e-300)
        assert act["act_std"] == pytest.approx(f.std().item(), rel=0.01 if sampled else 1e-5,
                                               abs=1e-300)
        assert act["act_zero_frac"] == pytest.approx((f == 0).double().mean().item(),
                                                     abs=0.01 if sampled else 1e-12)
        assert act["act_sat_frac"] == pytest.approx((f.abs() > 0.99).double().mean().item(),
                                                    abs=0.01 if sampled else 1e-12)


@pytest.mark.parametrize("path", ["native", "device"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_pattern_is_read_as_its_exact_value(dtype, path):
    """All 65,536 values (signed zeros, subnormals, normals, Inf, every NaN payload)."""
    t = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    f = t.double()
    finite = t[torch.isfinite(t)]
    x = finite.double()
    [row] = stats.read_rows([stats.grad_row(t)])
    assert list(row[4:]) == [torch.isnan(f).sum().item(), torch.isinf(f).sum().item(), 65536.0]
    assert math.isnan(row[0]) and math.isnan(row[2])
    [row] = stats.read_rows([stats.grad_row(finite)])
    assert row[0] == pytest.approx((x * x).sum().item(), rel=1e-6)
    assert row[1] == pytest.approx(x.sum().item(), abs=1e-6 * x.abs().sum().item())
    assert list(row[2:4]) == [x.abs().max().item(), (x != 0).sum().item()]


def test_zero_fraction_of_a_large_tensor_is_sampled_within_half_a_percent(path):
    t = _with_zeros((300, 1000))           # 300,000 elements: above EXACT_COUNT_MAX
    [got] = stats.batch_grad_stats([[t]])
    want = expected(t)
    exact = path == "native"               # the extension counts every element in its one pass
    assert got["grad_zero_frac"] == pytest.approx(want["grad_zero_frac"], abs=1e-12 if exact else 0.005)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)   # exact, not sampled
    assert got["grad_absmax"] == want["grad_absmax"]


def test_a_group_combines_its_tensors_as_one_set_of_elements():
    a, b = _with_zeros((4, 5)), _with_zeros((3,))
    [got] = stats.batch_grad_stats([[a, None, b]])
    want = expected(torch.cat([a.reshape(-1), b]))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [5, 100_003])
def test_nan_and_inf_are_counted(dtype, size):
    t = torch.zeros(size, dtype=dtype)
    t[:5] = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    [got] = stats.batch_grad_stats([[t]])
    assert (got["grad_nan"], got["grad_inf"]) == (1.0, 2.0)
    assert math.isnan(got["grad_norm"]) and math.isnan(got["grad_absmax"])


def test_inf_without_nan_keeps_an_infinite_norm_and_max():
    t = torch.tensor([1.0, -float("inf"), 2.0, 0.0])
    [got] = stats.batch_grad_stats([[t]])
    assert (got["grad_nan"], got["grad_inf"]) == (0.0, 1.0)
    assert got["grad_norm"] == math.inf and got["grad_absmax"] == math.inf


def test_empty_and_missing_gradients_give_no_statistics():
    assert stats.batch_grad_stats([[], [None], [torch.empty(0, 3)]]) == [None, None, None]


def _sampled_above(path: str, dtype: torch.dtype) -> float:
    """Elements above which a path estimates activation statistics from an even sample."""
    if path == "device":
        return math.inf
    if path == "native":
        return stats.ACT_EXACT_MAX
    return stats.EXACT_COUNT_MAX


@pytest.mark.parametrize("kind,fn,sat", [("tanh", torch.tanh, lambda y: y.abs() > 0.99),
                                         ("sigmoid", torch.sigmoid, lambda y: (y < 0.01) | (y > 0.99)),
                                         (None, torch.relu, None)])
@pytest.mark.parametrize("shape", [(8, 50), (400, 500), (2100, 2100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_activation_statistics_match_float64(kind, fn, sat, shape, dtype, path):
    if path == "device" and shape == (2100, 2100) and dtype != torch.float32:
        pytest.skip("the same code as the smaller shapes, slower on CPU")
    y = fn(torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    sampled = y.numel() > _sampled_above(path, dtype)
    frac_tol, rel = (0.01, 0.01) if sampled else (1e-9, 1e-5)
    got = stats.act_stats(stats.read_rows([stats.act_row(y, kind)]))
    g = y.double().reshape(-1)              # every value exactly, compared in float64
    assert got["act_mean"] == pytest.approx(g.mean().item(), rel=rel, abs=0.01 * g.std().item()
                                            if sampled else 1e-9)
    assert got["act_std"] == pytest.approx(g.std().item(), rel=rel)
    assert got["act_zero_frac"] == pytest.approx((g == 0).double().mean().item(), abs=frac_tol)
    if sat is None:
        assert "act_sat_frac" not in got
    else:   # |y| > 0.99 of the exact value: a 16-bit 0.990234375 is saturated, 0.98974609375 not
        assert got["act_sat_frac"] == pytest.approx(sat(g).double().mean().item(), abs=frac_tol)


def test_update_norms_measure_what_the_optimizer_step_changed(path):
    torch.manual_seed(0)
    net = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    params = list(net.parameters())
    updates = stats.UpdateNorms(params)
    net(torch.randn(4, 6)).sum().backward()
    before = [p.detach().clone() for p in params]
    updates.before()
    opt.step()
    got = updates.after()
    if path == "device":        # pending on the device until the step's read-back fills them in
        assert all(math.isnan(v) for v in got + updates.after_sq)
        stats.read_rows([])
    want = [(b - p.detach()).pow(2).sum().item() for b, p in zip(before, params)]
    assert got == pytest.approx(want, rel=1e-5)
    if path in ("native", "device"):        # the update's pass also gives ||w_after||^2
        assert updates.after_sq == pytest.approx([p.detach().pow(2).sum().item() for p in params],
                                                 rel=1e-5)
    else:
        assert updates.after_sq is None
    with torch.no_grad():                       # the parameters move to new storage: no stale views
        net.weight.data = net.weight.data.double().float().clone()
    updates.before()
    opt.step()
    got = updates.after()
    stats.read_rows([])
    assert all(math.isfinite(v) for v in got)


def test_update_norms_of_a_transposed_parameter_compare_elements_in_place(path):
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(5, 4).t())           # non-contiguous: one block, other order
    b = torch.nn.Parameter(torch.randn(4, 6)[:, ::2])        # not one block: the torch path
    opt = torch.optim.SGD([w, b], lr=0.3, momentum=0.9)
    updates = stats.UpdateNorms([w, b])
    for _ in range(3):                                       # the first step allocates the buffers
        opt.zero_grad()
        (w.sum(dim=1) * torch.arange(4.0)).sum().backward()
        b.pow(2).sum().backward()
        before = [w.detach().clone(), b.detach().clone()]
        updates.before()
        opt.step()
        want = [(x - p.detach()).pow(2).sum().item() for x, p in zip(before, (w, b))]
        got = updates.after()
        stats.read_rows([])                 # (fills the device path's pending values)
        assert got == pytest.approx(want, rel=1e-5)
        if path == "native":                 # ||w_after||^2 comes with the update's pass
            assert updates.after_sq is None   # (not here: b is read by torch, not natively)


class _Wrapped(torch.Tensor):
    """A wrapper subclass: no storage of its own (data_ptr() is 0), ops run on ``inner``."""

    @staticmethod
    def __new__(cls, inner):
        t = torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype,
                                                device=inner.device, strides=inner.stride())
        t.inner = inner
        return t

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda x: x.inner if isinstance(x, _Wrapped) else x  # noqa: E731
        return func(*torch.utils._pytree.tree_map(unwrap, args),
                    **torch.utils._pytree.tree_map(unwrap, kwargs or {}))


def test_a_tensor_without_storage_of_its_own_takes_the_torch_path(path):
    inner = _with_zeros((5, 7))
    t = _Wrapped(inner)
    assert t.data_ptr() == 0 and stats._block(t) is None
    [got] = stats.batch_grad_stats([[t]])
    assert got == pytest.approx(expected(inner), rel=1e-5, abs=1e-9)
    assert stats.act_stats(stats.read_rows([stats.act_row(t, None)]))["act_mean"] == pytest.approx(
        inner.double().mean().item())
    updates = stats.UpdateNorms([t])
    updates.before(), updates.before()          # allocates, then copies: no native pair for it
    got = updates.after()
    stats.read_rows([])
    assert got == [0.0]


@pytest.mark.parametrize("path", ["native"], indirect=True)
def test_a_tensor_whose_storage_shrank_is_never_read_natively(path):
    t = torch.randn(64, 64)
    fresh = torch.randn(4, 4)
    assert stats._block(t) is not None and stats._block(fresh[1:]) is not None
    t.untyped_storage().resize_(64 * 8 * 4)        # now holds 8 of its 64 rows
    assert stats._block(t) is None and stats._block(t[:8]) is not None
    [got] = stats.batch_grad_stats([[t[:8]]])
    assert got["grad_norm"] == pytest.approx(t[:8].double().norm().item(), rel=1e-6)
    t.untyped_storage().resize_(0)
    assert stats._block(t) is None
