"""Findings read back from real recorded runs (what the dashboard marks on the graph)."""
import torch
import torch.nn as nn

import graphviz_autograd as ga
from graphviz_autograd.diagnosis.recorded import run_findings


class Broken(nn.Module):
    def __init__(self, log_of_relu=False, sqrt_of_relu=False):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 1)
        self.aux = nn.Linear(16, 3)          # never used: no gradient
        self.log_of_relu, self.sqrt_of_relu = log_of_relu, sqrt_of_relu
        with torch.no_grad():
            self.fc1.bias.fill_(-100.0)      # every ReLU unit dead

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.log_of_relu:
            h = torch.log(h)                 # log(0) = -inf: the loss is NaN
        if self.sqrt_of_relu:
            h = torch.sqrt(h)                # finite forward, d sqrt(0) = inf in backward
        return self.fc2(h)


def record(tmp_path, model, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        for step in range(steps):
            opt.zero_grad()
            loss = model(torch.randn(4, 8)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    return ga.open_run(tmp_path / "run")


def test_dead_relus_and_unused_parameters_are_found(tmp_path):
    run = record(tmp_path, Broken())
    found = {f.kind: f for f in run_findings(run, 2)}
    assert set(found) >= {"unused_parameter", "dead_units"}
    assert found["unused_parameter"].nodes == ("param:aux.bias", "param:aux.weight")
    assert "100.0%" in found["dead_units"].message and found["dead_units"].nodes[0].startswith("ReluBackward0")


def test_nan_loss_is_found(tmp_path):
    run = record(tmp_path, Broken(log_of_relu=True))
    assert "nonfinite_loss" in {f.kind for f in run_findings(run, 0)}


def test_first_nonfinite_gradient_names_the_op_whose_backward_made_it(tmp_path):
    run = record(tmp_path, Broken(sqrt_of_relu=True))
    kinds = {f.kind for f in run_findings(run, 0)}
    assert "nonfinite_loss" not in kinds
    (first,) = [f for f in run_findings(run, 0) if f.kind == "nonfinite_gradient" and "backward of" in f.message]
    assert first.nodes[0].startswith("ReluBackward0") and "backward of SqrtBackward0" in first.message


def test_healthy_run_has_no_findings(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    run = record(tmp_path, model)
    assert run_findings(run, 2) == []


def test_recorded_severities_follow_diagnose(tmp_path):
    model = Broken()
    x = torch.randn(4, 8)
    live = {f.kind.value: f.severity.value for f in ga.diagnose(model, inputs=x, loss_fn=lambda y: y.pow(2).mean()).findings}
    run = record(tmp_path, model)
    recorded = {f.kind.value: f for f in run_findings(run, 2)}
    assert live["dead_units"] == recorded["dead_units"].severity.value == "error"
    assert live["unused_parameter"] == recorded["unused_parameter"].severity.value == "error"
    dead = recorded["dead_units"]
    assert {"fc1.weight", "fc1.bias", "fc2.weight"} <= set(dead.params)   # what it starves
    assert "param:fc1.weight" in dead.nodes and "no gradient through it" in dead.message
    assert "zero_gradient" not in recorded                                # explained, not repeated
