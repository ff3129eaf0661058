"""Batch mixing: a view/reshape/flatten whose -1 absorbed part of the batch, on the seed's
LeNet exactly as printed (x.view(-1, 16*5*5) on 28x28 input) at every batch size, and no
false alarm on reshapes that keep examples apart."""
from __future__ import annotations

import inspect
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner
from rich.console import Console

import graphviz_autograd as ga
from graphviz_autograd.cli import main
from graphviz_autograd.cli.report import run_doctor
from graphviz_autograd.errors import GradientFlowError
from graphviz_autograd.examples import models
from graphviz_autograd.examples.models import SeedLeNet5
from graphviz_autograd.testing import assert_gradients_flow


def _view_line() -> str:
    lines, start = inspect.getsourcelines(SeedLeNet5.forward)
    (i,) = [i for i, line in enumerate(lines) if "x.view(-1, 16 * 5 * 5)" in line]
    return f"models.py:{start + i}"


def _batch(n: int):
    torch.manual_seed(n)
    return torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("n, rows", [(25, 16), (50, 32), (100, 64), (200, 128)])
@pytest.mark.parametrize("with_target", [False, True])
def test_seed_lenet_mixing_is_reported_at_batch_sizes_where_view_does_not_fail(n, rows, with_target):
    x, y = _batch(n)
    d = ga.diagnose(SeedLeNet5(), inputs=x, target=y if with_target else None)
    assert not d.ok
    mix = d.by_kind("batch_mixing")[0]
    assert d.findings[0] is mix                          # the cause comes first
    assert mix.severity.value == "error" and mix.op == "view" and mix.source == _view_line()
    assert f"({n}, 16, 4, 4) -> ({rows}, 400)" in mix.title
    assert f"{n} examples became {rows} mixed rows" in mix.message
    assert "x.flatten(1)" in mix.hint and "x.view(x.size(0), -1)" in mix.hint
    assert "`fc1` = nn.Linear(400, 120) needs in_features=256: nn.Linear(256, 120)" in mix.hint
    assert mix.nodes and d.graph.node(mix.nodes[0]).op == "ViewBackward0"
    if with_target:                                      # then the loss fails on 64 vs 100 rows
        shape = d.by_kind("shape_error")[0]
        assert f"batch_size ({rows}) to match target batch_size ({n})" in shape.message
        assert f"turned the batch of {n} examples into {rows} rows" in shape.message
        assert ".." not in shape.message                 # PyTorch's period is not doubled
    else:
        assert d.loss is not None and len(d.findings) == 1


def test_seed_lenet_at_batch_64_is_the_view_error_with_the_same_fix():
    x, y = _batch(64)
    d = ga.diagnose(SeedLeNet5(), inputs=x, target=y)
    (f,) = d.findings
    assert f.kind.value == "shape_error" and f.op == "view" and f.source == _view_line()
    assert "(64, 16, 4, 4)" in f.message and "256 = 16*4*4" in f.message and "400 = 16*5*5" in f.message
    assert "x.flatten(1)" in f.hint and "nn.Linear(256, 120)" in f.hint
    assert "16384." in f.message and "16384.." not in f.message


def test_doctor_command_reports_the_mixing_at_batch_100():
    spec = "graphviz_autograd.examples.models:SeedLeNet5"
    result = CliRunner().invoke(main, ["doctor", spec, "--input-shape", "100,1,28,28", "--classes", "10"])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.replace("│", " ").split())
    assert "error batch_mixing" in out and "(100, 16, 4, 4) -> (64, 400)" in out
    assert _view_line() in out and "nn.Linear(256, 120)" in out
    assert "2 errors, 0 warnings" in out and "healthy" not in out


def test_assert_gradients_flow_fails_on_batch_mixing():
    x, _ = _batch(100)
    with pytest.raises(GradientFlowError) as info:
        assert_gradients_flow(SeedLeNet5(), inputs=x)
    assert "[error] batch_mixing: `view` at " + _view_line() in str(info.value)


def test_mixing_without_inputs_guesses_the_batch_from_the_forward():
    x, _ = _batch(100)
    net = SeedLeNet5()
    d = ga.diagnose(net, lambda: net(x).sum())
    assert d.by_kind("batch_mixing")[0].value("batch") == 100


# -- no false alarm ---------------------------------------------------------------------------
class TokenModel(nn.Module):
    """Language-model style: (B, T, V) logits flattened to (B*T, V) for the loss."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(50, 16), nn.Linear(16, 50)

    def forward(self, tokens):
        logits = self.out(self.emb(tokens))
        return F.cross_entropy(logits.view(-1, 50), tokens.reshape(-1))


class ChannelsApart(nn.Module):
    """Per-channel processing: (N, C, H, W) -> (N*C, H*W) and back."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(64, 64)

    def forward(self, x):
        h = self.conv(x)
        n, c = h.shape[:2]
        h = self.fc(h.reshape(n * c, -1)).view(n, c, 8, 8)
        return h.flatten(1).sum(1)


@pytest.mark.parametrize("make, inputs", [
    (lambda: models.LeNet5(), lambda: torch.randn(100, 1, 28, 28)),
    (lambda: TokenModel(), lambda: torch.randint(0, 50, (6, 7))),
    (lambda: ChannelsApart(), lambda: torch.randn(5, 1, 8, 8)),
    (lambda: nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                            dim_feedforward=32, batch_first=True),
     lambda: (torch.randn(3, 5, 16), torch.randn(3, 4, 16))),
    (lambda: nn.Sequential(nn.Linear(8, 4)), lambda: torch.randn(8)),     # no batch dimension
])
def test_reshapes_that_keep_examples_apart_are_not_reported(make, inputs):
    torch.manual_seed(0)
    model = make()
    d = ga.diagnose(model, inputs=inputs(), loss_fn=(lambda out: out.sum()) if
                    not isinstance(model, TokenModel) else (lambda out: out))
    assert not d.by_kind("batch_mixing"), str(d)


def test_doctor_report_of_the_seed_lenet_reads_well():
    x, y = _batch(25)
    c = Console(file=io.StringIO(), width=100, color_system=None)
    run_doctor(SeedLeNet5(), x, target=y, console=c)
    out = " ".join(c.file.getvalue().replace("│", " ").split())
    assert "SeedLeNet5: broken (forward failed; 26 graph nodes; 2 errors, 0 warnings)" in out
    assert "25 examples became 16 mixed rows" in out
