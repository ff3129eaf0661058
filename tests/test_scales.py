"""Residual branches that start at zero by design (zero_init_residual, layer scale) are not
vanishing gradients; a deep sigmoid stack still is; an all-zero gradient without such a
reason is an error (and fails assert_gradients_flow)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import graphviz_autograd as ga
from graphviz_autograd.diagnosis.recorded import run_findings
from graphviz_autograd.errors import GradientFlowError
from graphviz_autograd.testing import assert_gradients_flow, assert_no_vanishing_gradients

try:
    from tests import zoo
except ImportError:
    import zoo


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block: depthwise 7x7, LayerNorm, MLP, layer scale (1e-6), skip connection."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.fc2(F.gelu(self.fc1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _resnet(zero_init: bool):
    torch.manual_seed(0)
    return torchvision.models.resnet18(zero_init_residual=zero_init, num_classes=10)


def _images(n: int = 4, size: int = 32):
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size), torch.randint(0, 10, (n,))


def _train(model, steps: int, lr: float):
    x, y = _images(4)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


MODELS = {
    "resnet18": lambda: _resnet(False),
    "resnet18 zero_init_residual": lambda: _resnet(True),
    "convnext-style layer scale 1e-6": lambda: (torch.manual_seed(0), TinyConvNeXt())[1],
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("steps", [0, 2])
def test_standard_residual_networks_get_no_false_error(name, steps):
    model = MODELS[name]()
    if steps:
        _train(model, steps, lr=0.05)
    x, y = _images()
    d = ga.diagnose(model, inputs=x, target=y)
    assert d.ok and not d.warnings, str(d)
    assert not any("sigmoid" in f.hint.lower() for f in d.findings)


def test_assertions_agree_with_the_report_on_zero_init_residual():
    model, (x, y) = _resnet(True), _images()
    for check in (assert_gradients_flow, assert_no_vanishing_gradients):
        assert check(model, inputs=x, target=y).ok


def test_zero_init_residual_is_an_info_note_naming_the_scales():
    x, y = _images()
    d = ga.diagnose(_resnet(True), inputs=x, target=y)
    (note,) = d.findings
    assert note.severity.value == "info" and note.kind.value == "vanishing"
    assert "24 layers in residual branches" in note.title and "by design" in note.title
    assert "`layer1.0.bn2.weight` (max |value| 0" in note.message
    assert note.message.startswith("`layer1.0.conv1`, `layer1.0.bn1`, `layer1.0.conv2`")
    assert "layer1.0.conv1.weight" in note.params and "layer1.0.bn2.weight" not in note.params
    assert "Diagnosis: 0 errors, 0 warnings, 1 note" in str(d)


def test_layer_scale_note_names_gamma():
    torch.manual_seed(0)
    x, y = _images()
    d = ga.diagnose(TinyConvNeXt(), inputs=x, target=y)
    (note,) = d.findings
    assert note.severity.value == "info" and "`blocks.0.gamma` (max |value| 1e-06" in note.message


@pytest.mark.slow
def test_timm_networks_get_no_false_error():
    timm = pytest.importorskip("timm")
    x, y = _images(2)
    for name, kw, trained in (("convnext_atto", {}, (0, 2)),                # layer scale 1e-6
                              ("resnet18", {}, (0,)),                       # zero_init_last
                              ("vit_tiny_patch16_224", {"img_size": 32, "init_values": 1e-6}, (0,))):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, **kw)
        for steps in trained:
            if steps:
                _train(model, steps, lr=0.05 if name == "resnet18" else 0.005)
            d = ga.diagnose(model, inputs=x, target=y)
            assert d.ok and not d.warnings, f"{name} after {steps} steps:\n{d}"
            assert {f.severity.value for f in d.findings} <= {"info"}


class TinyViT(nn.Module):
    """A ViT with layer scale: the class token sees the patches only through the gated
    attention branches, so the patch embedding's gradient is ``layer_scale`` times smaller at
    the start (the graph cannot show it: x[:, 0] is a path around the gates)."""

    def __init__(self, dim: int = 32, depth: int = 2, classes: int = 10, layer_scale: float = 1e-8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, 2, batch_first=True) for _ in range(depth))
        self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.ls = nn.ParameterList(nn.Parameter(layer_scale * torch.ones(dim)) for _ in range(depth))
        self.bn = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        for attn, norm, ls in zip(self.attn, self.norm, self.ls):
            h = norm(x)
            x = x + ls * attn(h, h, h, need_weights=False)[0]
        return self.head(F.dropout(self.bn(x[:, 0]), 0.1))


def test_layer_scale_seen_only_through_the_class_token_is_explained_by_a_second_pass():
    torch.manual_seed(0)
    model, (x, y) = TinyViT(), _images()
    before = {n: (p.detach().clone(), p._version) for n, p in model.named_parameters()}
    start = torch.get_rng_state()
    d = ga.diagnose(model, inputs=x, target=y)
    after = torch.get_rng_state()
    assert d.ok and not d.warnings, str(d)
    (note,) = [f for f in d.findings if "set to 1" in f.message]
    assert note.severity.value == "info" and "`ls.0` (max |value| 1e-08)" in note.message
    assert "back to `patch`" in note.title            # the layer that looked vanishing
    for n, p in model.named_parameters():             # the second pass left no trace
        assert torch.equal(p, before[n][0]) and p._version == before[n][1], n
    assert int(model.bn.num_batches_tracked) == 1     # one forward's statistics, not two
    assert all(p.grad is None for p in model.parameters())
    torch.set_rng_state(start)
    model(x)                                          # dropout draws as in one forward
    assert torch.equal(after, torch.get_rng_state())


def test_deep_sigmoid_stack_is_still_vanishing():
    case = zoo.make_sigmoid_stack()
    d = ga.diagnose(case.model, inputs=case.inputs, target=case.target)
    (f,) = d.errors
    assert f.kind.value == "vanishing" and "sigmoid" in f.hint
    with pytest.raises(GradientFlowError, match=r"\[error\] vanishing"):
        assert_no_vanishing_gradients(case.model, inputs=case.inputs, target=case.target)


def test_vanishing_without_sigmoid_gives_no_sigmoid_advice():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(16, 4))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.05)          # far below 1/sqrt(16): shrinks each layer
    d = ga.diagnose(model, inputs=torch.randn(8, 16), target=torch.randint(0, 4, (8,)))
    (f,) = d.by_kind("vanishing")
    assert f.severity.value == "error"
    assert "sigmoid" not in f.hint.lower() and "initialisation" in f.hint


class ZeroHead(nn.Module):
    """A zero-initialised classifier: nothing before it gets a gradient at the first step."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(8, 16), nn.Linear(16, 3)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_zero_initialised_head_is_a_warning_not_an_error():
    torch.manual_seed(0)
    d = ga.diagnose(ZeroHead(), inputs=torch.randn(8, 8), target=torch.randint(0, 3, (8,)))
    (f,) = d.findings
    assert f.severity.value == "warning" and f.kind.value == "zero_gradient"
    assert set(f.params) == {"body.weight", "body.bias"} and "`head.weight`" in f.title


class Masked(nn.Module):
    """A branch multiplied by an all-zero mask (a buffer): its weights get exactly zero."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)
        self.register_buffer("mask", torch.zeros(4))

    def forward(self, x):
        return self.a(x) + self.b(x) * self.mask


def test_unexplained_zero_gradient_is_an_error_in_every_front_end():
    torch.manual_seed(0)
    model, x = Masked(), torch.randn(8, 8)
    d = ga.diagnose(model, inputs=x)
    (f,) = d.errors
    assert f.kind.value == "zero_gradient" and set(f.params) == {"b.weight", "b.bias"}
    assert "exactly 0 for every element" in f.message and not d.by_kind("vanishing")
    with pytest.raises(GradientFlowError, match=r"(?s)gradients do not reach 2 of 4 .*\[error\] zero_gradient"):
        assert_gradients_flow(model, inputs=x)
    assert_gradients_flow(model, inputs=x, ignore=["b.*"]).errors


def test_recorded_zero_init_resnet_has_no_vanishing_error(tmp_path):
    model = _resnet(True)
    x, y = _images(4, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1, record=("params",)) as rec:
        for step in range(2):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    with ga.open_run(tmp_path / "run") as run:
        assert run.param_series("layer1.0.conv1.weight").values[0] == 0.0      # really zero
        for step in (0, 1):          # param norms are read after the step: scales just left 0
            assert not [str(f) for f in run_findings(run, step) if f.severity.value != "info"]


def test_recorded_zero_gradient_without_reason_is_an_error(tmp_path):
    torch.manual_seed(0)
    model, x = Masked(), torch.randn(8, 8)
    with ga.Recorder(model, tmp_path / "run", every=1) as rec:
        loss = model(x).pow(2).mean()
        loss.backward()
        rec.log(0, loss=loss)
    with ga.open_run(tmp_path / "run") as run:
        (f,) = run_findings(run, 0)
    assert f.kind.value == "zero_gradient" and f.severity.value == "error"
    assert set(f.nodes) == {"param:b.weight", "param:b.bias"}
