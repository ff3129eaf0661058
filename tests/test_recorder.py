"""The recorder on real training: statistics checked against independent computations."""
import gc
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.errors import ConfigError, HookError
from graphviz_autograd.examples.models import DynamicNet, LeNet5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batches(n, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def train(model, rec, opt, n, seed=0, on_step=None):
    for step, (x, y) in enumerate(batches(n, seed=seed)):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if on_step:
            on_step(step)
        opt.step()
        rec.log(step, loss=loss, batch_mean=x.mean())


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())


def test_parameter_statistics_equal_values_from_param_grad(tmp_path):
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = {}

    def capture(step):
        w = model.fc1.weight
        g = w.grad
        expected[step] = dict(grad_norm=g.norm().item(), grad_mean=g.mean().item(), grad_std=g.std().item(),
                              grad_absmax=g.abs().max().item(), grad_zero_frac=(g == 0).float().mean().item(),
                              param_before=w.detach().clone())

    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        train(model, rec, opt, 6, on_step=capture)
        after = model.fc1.weight.detach().clone()
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == list(range(6))
    assert len(run.loss().values) == 6 and run.scalar_names() == ["batch_mean", "loss", "lr"]
    for stat in ("grad_norm", "grad_mean", "grad_std", "grad_absmax", "grad_zero_frac"):
        got = run.param_series("fc1.weight", stat).values
        assert got == pytest.approx([expected[s][stat] for s in range(6)], rel=1e-4, abs=1e-9), stat
    ratio = run.param_series("fc1.weight", "update_ratio").values[-1]
    want = (after - expected[5]["param_before"]).norm().item() / after.norm().item()
    assert ratio == pytest.approx(want, rel=1e-4)
    assert run.param_series("fc1.weight", "grad_nan").values == [0.0] * 6
    assert no_hooks_left(model)


def test_node_statistics_equal_a_hook_written_in_the_test(tmp_path):
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []

    def fc1_output_hook(_m, _a, out):
        out.grad_fn.register_prehook(lambda grads: seen.append(grads[0].norm().item()))

    handle = model.fc1.register_forward_hook(fc1_output_hook)
    try:
        with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
            train(model, rec, opt, 4)
    finally:
        handle.remove()
    run = ga.open_run(tmp_path / "run")
    assert run.node_series("fc1/AddmmBackward0:0", "grad_norm").values == pytest.approx(seen, rel=1e-5)
    relu = run.stats_at(3, "node", "act_zero_frac")
    assert relu and all(0.0 <= v <= 1.0 for v in relu.values())
    assert set(run.keys("module")) >= {"conv1", "fc1", "fc3"}


def test_every_and_record_choices(tmp_path):
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=3, record="params") as rec:
        train(model, rec, opt, 7)
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == list(range(7))
    assert run.param_series("conv1.weight").steps == [0, 3, 6]
    assert run.keys("node") == [] and run.keys("module") == []
    assert [v.first_step for v in run.graph_versions()] == [0]


def test_hooks_are_on_only_around_recorded_steps(tmp_path):
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    armed = []

    def opt_hooks():
        return len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)

    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=3) as rec:
        assert not no_hooks_left(model) and opt_hooks() == 2     # step 0 records
        for step, (x, y) in enumerate(batches(7)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            rec.log(step)
            armed.append((not no_hooks_left(model), opt_hooks() == 2))
    assert armed == [((step + 1) % 3 == 0,) * 2 for step in range(7)]
    assert no_hooks_left(model) and opt_hooks() == 0
    run = ga.open_run(tmp_path / "run")
    assert run.param_series("fc1.weight", "update_ratio").steps == [0, 3, 6]
    from graphviz_autograd.record import stats
    assert run.meta["stats"] == ("native" if stats.NATIVE is not None else "numpy")


def test_dynamic_graph_yields_versions_with_the_right_step_mapping(tmp_path):
    torch.manual_seed(0)
    model = DynamicNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    repeats = {}
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        for step in range(12):
            x = torch.rand(8, 1, 28, 28) * (step + 1) / 7
            repeats[step] = model.repeats(x)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), torch.randint(0, 10, (8,)))
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    run = ga.open_run(tmp_path / "run")
    assert len(set(repeats.values())) >= 2
    versions = run.graph_versions()
    assert len(versions) == len(set(repeats.values()))
    by_repeat = {}
    for step, n in repeats.items():
        by_repeat.setdefault(n, set()).add(run.version_at(step))
    assert all(len(v) == 1 for v in by_repeat.values())
    for n, (v,) in by_repeat.items():
        hidden = [x for x in run.graph(v).nodes if x.op == "AddmmBackward0" and x.module == "hidden"]
        assert len(hidden) == n


def test_hooks_are_removed_when_training_raises(tmp_path):
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(RuntimeError, match="boom"):
        with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
            for step, (x, y) in enumerate(batches(3)):
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                if step == 1:
                    raise RuntimeError("boom")
                rec.log(step, loss=loss)
    assert no_hooks_left(model)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert ga.open_run(tmp_path / "run").steps() == [0]
    # the node creation hook is gone too: building a graph now tags nothing
    out = model(torch.randn(1, 1, 28, 28)).sum()
    assert not out.grad_fn.metadata


def test_same_model_twice_at_once_is_refused(tmp_path):
    model = LeNet5()
    with ga.Recorder(model, tmp_path / "a"):
        with pytest.raises(HookError, match="already has an open Recorder"):
            ga.Recorder(model, tmp_path / "b")
    with ga.Recorder(model, tmp_path / "c"):
        pass


@pytest.mark.parametrize("kwargs,match", [
    (dict(every=0), "every=0"), (dict(every=2.5), "every="), (dict(record=("grads",)), "record="),
    (dict(optimizer="sgd"), "optimizer="),
])
def test_bad_arguments_name_the_value(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ga.Recorder(LeNet5(), tmp_path / "run", **kwargs)


def test_bad_log_calls(tmp_path):
    model = LeNet5()
    with ga.Recorder(model, tmp_path / "run") as rec:
        rec.log(0, loss=1.0)
        with pytest.warns(RuntimeWarning, match="log\\(0\\) skipped: step 0 is not after the last logged step 0"):
            rec.log(0, loss=5.0)                # bookkeeping: never stops training
        with pytest.raises(ConfigError, match="shape"):
            rec.log(1, loss=torch.ones(3))
        with pytest.raises(ConfigError, match="numbers"):
            rec.log(2, acc="high")
        rec.log(3, loss=float("nan"))
    loss = ga.open_run(tmp_path / "run").loss()
    assert loss.steps == [0, 3] and loss.values[0] == 1.0 and math.isnan(loss.values[-1])


def test_nothing_is_retained_after_a_step(tmp_path):
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        x, y = next(batches(1))
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        rec.log(0, loss=loss)
        refs = [weakref.ref(loss), weakref.ref(out)]
        capture = rec._capture
        assert not capture.slots and not capture.node_handles and capture.output is None
        del loss, out
        gc.collect()
        assert all(r() is None for r in refs)


WRITER = """
import sys, torch, torch.nn.functional as F
sys.path.insert(0, {repo!r})
import graphviz_autograd as ga
from graphviz_autograd.examples.models import LeNet5
torch.manual_seed(0)
model = LeNet5(); opt = torch.optim.SGD(model.parameters(), lr=0.01)
rec = ga.Recorder(model, sys.argv[1], optimizer=opt, every=1, flush_interval={flush})
for step in range({steps}):
    x = torch.randn(8, 1, 28, 28); y = torch.randint(0, 10, (8,))
    opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    rec.log(step, loss=loss)
    if step % 5 == 4:
        rec.flush(); print("flushed", step, flush=True)
rec.close()
print("done", flush=True)
"""


def test_sigkill_leaves_an_openable_store_with_every_flushed_step(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=REPO, flush=60.0, steps=100000))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    flushed = -1
    for line in proc.stdout:
        flushed = int(line.split()[1])
        if flushed >= 14:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = ga.open_run(tmp_path / "run")
    steps = run.steps()
    assert steps[: flushed + 1] == list(range(flushed + 1))
    assert run.graph().params and len(run.param_series("fc1.weight").values) == len(steps)


READER = """
import sys, time
sys.path.insert(0, {repo!r})
import graphviz_autograd as ga
seen, deadline = [], time.time() + {seconds}
while time.time() < deadline and (not seen or seen[-1] < {expect}):
    try:
        run = ga.open_run(sys.argv[1])
    except ga.errors.RunNotFoundError:
        time.sleep(0.05); continue
    steps = run.steps()
    if steps:   # read after the steps: a flush in between may add more, never fewer
        assert set(steps) <= set(run.param_series("fc1.weight").steps), "partial step"
    seen.append(len(steps))
    time.sleep(0.05)
print(" ".join(map(str, seen)))
"""


def test_a_reader_process_sees_growing_steps_while_training(tmp_path):
    reader = tmp_path / "reader.py"
    reader.write_text(READER.format(repo=REPO, seconds=240, expect=250))
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER.format(repo=REPO, flush=0.2, steps=250))
    r = subprocess.Popen([sys.executable, str(reader), str(tmp_path / "run")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    w = subprocess.run([sys.executable, str(writer), str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=300)
    out, err = r.communicate(timeout=300)
    assert w.returncode == 0, w.stderr[-1500:]
    assert r.returncode == 0, err[-1500:]
    counts = [int(c) for c in out.split()]
    assert counts == sorted(counts) and counts[-1] == 250
    assert len(set(counts)) >= 3


def test_two_recorders_logging_in_turn_take_only_their_own_models_nodes(tmp_path):
    """Two models trained in turn on one thread (a GAN's halves, teacher and student): each
    Recorder's graph and node statistics are its model's alone, every recorded step has its
    node rows, and the node-creation hook is gone once both are closed."""
    from graphviz_autograd.live import instrument as live_instrument

    torch.manual_seed(0)
    nets = {"a": nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)),
            "b": nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2), nn.Sigmoid())}
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.1) for k, n in nets.items()}
    recs = {k: ga.Recorder(n, tmp_path / k, optimizer=opts[k], every=2, record=["params", "nodes"])
            for k, n in nets.items()}
    try:
        for step in range(6):
            for k, net in nets.items():
                opts[k].zero_grad()
                loss = net(torch.randn(8, 6)).pow(2).mean()
                loss.backward()
                opts[k].step()
                recs[k].log(step, loss=loss)
    finally:
        for rec in recs.values():
            rec.close()
    assert live_instrument._HOOKS.fns == [] and not live_instrument._HOOKS.pushed
    for k, net in nets.items():
        run = ga.open_run(tmp_path / k)
        graph = run.graph_at(4)
        ops = sorted(n.op for n in graph.nodes if n.kind.name == "OP")
        own = sorted(n.op for n in ga.trace(net(torch.randn(2, 6)).pow(2).mean(), model=net).nodes
                     if n.kind.name == "OP")
        assert ops == own
        assert {n.param for n in graph.nodes if n.kind.name == "PARAM"} == {name for name, _ in net.named_parameters()}
        for step in (0, 2, 4):
            table = run.stats_table_at(step, "node", ("grad_norm",))["grad_norm"]
            assert len(table) == len(ops), (k, step, table)
