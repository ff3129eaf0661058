"""The doctor: report, SVG, model specs and input shapes."""
from __future__ import annotations

import io
import textwrap

import pytest
import torch
from rich.console import Console

from graphviz_autograd.cli.modelspec import load_model_spec, make_inputs, parse_shape
from graphviz_autograd.cli.report import exit_code, run_doctor
from graphviz_autograd.errors import FormatError, ModelSpecError

try:
    from tests import zoo
except ImportError:
    import zoo


def console() -> Console:
    return Console(file=io.StringIO(), width=120, color_system=None)


def text_of(c: Console) -> str:
    return c.file.getvalue()


def test_healthy_model_report():
    case = zoo.make_lenet()
    c = console()
    d = run_doctor(case.model, case.inputs, target=case.target, console=c)
    out = text_of(c)
    assert d.ok and exit_code(d) == 0
    assert "LeNet5: healthy" in out and "No problems found" in out
    assert "gradient norm per layer" in out and "fc3" in out


def test_report_counts_read_like_english():
    case = zoo.make_dead_relu()
    c = console()
    run_doctor(case.model, case.inputs, target=case.target, console=c)
    out = " ".join(text_of(c).split())
    assert "1 error, 0 warnings" in out and "12 graph nodes" in out and "(s)" not in out


def test_broken_model_report_and_highlighted_svg(tmp_path):
    case = zoo.make_seed_lenet()
    c = console()
    svg = tmp_path / "lenet.svg"
    d = run_doctor(case.model, case.inputs, svg=str(svg), console=c)
    out = " ".join(text_of(c).split())
    assert exit_code(d) == 1 and "broken" in out
    assert "256 = 16*4*4" in out and "fc1" in out and zoo.line_of("lenet-fc1") in out
    picture = svg.read_text()
    assert "<svg" in picture and "#d62728" in picture and "fc1.weight" in picture


def test_report_lists_every_finding_with_its_check():
    case = zoo.make_dead_relu()
    c = console()
    run_doctor(case.model, case.inputs, target=case.target, console=c)
    out = " ".join(text_of(c).split())
    assert "error dead_units" in out and "check:" in out and "-100" in out


# -- model specs --------------------------------------------------------------------------
def test_spec_from_package_and_from_file(tmp_path, monkeypatch):
    assert isinstance(load_model_spec("torch.nn:Identity"), torch.nn.Identity)
    (tmp_path / "helpers.py").write_text("WIDTH = 3\n")
    (tmp_path / "mynet.py").write_text(textwrap.dedent("""
        import torch
        from helpers import WIDTH

        class Net(torch.nn.Linear):
            def __init__(self):
                super().__init__(WIDTH, 1)

        def make():
            return Net()

        NOT_A_MODEL = 3
    """))
    assert load_model_spec(f"{tmp_path}/mynet.py:Net").in_features == 3
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_model_spec("mynet.py:make"), torch.nn.Linear)
    with pytest.raises(ModelSpecError, match="NOT_A_MODEL.*not a class or function"):
        load_model_spec("mynet.py:NOT_A_MODEL")
    with pytest.raises(ModelSpecError) as info:
        load_model_spec("mynet.py:Nett")
    assert str(info.value).endswith("it defines: Net, make")     # no torch, WIDTH, annotations


def test_it_defines_lists_models_first_without_import_noise():
    with pytest.raises(ModelSpecError) as info:
        load_model_spec("graphviz_autograd.examples.models:Lenet")
    listed = str(info.value).split("it defines: ")[1].split(", ")
    assert "LeNet5" in listed and "SeedLeNet5" in listed and "Net" in listed
    assert not {"F", "annotations", "nn", "torch"} & set(listed)


@pytest.mark.parametrize("spec, message", [
    ("torchvision.models", "package.module:callable"),
    ("no_such_pkg_xyz:Net", r"cannot import 'no_such_pkg_xyz'.*PYTHONPATH"),
    ("torch.nn:NoSuchNet", r"has no attribute 'NoSuchNet'.*it defines"),
    ("torch.nn:Linear", r"no arguments failed.*def make_model"),
    ("missing/dir/net.py:Net", r"does not exist"),
    ("torch.nn:1bad", r"not a Python name"),
])
def test_bad_specs_name_the_spec_and_the_fix(spec, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        load_model_spec(spec)
    assert repr(spec) in str(info.value)


def test_spec_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "broken_net.py"
    bad.write_text("import torch\nclass Net(torch.nn.Module):\n    def __init__(self)\n")
    with pytest.raises(ModelSpecError, match="SyntaxError"):
        load_model_spec(f"{bad}:Net")
    returns = tmp_path / "returns.py"
    returns.write_text("def make():\n    return 42\n")
    with pytest.raises(ModelSpecError, match="returned int, not an nn.Module"):
        load_model_spec(f"{returns}:make")


# -- shapes and inputs ----------------------------------------------------------------------
@pytest.mark.parametrize("text, shape", [
    ("1,3,224,224", (1, 3, 224, 224)), ("2 3 32 32", (2, 3, 32, 32)),
    (" (4, 10) ", (4, 10)), ("[8]", (8,)), ("1, 3,  28 ,28", (1, 3, 28, 28)),
])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text, message", [
    ("", "is empty"), ("1,a,3", "'a' is not a positive integer"),
    ("1,0,3", "'0' is not a positive integer"), ("1,-3", "'-3' is not a positive integer"),
    ("1.5,2", "'1.5' is not a positive integer"),
    ("28x28", r"batch first.*for 28x28 images write 1,1,28,28 \(one grey image\) or 1,3,28,28"),
    ("2x3x32x32", r"expected the whole input shape.*write 2,3,32,32"),
    ("28×28", r"1,1,28,28"),
])
def test_parse_shape_errors(text, message):
    with pytest.raises(FormatError, match=message):
        parse_shape(text)


def test_make_inputs_is_deterministic():
    a, b = make_inputs([(2, 3), (4,)])
    assert a.shape == (2, 3) and b.shape == (4,)
    assert torch.equal(make_inputs([(2, 3)]), a)


def test_doctor_on_zero_init_residual_is_healthy_with_a_note():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(zero_init_residual=True, num_classes=10)
    c = console()
    d = run_doctor(model, torch.randn(2, 3, 32, 32), console=c)
    out = " ".join(text_of(c).split())
    assert exit_code(d) == 0 and "ResNet: healthy" in out and "0 errors, 0 warnings, 1 note" in out
    assert "info vanishing" in out and "No problems found; the notes above are context." in out
