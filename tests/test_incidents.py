"""Incidents in real training runs where the breaking step is not a recorded one: a NaN from an
op whose input turns invalid, a loss spike, exploding gradients, a healthy run (no false alarm),
``on_incident="raise"``, and a kill during the detailed capture."""
from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.errors import IncidentError

HERE = os.path.dirname(os.path.abspath(__file__))


class SqrtNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 1)

    def forward(self, x, shift: float):
        h = self.fc1(x)
        h = torch.sqrt(h.abs() - shift)         # invalid once shift > |h|
        return self.fc2(h)


SQRT_LINE = f"test_incidents.py:{inspect.getsourcelines(SqrtNet.forward)[1] + 2}"


def _train_sqrt(run_dir, *, scaler: bool, steps: int = 45, bad_from: int = 37, **options):
    torch.manual_seed(0)
    model = SqrtNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    amp = torch.amp.GradScaler("cpu") if scaler else None
    with ga.Recorder(model, run_dir, optimizer=opt, every=10, scaler=amp, **options) as rec:
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
            opt.zero_grad()
            loss = F.mse_loss(model(x, 100.0 if step >= bad_from else 0.0), y)
            if amp is not None:         # mixed precision: a step with NaN gradients is skipped
                amp.scale(loss).backward()
                amp.step(opt)
                amp.update()
            else:
                loss.backward()
                opt.step()
            rec.log(step, loss=loss)
    return ga.open_run(run_dir)


def test_a_nan_from_an_invalid_input_names_the_op_and_its_line(tmp_path):
    run = _train_sqrt(tmp_path, scaler=True)
    [incident] = run.incidents()
    assert incident.step == 37 and incident.kind == "nonfinite"          # not a multiple of every=10
    assert incident.detail_steps == (38, 39)
    assert "loss = nan at step 37" in incident.summary
    assert "`sqrt`" in incident.summary and SQRT_LINE in incident.summary, incident.summary
    assert "negative" in incident.summary                               # the operand statistics
    assert incident.origin["op"] == "sqrt" and incident.origin["source"] == SQRT_LINE
    graph = run.graph_at(38)
    assert incident.nodes and all(n in graph for n in incident.nodes)
    assert graph.node(incident.nodes[0]).op == "SqrtBackward0"
    recorded = run.param_series("fc1.weight", "grad_nan").steps
    assert recorded == [0, 10, 20, 30, 37, 38, 39, 40]                 # 37-39 off the every=10 cadence
    node_steps = run.node_series(incident.nodes[0], "grad_norm").steps
    assert {38, 39} <= set(node_steps) and 37 not in node_steps          # nodes: the detail steps


def test_without_a_skipped_step_the_incident_says_the_parameters_were_corrupted(tmp_path):
    run = _train_sqrt(tmp_path, scaler=False)
    [incident] = run.incidents()
    assert incident.step == 37 and incident.kind == "nonfinite"
    assert "parameters turned non-finite in the update" in incident.summary, incident.summary


def test_a_loss_spike_from_a_scaled_batch_is_an_incident(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, tmp_path, optimizer=opt, every=25) as rec:
        for step in range(80):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(32, 8, generator=g)
            y = x[:, :1] * 2 + 0.1 * torch.randn(32, 1, generator=g)
            if step == 61:
                x, y = x * 8, y * 8               # one corrupted batch
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    incidents = ga.open_run(tmp_path).incidents()
    assert [i.step for i in incidents] == [61] and incidents[0].kind == "spike"
    assert "is a spike" in incidents[0].summary and incidents[0].values["median"] > 0


def test_exploding_gradients_from_a_too_high_learning_rate(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, tmp_path, optimizer=opt, every=2) as rec:
        for step in range(40):
            if step == 29:                     # the next step, a recorded one, explodes
                opt.param_groups[0]["lr"] = 20.0
            g = torch.Generator().manual_seed(step)
            x = torch.randn(32, 8, generator=g)
            opt.zero_grad()
            loss = F.mse_loss(model(x), x[:, :1] * 3)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    incidents = ga.open_run(tmp_path).incidents()
    assert torch.overrides._get_current_function_mode_stack() == []     # no watch left behind
    assert incidents and incidents[0].step >= 30
    assert any(i.kind == "explosion" for i in incidents), [(i.step, i.kind, i.summary) for i in incidents]
    boom = next(i for i in incidents if i.kind == "explosion")
    assert "x the recent median" in boom.summary


def test_a_healthy_noisy_small_batch_run_has_no_incident(tmp_path):
    from graphviz_autograd.examples.models import LeNet5

    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with ga.Recorder(model, tmp_path, optimizer=opt) as rec:
        for step in range(300):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    assert ga.open_run(tmp_path).incidents() == []


def test_raise_stops_training_with_the_summary_and_leaves_a_complete_store(tmp_path):
    with pytest.raises(IncidentError) as info:
        _train_sqrt(tmp_path, scaler=True, on_incident="raise")
    assert "training stopped at step 37 (nonfinite)" in str(info.value)
    assert "`sqrt`" in str(info.value) and SQRT_LINE in str(info.value)
    run = ga.open_run(tmp_path)
    assert run.steps() == list(range(40))                # every step up to the last detail step
    assert [i.step for i in run.incidents()] == [37]


def test_the_incidents_command_prints_them(tmp_path):
    from click.testing import CliRunner

    from graphviz_autograd.cli import main

    _train_sqrt(tmp_path / "run", scaler=True)
    result = CliRunner().invoke(main, ["incidents", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "step 37: nonfinite"
    assert "`sqrt`" in lines[1] and SQRT_LINE in lines[1]
    assert lines[2] == "  detail steps: 38, 39" and lines[3].startswith("  nodes: ")
    healthy = CliRunner().invoke(main, ["incidents", str(tmp_path / "run"), "--rank", "0"])
    assert healthy.exit_code == 1
    _train_sqrt(tmp_path / "ok", scaler=True, steps=10)
    quiet = CliRunner().invoke(main, ["incidents", str(tmp_path / "ok")])
    assert quiet.exit_code == 0 and quiet.output.startswith("no incidents in ")


def test_a_callable_gets_each_finished_incident(tmp_path):
    seen = []
    _train_sqrt(tmp_path, scaler=True, on_incident=seen.append)
    assert [(i.step, i.kind, i.detail_steps) for i in seen] == [(37, "nonfinite", (38, 39))]


KILLED = """
import os, signal, sys, torch, torch.nn.functional as F
sys.path.insert(0, {here!r})
import graphviz_autograd as ga
from test_incidents import SqrtNet

model = SqrtNet()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
amp = torch.amp.GradScaler("cpu")
rec = ga.Recorder(model, sys.argv[1], optimizer=opt, every=10, scaler=amp, flush_interval=0)
for step in range(45):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    opt.zero_grad()
    loss = F.mse_loss(model(x, 100.0 if step >= 37 else 0.0), y)
    if step == 38:                      # inside the first detailed capture, before its log()
        os.kill(os.getpid(), signal.SIGKILL)
    amp.scale(loss).backward()
    amp.step(opt)
    amp.update()
    rec.log(step, loss=loss)
"""


@pytest.mark.slow
def test_a_kill_during_a_detailed_capture_keeps_the_incident_and_every_flushed_step(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED.format(here=HERE), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == list(range(38))
    [incident] = run.incidents()
    assert incident.step == 37 and incident.kind == "nonfinite" and incident.detail_steps == ()


MNIST = os.environ.get("GVA_MNIST_DIR") or os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                        "shared", "data", "MNIST")


def test_a_healthy_lenet_epoch_on_real_mnist_has_no_incident(tmp_path):
    from graphviz_autograd.examples.data import find_idx_files, load_mnist
    from graphviz_autograd.examples.models import LeNet5

    if not find_idx_files(MNIST):
        pytest.skip(f"no MNIST IDX files in {MNIST} (set GVA_MNIST_DIR)")
    data = load_mnist(MNIST)
    assert "test split" in data.source
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    with ga.Recorder(model, tmp_path, optimizer=opt) as rec:
        for step, (x, y) in enumerate(loader):          # one full epoch: 125 steps
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    run = ga.open_run(tmp_path)
    assert len(run.steps()) == 125 and run.loss().values[-1] < run.loss().values[0]
    assert run.incidents() == []
