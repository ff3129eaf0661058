"""The statistics path for accelerators (CUDA, MPS, ...), run on CPU tensors with
``stats.force_device_path()``: real recorded training, counted with a ``TorchDispatchMode``
(ops that make the host wait for a device, copies between devices, the explicit copy that
brings statistics to the host) and spies on Python-level reads of tensor values
(``.item()``, ``.tolist()``, ``float(t)``, ...). A recorded step reads back exactly
once, an unrecorded step never, and the values equal those of the CPU path."""
from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import graphviz_autograd as ga
from graphviz_autograd.record import device, stats

aten = torch.ops.aten
WAITS = (aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.nonzero)


class HostSyncs(TorchDispatchMode):
    """Ops that make the host wait for a device's data, and copies to another device or to
    the host (on the CPU an explicit ``.to("cpu", copy=True)`` shows as one; autocast's casts,
    which change the dtype on the same device, do not)."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        packet = func.overloadpacket
        if packet in WAITS:
            self.events.append(str(packet))
        elif packet is aten._to_copy and kwargs.get("device") is not None:
            src, dst = args[0].device, torch.device(kwargs["device"])
            if dst != src or kwargs.get("dtype") in (None, args[0].dtype):
                self.events.append(f"copy {src} -> {dst}")
        elif packet is aten.copy_ and args[0].device != args[1].device:
            self.events.append(f"copy_ {args[1].device} -> {args[0].device}")
        return func(*args, **kwargs)


READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__index__", "__bool__")


class Counter:
    """One step's host synchronisations (:class:`HostSyncs`) and Python-level reads of tensor
    values (``reads``: on a CPU tensor they dispatch no aten op, and autograd switches
    ``TorchFunctionMode`` off during backward, so the ``spy`` fixture wraps the methods)."""

    current: "Counter | None" = None

    def __init__(self):
        self.syncs, self.reads = HostSyncs(), []

    @contextlib.contextmanager
    def __call__(self):
        Counter.current = self
        try:
            with self.syncs:
                yield
        finally:
            Counter.current = None


@pytest.fixture(autouse=True)
def spy(monkeypatch):
    """Every Python-level read of a tensor's values is noted in the current Counter (the real
    method still runs)."""
    for name in READS:
        def noted(self, *args, _read=getattr(torch.Tensor, name), _name=name, **kwargs):
            if Counter.current is not None:
                Counter.current.reads.append(_name)
            return _read(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, noted)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3),
                         nn.Tanh(), nn.Flatten(), nn.Linear(8 * 3 * 3, 32), nn.Sigmoid(),
                         nn.Linear(32, 10))


def batch(step: int):
    g = torch.Generator().manual_seed(step)
    return torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)


def train_step(net, opt, step: int, autocast):
    x, y = batch(step)
    opt.zero_grad()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss


def counted_run(run_dir, steps: int, autocast=None, net=None) -> list[Counter]:
    """Train with the device path forced, counting each step (forward, backward, optimizer
    step and ``log()``; the loss is converted by the user, outside the count)."""
    net = net or make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    counters = []
    with stats.force_device_path(), ga.Recorder(net, run_dir, optimizer=opt, every=2,
                                                record=("params", "nodes", "activations")) as rec:
        for step in range(steps):
            count = Counter()
            with count():
                loss = train_step(net, opt, step, autocast)
            value = loss.item()                 # the user's own conversion: not counted
            with count():
                rec.log(step, loss=value)
            counters.append(count)
    return counters


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["fp32", "bf16 autocast"])
def test_a_recorded_step_reads_back_once_and_an_unrecorded_step_never(tmp_path, autocast):
    counters = counted_run(tmp_path / "run", 6, autocast)
    for step, count in enumerate(counters):
        assert count.syncs.ops > 50                  # the modes saw the whole step
        if step % 2 == 0:                            # every=2: steps 0, 2, 4 record
            assert count.syncs.events == ["copy cpu -> cpu"], step
            assert count.reads == ["tolist"], step
        else:
            assert count.syncs.events == [] and count.reads == [], step
    run = ga.open_run(tmp_path / "run")
    assert run.meta["stats"] in ("native", "numpy")
    for kind in ("param", "node", "module"):         # everything was recorded
        assert run.keys(kind), kind
        assert list(run.stats_at(4, kind, "grad_norm" if kind != "module" else "act_mean"))


@pytest.mark.parametrize("inject", ["item", "tolist", "float"])
def test_the_count_sees_a_hidden_read_in_the_path(tmp_path, monkeypatch, inject):
    """The check above fails if anyone reads a value per tensor in the device path."""
    reduce_one = device._reduce_one

    def with_a_read(t, acc):
        values = reduce_one(t, acc)
        {"item": lambda: values[0].item(), "tolist": values.tolist,
         "float": lambda: float(values[1])}[inject]()
        return values
    monkeypatch.setattr(device, "_reduce_one", with_a_read)
    counters = counted_run(tmp_path / "run", 2)
    recorded = counters[0]
    extra = len(recorded.reads) - 1 + len(recorded.syncs.events) - 1
    assert extra > 0, (recorded.syncs.events, recorded.reads)


STATS = ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac", "grad_nan",
         "grad_inf", "param_norm", "update_ratio", "act_mean", "act_std", "act_zero_frac",
         "act_sat_frac")


def _tolerance(stat: str, key: str, want: dict) -> dict:
    """The CPU path sums float32 in float within 4,096-element blocks (relative error ~1e-7 of
    the sum of |x|), the device path in float64: a mean near zero differs by rounding noise
    relative to the spread, and a variance (sum of squares minus n * mean^2) loses digits
    where the mean is large against the spread (a sigmoid's outputs: ~(0.5 / 0.045)^2 = 120x)."""
    if stat in ("grad_mean", "act_mean"):
        spread = want[stat.replace("mean", "std")].get(key) or 0.0
        return {"rel": 1e-5, "abs": 1e-5 * spread + 1e-12}
    if stat in ("grad_std", "act_std"):
        return {"rel": 1e-4}
    return {"rel": 1e-5, "abs": 1e-12}


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16 autocast", "fp16 autocast"])
def test_the_device_path_records_the_values_of_the_cpu_path(tmp_path, autocast):
    nets = {"device": make_net()}
    nets["cpu"] = copy.deepcopy(nets["device"])
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9) for k, n in nets.items()}
    recs = {k: ga.Recorder(n, tmp_path / k, optimizer=opts[k], every=2) for k, n in nets.items()}
    try:
        for step in range(5):                       # in lockstep: the same weights every step
            for k in ("device", "cpu"):
                with stats.force_device_path(k == "device"):
                    loss = train_step(nets[k], opts[k], step, autocast)
                    recs[k].log(step, loss=loss.item())
    finally:
        for rec in recs.values():
            rec.close()
    runs = {k: ga.open_run(tmp_path / k) for k in nets}
    compared = 0
    for kind in ("param", "node", "module"):
        assert runs["device"].keys(kind) == runs["cpu"].keys(kind) != []
        for step in (0, 2, 4):
            got = runs["device"].stats_table_at(step, kind, STATS)
            want = runs["cpu"].stats_table_at(step, kind, STATS)
            assert {s: set(v) for s, v in got.items()} == {s: set(v) for s, v in want.items()}
            for stat, values in want.items():
                for key, v in values.items():
                    assert got[stat][key] == pytest.approx(v, **_tolerance(stat, key, want)), \
                        (kind, step, stat, key)
                    compared += 1
    assert compared > 300


def test_parameter_gradients_outside_backward_wait_and_are_reduced_together(monkeypatch):
    calls = []
    reduce_many = device._reduce_many
    monkeypatch.setattr(device, "_reduce_many", lambda ts, acc: calls.append(len(ts)) or reduce_many(ts, acc))
    grads = [torch.randn(5, 3), torch.randn(7).bfloat16(), torch.randn(4, 4).t(), torch.randn(2)]
    with stats.force_device_path():
        rows = [stats.grad_row(g) for g in grads]
        assert all(r.values is None and r.tensor is not None for r in rows)    # queued
        got = [stats.grad_values([r]) for r in stats.read_rows(rows)]
    assert sorted(calls) == [1, 3]               # one batch per dtype
    for g, values in zip(grads, got):
        f = g.double().reshape(-1)
        assert values[0] == pytest.approx(f.norm().item(), rel=1e-9)
        assert values[1] == pytest.approx(f.mean().item(), rel=1e-9, abs=1e-12)
        assert values[3] == f.abs().max().item()


def test_a_dropped_row_frees_its_tensor_and_a_full_queue_is_reduced(monkeypatch):
    stats.read_rows([])                            # an empty queue to start with
    with stats.force_device_path():
        t = torch.randn(3)
        row = stats.grad_row(t)
        ref = __import__("weakref").ref(row)
        del row
        assert ref() is None                       # the queue holds no strong reference
        monkeypatch.setattr(device, "MAX_QUEUED", 3)
        stats.read_rows([])
        rows = [stats.grad_row(torch.full((2,), float(i))) for i in range(3)]
        assert all(r.tensor is None and r.values is not None for r in rows)  # reduced when full
        assert [r[1] for r in stats.read_rows(rows)] == [0.0, 2.0, 4.0]


def test_norms_left_pending_are_filled_by_the_next_read_back():
    tensors = [torch.randn(4, 5), torch.randn(3).half(), torch.randn(6, 2).double()]
    with stats.force_device_path():
        sq = stats.sq_norms(tensors, pending=True)
        assert all(math.isnan(v) for v in sq)
        rows = stats.read_rows([stats.grad_row(torch.ones(2)), None, [1.0]])
        assert rows[1:] == [None, [1.0]] and rows[0][0] == pytest.approx(2.0, rel=1e-15)
        assert sq == pytest.approx([t.double().pow(2).sum().item() for t in tensors], rel=1e-12)
        assert stats.sq_norms(tensors) == pytest.approx(sq, rel=1e-12)   # read back at once


def test_odd_tensors_on_the_device_path():
    cases = {"expanded": torch.randn(5, 1).expand(5, 6), "scalar": torch.tensor(-2.5),
             "integer": torch.arange(-3, 4), "complex": torch.randn(4, dtype=torch.complex64),
             "sparse": torch.randn(4, 4).relu().to_sparse()}
    with stats.force_device_path():
        rows = stats.read_rows([stats.grad_row(t) for t in cases.values()])
    for (name, t), row in zip(cases.items(), rows):
        f = stats._flat(t).double()
        assert row[0] == pytest.approx(f.pow(2).sum().item(), rel=1e-6), name
        assert row[6] == f.numel(), name


def test_without_an_optimizer_a_recorded_step_reads_back_once(tmp_path):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)        # stepped by hand: the recorder has none
    with stats.force_device_path(), ga.Recorder(net, tmp_path / "run", every=2) as rec:
        for step in range(4):
            count = Counter()
            with count():
                loss = train_step(net, opt, step, None)
            value = loss.item()
            with count():
                rec.log(step, loss=value)
            assert count.syncs.events == (["copy cpu -> cpu"] if step % 2 == 0 else []), step
            assert count.reads == (["tolist"] if step % 2 == 0 else []), step
    norms = ga.open_run(tmp_path / "run").stats_at(2, "param", "param_norm")
    assert norms and all(v > 0 for v in norms.values())
