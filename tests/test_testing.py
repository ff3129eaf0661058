"""The assertion helpers of graphviz_autograd.testing."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.errors import (DiagnoseInputError, FormatError, GoldenGraphError,
                                      GradientFlowError)
from graphviz_autograd.testing import (GradientTracker, assert_finite_gradients,
                                       assert_gradients_flow, assert_graph_matches,
                                       assert_no_vanishing_gradients, graph_diff)

try:
    from tests import zoo
except ImportError:
    import zoo


def loss_of(case):
    return lambda: F.cross_entropy(case.model(case.inputs), case.target) \
        if case.target is not None and not case.target.is_floating_point() \
        else F.mse_loss(case.model(case.inputs), case.target)


# -- assert_gradients_flow ---------------------------------------------------------------
def test_flow_passes_on_a_healthy_model_and_returns_the_diagnosis():
    case = zoo.make_lenet()
    d = assert_gradients_flow(case.model, loss_of(case))
    assert d.ok and d.loss is not None


def test_flow_failure_names_parameters_and_the_line_that_cuts_them():
    case = zoo.make_detached_residual()
    with pytest.raises(GradientFlowError) as info:
        assert_gradients_flow(case.model, loss_of(case))
    text = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert text.startswith("gradients do not reach 6 of 10 trainable parameters of DetachedResNet")
    assert "`block.conv1.weight`" in text and zoo.line_of("residual-detach") in text
    assert info.value.diagnosis is not None and info.value.artifacts == ()


def test_flow_works_before_and_after_backward_without_touching_grad():
    case = zoo.make_argmax()
    loss = F.cross_entropy(case.model(case.inputs), case.target)
    with pytest.raises(GradientFlowError, match="router.weight"):
        assert_gradients_flow(case.model, loss)
    assert all(p.grad is None for p in case.model.parameters())
    loss.backward()                                   # still possible: graph retained
    with pytest.raises(GradientFlowError, match="router.weight"):
        assert_gradients_flow(case.model, loss)       # reads .grad now


def test_flow_ignore_patterns_and_inputs_form():
    case = zoo.make_branch_not_taken()
    d = assert_gradients_flow(case.model, inputs=case.inputs, target=case.target,
                              ignore=["refine.*"])
    assert len(d.findings) == 1                       # still reported in the diagnosis
    with pytest.raises(GradientFlowError, match="`refine` never ran"):
        assert_gradients_flow(case.model, inputs=case.inputs, target=case.target,
                              ignore=["refine.0.*"])
    with pytest.raises(DiagnoseInputError, match="lambda"):
        assert_gradients_flow(case.model)


def test_flow_fails_on_a_shape_error_with_the_explanation():
    case = zoo.make_seed_lenet()
    with pytest.raises(GradientFlowError, match=r"256 = 16\*4\*4"):
        assert_gradients_flow(case.model, inputs=case.inputs)


def test_failure_writes_artifacts_and_names_them(tmp_path):
    case = zoo.make_data_use()
    with pytest.raises(GradientFlowError) as info:
        assert_gradients_flow(case.model, loss_of(case), artifacts=tmp_path)
    svg, js = info.value.artifacts[:2]
    assert svg.endswith(".svg") and js.endswith(".json")
    assert svg in str(info.value) and js in str(info.value)
    assert "param:2.weight" in open(svg, encoding="utf-8").read()
    assert any(n["id"] == "param:2.weight" for n in json.load(open(js))["nodes"])


def test_flow_fails_on_100_percent_dead_relus_naming_the_starved_parameters():
    case = zoo.make_dead_relu()
    d = ga.diagnose(case.model, inputs=case.inputs, target=case.target)
    assert [f.kind.value for f in d.errors] == ["dead_units"]          # what diagnose reports
    with pytest.raises(GradientFlowError) as info:
        assert_gradients_flow(case.model, inputs=case.inputs, target=case.target)
    text = " ".join(str(info.value).split())
    assert text.startswith("gradients do not reach 3 of 4 trainable parameters of DeadMLP")
    assert "[error] dead_units" in text and zoo.line_of("dead-relu") in text
    assert "`fc1.weight`, `fc1.bias`, `fc2.weight` get an exactly zero gradient" in text
    assert_gradients_flow(case.model, inputs=case.inputs, target=case.target, ignore=["fc*"])


ALL_CASES = [name for name in dir(zoo) if name.startswith("make_")]
KINDS = {assert_gradients_flow: {"unused_parameter", "zero_gradient", "dead_units", "batch_mixing",
                                 "shape_error", "inplace_error"},
         assert_finite_gradients: {"nonfinite_forward", "nonfinite_gradient", "nonfinite_loss",
                                   "shape_error", "inplace_error"},
         assert_no_vanishing_gradients: {"vanishing", "shape_error", "inplace_error"}}


@pytest.mark.parametrize("make", ALL_CASES)
def test_doctor_diagnose_and_assertions_agree(make):
    from graphviz_autograd.cli.report import exit_code, run_doctor
    from rich.console import Console
    import io

    case = getattr(zoo, make)()
    kw = dict(inputs=case.inputs, target=case.target, loss_fn=case.loss_fn)
    d = ga.diagnose(case.model, **kw)
    doctor = run_doctor(case.model, case.inputs, target=case.target, loss_fn=case.loss_fn,
                        console=Console(file=io.StringIO()))
    assert exit_code(doctor) == (0 if d.ok else 1)
    assert [(f.kind, f.severity) for f in doctor.findings] == [(f.kind, f.severity) for f in d.findings]
    errors = {f.kind.value for f in d.errors}
    for check, kinds in KINDS.items():
        expected = errors & kinds
        if expected:
            with pytest.raises(GradientFlowError) as info:
                check(case.model, **kw)
            for kind in expected:                      # each failure names its findings
                assert f"[error] {kind}:" in str(info.value)
            assert "[warning]" not in str(info.value) and "[info]" not in str(info.value)
        else:
            check(case.model, **kw)


# -- finite / vanishing --------------------------------------------------------------------
def test_finite_names_the_backward_node_and_the_forward_op():
    case = zoo.make_sqrt_zero()
    with pytest.raises(GradientFlowError) as info:
        assert_finite_gradients(case.model, loss_of(case))
    assert "SqrtBackward0" in str(info.value) and zoo.line_of("sqrt") in str(info.value)
    case = zoo.make_log_relu()
    with pytest.raises(GradientFlowError, match="`log`"):
        assert_finite_gradients(case.model, inputs=case.inputs, target=case.target)
    ok = zoo.make_lenet()
    assert assert_finite_gradients(ok.model, loss_of(ok)).ok


def test_no_vanishing():
    case = zoo.make_sigmoid_stack(20)
    with pytest.raises(GradientFlowError, match="orders of magnitude"):
        assert_no_vanishing_gradients(case.model, loss_of(case))
    short = zoo.make_sigmoid_stack(2)
    assert_no_vanishing_gradients(short.model, loss_of(short))
    with pytest.raises(GradientFlowError, match="vanishing"):      # a stricter threshold
        assert_no_vanishing_gradients(short.model, loss_of(short), min_ratio=10.0)


# -- golden graphs ------------------------------------------------------------------------
def small_graph(width: int = 3):
    net = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 1))
    with ga.instrument(net):
        out = net(torch.ones(1, 2)).sum()
    return ga.trace(out, model=net)


def test_golden_roundtrip_and_readable_diff(tmp_path, monkeypatch):
    monkeypatch.delenv("GVA_UPDATE_GOLDEN", raising=False)
    path = tmp_path / "g" / "net.json"
    with pytest.raises(GoldenGraphError, match="--gva-update-golden"):
        assert_graph_matches(small_graph(), path)
    assert_graph_matches(small_graph(), path, update=True)
    assert '"source"' not in path.read_text()           # source lines left out by default
    assert_graph_matches(small_graph(), path)
    with pytest.raises(GoldenGraphError) as info:
        assert_graph_matches(small_graph(width=4), path)
    assert "outputs ['(1, 3)'] -> ['(1, 4)']" in str(info.value)
    monkeypatch.setenv("GVA_UPDATE_GOLDEN", "1")
    assert_graph_matches(small_graph(width=4), path)     # the env var updates
    monkeypatch.delenv("GVA_UPDATE_GOLDEN")
    assert_graph_matches(small_graph(width=4), path)


def test_golden_dot_and_bad_suffix(tmp_path):
    path = tmp_path / "net.dot"
    assert_graph_matches(small_graph(), path, update=True)
    assert_graph_matches(small_graph(), path, update=False)
    with pytest.raises(GoldenGraphError, match=r"^graph differs"):
        assert_graph_matches(small_graph(width=5), path, update=False)
    with pytest.raises(FormatError, match=".json, .dot or .gv"):
        assert_graph_matches(small_graph(), tmp_path / "net.txt")


def test_graph_diff_lists_nodes_and_edges():
    old = small_graph()
    sub = old.subgraph([n.id for n in old.nodes if "ReluBackward0" not in n.id])
    lines = graph_diff(old, sub)
    assert any(line.startswith("- node ReluBackward0:0") or "ReluBackward0" in line
               for line in lines)
    assert any(line.startswith("- edge") for line in lines)


# -- GradientTracker -------------------------------------------------------------------------
def test_tracker_records_and_reports_missing():
    case = zoo.make_branch_not_taken()
    with GradientTracker(case.model) as tracker:
        F.cross_entropy(case.model(case.inputs), case.target).backward()
    assert set(tracker.missing()) == {"refine.0.weight", "refine.0.bias", "refine.2.weight",
                                      "refine.2.bias"}
    assert tracker.last()["head.weight"] > 0 and tracker.nonfinite() == []
    assert not case.model.head.weight._backward_hooks           # removed on exit
    with pytest.raises(GradientFlowError, match="refine.0.weight"):
        tracker.assert_all_received()


def test_tracker_counts_all_zero_gradients_as_none():
    case = zoo.make_dead_relu()
    with GradientTracker(case.model) as tracker:
        for _ in range(2):
            F.cross_entropy(case.model(case.inputs), case.target).backward()
    assert tracker.missing() == [] and tracker.zero() == ["fc1.weight", "fc1.bias", "fc2.weight"]
    with pytest.raises(GradientFlowError) as info:
        tracker.assert_all_received()
    text = str(info.value)
    assert text.startswith("3 of 4 trainable parameters of DeadMLP while tracked: only got "
                           "gradients that are exactly zero everywhere: fc1.weight, fc1.bias, fc2.weight")
