"""diagnose() on the zoo of broken models: each finding names the right
parameter, module, op and source line; healthy models get no error."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graphviz_autograd.diagnosis import Diagnosis, Severity, diagnose
from graphviz_autograd.live.walk import walk
from graphviz_autograd.tracer import trace_nodes
from graphviz_autograd.errors import DiagnoseInputError
from graphviz_autograd.graph.model import Graph
from graphviz_autograd.tracer import trace

try:
    from tests import zoo
except ImportError:
    import zoo


def run(case, **options) -> Diagnosis:
    return diagnose(case.model, inputs=case.inputs, target=case.target, loss_fn=case.loss_fn,
                    **options)


def only(d: Diagnosis, kind: str):
    found = d.by_kind(kind)
    assert len(found) == 1, str(d)
    return found[0]


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- unused parameters -----------------------------------------------------------------
def test_detach_in_residual_block_names_the_detach_and_the_last_op_with_gradient():
    case = zoo.make_detached_residual()
    d = run(case)
    f = only(d, "unused_parameter")
    assert f.severity is Severity.ERROR and not d.ok
    assert set(f.params) == {f"block.{n}" for n, _ in case.model.block.named_parameters()}
    assert (f.op, f.module, f.source) == ("detach", "block", zoo.line_of("residual-detach"))
    assert "batch_norm" in f.message and "`block.bn2`" in f.message     # last op with gradient
    assert "block.bn2/NativeBatchNormBackward0:0" in f.nodes
    sub = d.subgraph_for(f)
    assert "block.bn2/NativeBatchNormBackward0:0" in sub and "param:block.bn2.weight" in sub
    assert no_hooks_left(case.model)


def test_data_use_names_the_parameter_and_line():
    d = run(zoo.make_data_use())
    f = only(d, "unused_parameter")
    assert f.params == ("2.weight",)
    assert (f.op, f.source) == (".data", zoo.line_of("data-use"))
    assert "`2.weight` has no path" in f.message
    assert "param:2.weight" in f.nodes and "param:2.weight" in d.graph


def test_branch_never_taken_points_at_the_call_site():
    d = run(zoo.make_branch_not_taken())
    f = only(d, "unused_parameter")
    assert f.module == "refine" and len(f.params) == 4
    assert f.title.startswith("`refine` never ran")
    assert f.source == zoo.line_of("branch-call") and zoo.line_of("branch-call") in f.message


def test_argmax_in_the_path():
    d = run(zoo.make_argmax())
    f = only(d, "unused_parameter")
    assert set(f.params) == {"router.weight", "router.bias"}
    assert (f.op, f.source) == ("argmax", zoo.line_of("argmax"))
    assert "int64" in f.message and "router/AddmmBackward0:0" in f.nodes


def test_no_grad_region():
    d = run(zoo.make_no_grad())
    f = only(d, "unused_parameter")
    assert set(f.params) == {"backbone.0.weight", "backbone.0.bias", "backbone.2.weight",
                             "backbone.2.bias"}
    assert f.source == zoo.line_of("no-grad") and f.module == "backbone.0"
    assert "torch.no_grad()" in f.title


def test_discarded_module_output():
    d = run(zoo.make_discarded_head())
    f = only(d, "unused_parameter")
    assert set(f.params) == {"aux_head.weight", "aux_head.bias"} and f.module == "aux_head"
    assert f.title.startswith("output of `aux_head` never reaches the loss")
    assert f.source == zoo.line_of("aux-head") and "aux_head/AddmmBackward0:0" in f.nodes


def test_loss_tensor_only_lists_unused_without_location_and_keeps_grad_untouched():
    case = zoo.make_detached_residual()
    loss = F.cross_entropy(case.model(case.inputs), case.target)
    d = diagnose(case.model, loss)
    f = only(d, "unused_parameter")
    assert len(f.params) == 6 and "inputs=" in f.hint
    assert any("only the loss tensor" in n for n in d.notes)
    assert all(p.grad is None for p in case.model.parameters())
    loss.backward()                                  # the graph is still there
    assert case.model.head.weight.grad is not None
    again = diagnose(case.model, loss)               # backward already ran: reads .grad
    assert only(again, "unused_parameter").params == f.params
    assert any("already run" in n for n in again.notes)


# -- non-finite ------------------------------------------------------------------------
def test_log_of_relu_output_is_the_first_nonfinite_forward_op():
    d = run(zoo.make_log_relu())
    f = only(d, "nonfinite_forward")
    assert (f.op, f.module, f.source) == ("log", "0", zoo.line_of("log-relu"))
    assert "-inf" in f.message and "zeros" in f.message and "`relu`" in f.message
    assert f.nodes == ("0/LogBackward0:0",)
    assert not d.by_kind("nonfinite_gradient")       # the forward explains it


def test_sqrt_of_zero_is_the_first_nonfinite_backward_node():
    d = run(zoo.make_sqrt_zero())
    f = only(d, "nonfinite_gradient")
    assert (f.op, f.source) == ("sqrt", zoo.line_of("sqrt"))
    assert "SqrtBackward0" in f.message and f.params == ("proj.weight",)
    assert f.nodes[0].endswith("SqrtBackward0:0") and f.nodes[0] in d.graph
    assert not d.by_kind("nonfinite_forward")


# -- gradient scale and units ----------------------------------------------------------------
def test_huge_initialisation_explodes():
    d = run(zoo.make_huge_init())
    f = only(d, "exploding")
    assert f.severity is Severity.ERROR and f.value("max_grad_norm") > 1e3
    assert "`0`" in f.message and "initialisation" in f.hint
    assert "x 1/sqrt(fan_in)" in f.message                     # the weight scale is named


def test_sigmoid_stack_reports_one_vanishing_chain():
    d = run(zoo.make_sigmoid_stack(20))
    f = only(d, "vanishing")
    assert f.severity is Severity.ERROR
    assert "21 layers" in f.title and "from `40` back to `0`" in f.title
    assert "orders of magnitude" in f.message and "sigmoid" in f.hint
    assert [s.module for s in d.layers][:2] == ["0", "2"]          # forward order
    assert d.layers[0].grad_norm < 1e-10 < d.layers[-1].grad_norm


def test_dead_relus_name_the_feeding_layer_and_its_bias():
    d = run(zoo.make_dead_relu())
    f = only(d, "dead_units")
    assert f.severity is Severity.ERROR and f.value("fraction") == 1.0
    assert f.source == zoo.line_of("dead-relu") and "`fc1`" in f.message and "-100" in f.message
    assert not d.by_kind("vanishing")               # fc1's zero gradient is explained


def test_saturated_tanh_is_a_warning():
    d = run(zoo.make_saturated_tanh())
    f = only(d, "saturated_units")
    assert f.severity is Severity.WARNING and f.module == "1" and f.value("fraction") >= 0.5
    assert d.ok


# -- failures ------------------------------------------------------------------------------
def test_seed_lenet_shape_error_explains_256_vs_400():
    case = zoo.make_seed_lenet()
    d = run(case)
    f = only(d, "shape_error")
    assert f.module == "fc1" and f.source == zoo.line_of("lenet-fc1")
    assert "256 = 16*4*4" in f.title and "400 = 16*5*5" in f.title
    assert zoo.line_of("lenet-flatten") in f.message and "(1, 16, 4, 4)" in f.message
    assert "nn.Linear(256, 120)" in f.hint
    assert d.loss is None and "param:fc1.weight" in d.graph and "param:fc1.weight" in f.nodes
    assert "param:conv2.weight" in d.graph                 # the partial graph up to the failure
    assert no_hooks_left(case.model)


def test_view_lenet_shape_error_names_fc1():
    case = zoo.make_seed_lenet()
    d = diagnose(zoo.ViewLeNet(), inputs=case.inputs)
    f = only(d, "shape_error")
    assert f.source == zoo.line_of("view-lenet")
    assert "256 = 16*4*4" in f.message and "400 = 16*5*5" in f.message and "`fc1`" in f.message


def test_inplace_relu_after_sigmoid_names_both_modules():
    d = run(zoo.make_inplace_relu())
    f = only(d, "inplace_error")
    assert f.module == "gate.2" and f.op == "relu(inplace=True)"
    assert "`sigmoid`" in f.message and "`gate.1`" in f.message and "version 0 -> 1" in f.message
    assert set(f.nodes) == {"gate.1/SigmoidBackward0:0", "gate.2/ReluBackward0:0"}
    assert zoo.line_of("inplace-gate") in f.message


def test_inplace_method_names_both_source_lines():
    d = diagnose(zoo.InplaceMethodNet(), inputs=torch.randn(3, 5))
    f = only(d, "inplace_error")
    assert (f.op, f.source) == ("relu_", zoo.line_of("method-relu_"))
    assert zoo.line_of("method-sigmoid") in f.message


def test_inplace_write_into_a_parameter_in_forward():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            self.w.mul_(2)
            return x * self.w

    d = diagnose(Bad(), inputs=torch.ones(2, 3))
    f = only(d, "inplace_error")
    assert f.op == "mul_" and "test_diagnose.py" in f.source


def test_unrelated_forward_errors_propagate():
    class Broken(nn.Module):
        def forward(self, x):
            raise KeyError("not ours")

    m = Broken()
    with pytest.raises(KeyError):
        diagnose(m, inputs=torch.ones(1))
    assert no_hooks_left(m)


# -- healthy models and the API --------------------------------------------------------------
def test_healthy_lenet_has_no_finding():
    d = run(zoo.make_lenet())
    assert d.ok and not d.findings, str(d)
    assert "no problems found" in str(d) and d.loss is not None
    assert {s.module for s in d.layers} == {"conv1", "conv2", "fc1", "fc2", "fc3"}


def test_healthy_resnet18_has_no_error():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    d = diagnose(model, inputs=torch.randn(2, 3, 64, 64), target=torch.randint(0, 10, (2,)))
    assert d.ok, str(d)
    assert no_hooks_left(model)


def test_checks_filter_and_report_text():
    d = run(zoo.make_dead_relu(), checks=["vanishing"])
    assert d.findings == ()
    full = run(zoo.make_dead_relu())
    text = str(full)
    assert text.startswith("Diagnosis: 1 error") and "[error] dead_units" in text
    assert set(full.highlight) <= {n.id for n in full.graph.nodes}
    assert isinstance(full.subgraph_for(full.findings[0]), Graph)


def test_bad_arguments_say_how_to_call():
    net = nn.Linear(2, 1)
    with pytest.raises(DiagnoseInputError, match="nn.Module"):
        diagnose("net", inputs=torch.ones(1, 2))
    with pytest.raises(DiagnoseInputError, match="not both"):
        diagnose(net, net(torch.ones(1, 2)).sum(), inputs=torch.ones(1, 2))
    with pytest.raises(DiagnoseInputError, match="inputs="):
        diagnose(net)


def test_loss_without_grad_reports_every_parameter():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        loss = net(torch.ones(1, 2)).sum()
    d = diagnose(net, loss)
    assert set(only(d, "unused_parameter").params) == {"weight", "bias"}


def test_item_in_the_forward_cuts_the_path():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            scale = torch.sigmoid(self.gate(x)).mean().item()
            return self.fc(x) * scale

    d = diagnose(Scaled(), inputs=torch.randn(3, 4))
    f = only(d, "unused_parameter")
    assert set(f.params) == {"gate.weight", "gate.bias"} and f.op == "item"
    assert "Python value" in f.title and "test_diagnose.py" in f.source


def test_live_nodes_map_to_graph_ids_of_the_same_op():
    case = zoo.make_lenet()
    loss = F.cross_entropy(case.model(case.inputs), case.target)
    node_ids: dict = {}
    graph = trace_nodes({"loss": loss}, model=case.model, visit=node_ids.__setitem__)
    live = walk([loss.grad_fn])
    ids = [node_ids.get(n) for n in live]
    assert all(ids) and len(set(ids)) == len(live)
    for node, nid in zip(live, ids):
        expected = "AccumulateGrad" if hasattr(node, "variable") else node.name()
        assert graph.node(nid).op == expected
