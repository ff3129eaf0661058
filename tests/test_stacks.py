"""The ways practitioners train, on real models: a forward through a submodule, closures,
gradient accumulation, detached losses, GradScaler, torch.compile, checkpointing. Each test
checks recorded values against values the test computes itself."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import graphviz_autograd as ga
from graphviz_autograd.testing import assert_gradients_flow


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.Tanh())
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.body(x))


class Wrapper(nn.Module):
    """What a LightningModule looks like: training_step calls ``self.net``, not ``self``."""

    def __init__(self):
        super().__init__()
        self.net = Net()


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _grad_norms(model) -> dict[str, float]:
    return {n: float(p.grad.double().norm()) for n, p in model.named_parameters() if p.grad is not None}


def test_forward_through_a_submodule_records_graph_parameters_and_nodes(tmp_path):
    torch.manual_seed(0)
    model = Wrapper()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = []
    with ga.Recorder(model, tmp_path, optimizer=opt, every=1) as rec:
        for step in range(3):
            x, y = _batch(step)
            opt.zero_grad()
            loss = F.cross_entropy(model.net(x), y)
            loss.backward()
            expected.append(_grad_norms(model))
            opt.step()
            rec.log(step, loss=loss)
    run = ga.open_run(tmp_path)
    graph = run.graph()
    assert "param:net.head.weight" in graph and any(n.module == "net.body.0" for n in graph.nodes)
    for name in expected[0]:
        assert run.param_series(name).values == pytest.approx([e[name] for e in expected], rel=1e-6)
    assert len(run.keys("node")) >= 8 and "net.body.3" in run.keys("module")
    assert all(v > 0 for v in run.param_series("net.head.weight", "update_ratio").values)


def test_a_closure_step_gets_update_ratios(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=2)
    with ga.Recorder(model, tmp_path, optimizer=opt, every=1) as rec:
        for step in range(2):
            x, y = _batch(step)
            before = [p.detach().clone() for p in model.parameters()]

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
            loss = opt.step(closure)
            ratios = {n: float((p.detach() - b).double().norm() / p.detach().double().norm())
                      for (n, p), b in zip(model.named_parameters(), before)}
            rec.log(step, loss=loss)
    run = ga.open_run(tmp_path)
    for name in ("head.weight", "body.0.bias"):
        assert run.param_series(name, "update_ratio").values[-1] == pytest.approx(ratios[name], rel=1e-6)
    assert len(run.keys("node")) > 5


def test_a_detached_loss_warns_once_and_the_graph_comes_from_the_output(tmp_path):
    model = Net()
    with pytest.warns(RuntimeWarning, match="has no autograd graph .*detached") as caught:
        with ga.Recorder(model, tmp_path, every=1) as rec:
            for step in range(3):
                x, y = _batch(step)
                model.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                rec.log(step, loss=loss.detach())
    assert sum("detached" in str(w.message) for w in caught) == 1
    graph = ga.open_run(tmp_path).graph()
    assert "param:head.weight" in graph
    assert not any(n.op == "NllLossBackward0" for n in graph.nodes)    # the loss ops are not there


def test_logging_every_micro_batch_of_an_accumulation_warns_once_and_never_raises(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    global_step = 0         # what a Lightning callback logs at every batch end
    with pytest.warns(RuntimeWarning, match="log\\(1\\) skipped") as caught:
        with ga.Recorder(model, tmp_path, optimizer=opt, every=1) as rec:
            for _ in range(3):
                opt.zero_grad()
                for micro in range(2):            # accumulate_grad_batches=2
                    x, y = _batch(10 * global_step + micro)
                    loss = F.cross_entropy(model(x), y) / 2
                    loss.backward()
                    if micro == 1:
                        expected = _grad_norms(model)
                        opt.step()
                        global_step += 1
                    rec.log(global_step, loss=loss)
    assert sum("skipped" in str(w.message) for w in caught) == 1
    run = ga.open_run(tmp_path)
    assert run.steps() == [0, 1, 2, 3]
    assert run.param_series("head.weight").values[-1] == pytest.approx(expected["head.weight"], rel=1e-6)


def test_zeroed_gradients_at_log_say_why_nothing_was_recorded(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="no parameter had a gradient at log\\(0\\).*before optimizer.zero_grad"):
        with ga.Recorder(model, tmp_path, optimizer=opt, every=1) as rec:
            x, y = _batch(0)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            rec.log(0, loss=1.0)


def test_grad_scaler_statistics_are_unscaled_and_the_scale_is_recorded(tmp_path):
    torch.manual_seed(0)
    model = Net()
    reference = Net()
    reference.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with ga.Recorder(model, tmp_path / "scaled", optimizer=opt, every=1, scaler=scaler) as rec:
        x, y = _batch(0)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        rec.log(0, loss=loss)
    with ga.Recorder(reference, tmp_path / "plain", every=1) as rec:
        loss = F.cross_entropy(reference(x), y)
        loss.backward()
        rec.log(0, loss=loss)
    scaled, plain = ga.open_run(tmp_path / "scaled"), ga.open_run(tmp_path / "plain")
    assert scaled.series("loss_scale").values == [1024.0]
    for name in ("head.weight", "body.0.weight"):
        assert scaled.param_series(name).values == pytest.approx(plain.param_series(name).values, rel=1e-5)
    node = next(k for k in plain.keys("node") if "Addmm" in k)
    assert scaled.node_series(node).values == pytest.approx(plain.node_series(node).values, rel=1e-5)


def test_torch_compile_keeps_eager_ids_and_our_hooks_out_of_dynamo(tmp_path):
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = Net()
    model = torch.compile(eager, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch(0)
    F.cross_entropy(model(x), y).backward()        # compile before recording, as in training
    opt.zero_grad()
    counters.clear()
    with ga.Recorder(model, tmp_path, optimizer=opt, every=1) as rec:
        for step in range(3):
            x, y = _batch(step)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            expected = _grad_norms(eager)
            opt.step()
            rec.log(step, loss=loss)
    assert not counters["graph_break"] and counters["stats"].get("unique_graphs", 0) == 0
    run = ga.open_run(tmp_path)
    assert run.keys("param") == [n for n, _ in eager.named_parameters()]     # no _orig_mod.
    assert run.param_series("head.weight").values[-1] == pytest.approx(expected["head.weight"], rel=1e-6)
    graph = run.graph()
    [region] = [n for n in graph.nodes if n.op == "CompiledFunctionBackward"]
    assert "torch.compile region" in dict(region.attrs)["hides"]
    assert set(graph.params) == set(expected)
    traced = ga.trace(F.cross_entropy(model(x), y), model=model)
    assert sorted(traced.params) == sorted(expected)
    counters.clear()
    d = ga.diagnose(model, inputs=x, target=y)
    assert d.ok and not d.findings, d
    assert not counters["graph_break"]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(4)])
        self.head = nn.Linear(8, 1)
        self.reentrant = reentrant

    def forward(self, x):
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x)


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointed_blocks_are_diagnosed_and_their_hidden_parameters_named(reentrant):
    torch.manual_seed(0)
    model = Checkpointed(reentrant)
    x = torch.randn(4, 8, requires_grad=True)
    graph = ga.trace(model(x).sum(), model=model)
    hidden = [dict(n.attrs) for n in graph.nodes if n.op == "CheckpointFunctionBackward"]
    if reentrant:
        assert len(graph.params) == 2 and len(hidden) == 4
        named = sorted(p.strip() for h in hidden for p in h["hidden_params"].split(","))
        assert named == sorted(n for n, _ in model.blocks.named_parameters(prefix="blocks"))
        assert all("reentrant checkpoint" in h["hides"] for h in hidden)
    else:
        assert len(graph.params) == 18 and not hidden
    user_grads = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = user_grads[n].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        d = assert_gradients_flow(model, inputs=x, loss_fn=lambda out: out.sum())
    assert d.ok and not d.errors
    assert all(torch.equal(p.grad, user_grads[n]) for n, p in model.named_parameters())  # untouched
    names = [n for n, _ in model.named_parameters()]
    reference = dict(zip(names, torch.autograd.grad(_plain_loss(model, x), list(model.parameters()))))
    layer = next(s for s in d.layers if s.module == "blocks.2.a")
    expected = math.sqrt(sum(float(reference[f"blocks.2.a.{k}"].double().norm()) ** 2 for k in ("weight", "bias")))
    assert layer.grad_norm == pytest.approx(expected, rel=1e-5)


def _plain_loss(model, x):
    """The same forward without checkpoints: the reference gradients."""
    h = x
    for block in model.blocks:
        h = block(h)
    return model.head(h).sum()


def test_trace_names_the_parameters_of_a_ddp_wrapped_model_like_the_recorder(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = Net()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, y = _batch(0)
        graph = ga.trace(F.cross_entropy(ddp(x), y), model=ddp)
        assert sorted(graph.params) == sorted(n for n, _ in model.named_parameters())
        with ga.Recorder(ddp, tmp_path / "run", every=1) as rec:
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            rec.log(0, loss=loss)
        assert ga.open_run(tmp_path / "run").keys("param") == [n for n, _ in model.named_parameters()]
    finally:
        dist.destroy_process_group()


def test_autocast_bf16_gradients_are_recorded(tmp_path):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ga.Recorder(model, tmp_path, optimizer=opt, every=1) as rec:
        for step in range(2):
            x, y = _batch(step)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            expected = _grad_norms(model)
            opt.step()
            rec.log(step, loss=loss)
    run = ga.open_run(tmp_path)
    assert run.param_series("body.0.weight").values[-1] == pytest.approx(expected["body.0.weight"], rel=1e-6)
    bf16_nodes = [n for n in run.graph().nodes if n.outputs and n.outputs[0] and n.outputs[0].dtype == "bfloat16"]
    assert bf16_nodes
    values = [run.node_series(n.id).values for n in bf16_nodes if n.kind is ga.NodeKind.OP]
    assert values and all(v and all(math.isfinite(x) and x > 0 for x in v) for v in values if v)
