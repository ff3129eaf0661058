"""The tracer against real models and an independent reference walk."""
import dataclasses
import gc
import weakref

import pytest
import torch
import torch.nn as nn

import graphviz_autograd as ga
from graphviz_autograd.errors import NotDifferentiableError, TraceInputError
from graphviz_autograd.graph.model import NodeKind
from nets import LeNet5, Square, lenet_loss, reference_walk


def reference_keys(outputs, model):
    """Structure of the live graph keyed without our ids: ops by creation rank, params by name."""
    names = {id(p): n for n, p in model.named_parameters()} if model else {}
    nodes, edges = reference_walk(outputs)
    ops = sorted((fn for fn in nodes if not hasattr(fn, "variable")), key=lambda f: f._sequence_nr())
    key = {fn: ("op", fn.name(), r) for r, fn in enumerate(ops)}
    for fn in nodes:
        if hasattr(fn, "variable"):
            key[fn] = ("param", names[id(fn.variable)]) if id(fn.variable) in names else ("leaf", tuple(fn.variable.shape))
    return {key[n] for n in nodes}, {(key[s], key[d], o, k) for s, d, o, k in edges}


def our_keys(graph):
    def key(n):
        if n.kind is NodeKind.OP:
            return ("op", n.op, n.seq)
        if n.kind is NodeKind.PARAM:
            return ("param", n.param)
        return ("leaf", n.outputs[0].shape)
    by_id = {n.id: n for n in graph.nodes if n.kind in (NodeKind.OP, NodeKind.PARAM, NodeKind.LEAF)}
    nodes = {key(n) for n in by_id.values()}
    edges = {(key(by_id[e.src]), key(by_id[e.dst]), e.output_nr, e.input_nr)
             for e in graph.edges if e.src in by_id and e.dst in by_id}
    return nodes, edges


def _resnet18():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = tv.models.resnet18(num_classes=10)
    return net, net(torch.randn(2, 3, 32, 32)).logsumexp(1).mean()


def _transformer():
    torch.manual_seed(0)
    net = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                         dim_feedforward=64, dropout=0.0, batch_first=True)
    return net, net(torch.randn(2, 5, 32), torch.randn(2, 4, 32)).pow(2).mean()


@pytest.mark.parametrize("build", [lenet_loss, _resnet18, _transformer], ids=["lenet5", "resnet18", "transformer"])
def test_node_and_edge_sets_equal_a_reference_walk(build):
    net, loss = build()
    graph = ga.trace(loss, model=net)
    ref_nodes, ref_edges = reference_keys(loss, net)
    nodes, edges = our_keys(graph)
    assert nodes == ref_nodes
    assert edges == ref_edges
    assert len(graph.by_kind("output")) == 1
    assert set(graph.params) == {n for n, p in net.named_parameters() if p.requires_grad}


def test_ids_are_stable_across_training_steps():
    net = LeNet5()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    graphs = []
    for step in range(2):
        _, loss = lenet_loss(net, seed=step)
        graphs.append(ga.trace(loss, model=net))
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = graphs
    assert [n.id for n in a.nodes] == [n.id for n in b.nodes]
    assert a.fingerprint() == b.fingerprint()
    assert "param:conv1.weight" in a and "fc1/AddmmBackward0:0" in a


def test_ids_differ_where_structure_differs():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(3, 4)
    g1 = ga.trace(net(x).sum(), model=net)
    g2 = ga.trace(net(x).tanh().sum(), model=net)
    assert g1.fingerprint() != g2.fingerprint()
    assert set(g2.nodes and (n.id for n in g2.nodes)) - set(n.id for n in g1.nodes) == {"TanhBackward0:0"}


def test_instrumentation_tags_module_paths_and_source_lines():
    net = nn.Sequential(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), nn.Linear(3, 1))
    with ga.instrument(net) as state:
        out = net(torch.randn(2, 4)).sum()   # the line the tags must point at
    g = ga.trace(out, model=net)
    assert g.node("0.0/AddmmBackward0:0").module == "0.0"
    assert g.node("0.1/TanhBackward0:0").module == "0.1"
    line = test_instrumentation_tags_module_paths_and_source_lines.__code__.co_firstlineno + 3
    assert g.node("SumBackward0:0").source == f"test_tracer.py:{line}"
    assert state.nodes_seen >= 5
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_instrumentation_removes_hooks_when_forward_raises():
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 1))
    with pytest.raises(RuntimeError):
        with ga.instrument(net):
            net(torch.randn(2, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def _assert_plain(value, path="graph"):
    if isinstance(value, (str, int, float, bool, type(None), ga.NodeKind)):
        return
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _assert_plain(v, f"{path}[{i}]")
        return
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            if f.name != "_index":
                _assert_plain(getattr(value, f.name), f"{path}.{f.name}")
        return
    raise AssertionError(f"{path} holds a {type(value).__name__}")


def test_graph_holds_plain_data_and_no_reference_to_tensors():
    net, loss = lenet_loss()
    graph = ga.trace(loss, model=net, show_saved=True)
    _assert_plain(graph)
    ref = weakref.ref(loss)
    del loss
    gc.collect()
    assert ref() is None
    assert hash(graph) == hash(ga.load_graph(graph.to_json()))


def test_saved_tensors_are_deduplicated_by_storage():
    x = torch.randn(100, requires_grad=True)
    y = x.exp()          # ExpBackward saves its result y
    z = (y * y).sum()    # MulBackward saves self=y and other=y: same storage
    g = ga.trace(z, show_saved=True)
    saved_nodes = g.by_kind("saved")
    assert len(saved_nodes) == 1
    assert saved_nodes[0].saved[0].nbytes == 400
    assert g.saved_bytes() == 400
    users = {e.dst for e in g.edges if e.src == saved_nodes[0].id}
    assert users == {"ExpBackward0:0", "MulBackward0:0"}


def test_freed_graph_is_traced_with_saved_marked_freed():
    net, loss = lenet_loss()
    loss.backward()
    g = ga.trace(loss, model=net)
    conv = g.node("conv1/ConvolutionBackward0:0")
    assert conv.saved and all(s.freed for s in conv.saved)
    assert len(g) == len(ga.trace(lenet_loss()[1], model=LeNet5()))


def test_custom_autograd_function():
    x = torch.randn(5, requires_grad=True)
    g = ga.trace(Square.apply(x).sum())
    node = g.node("SquareBackward:0")
    assert node.kind is NodeKind.OP
    assert [s.meta.shape for s in node.saved] == [(5,)]
    assert g.predecessors("SquareBackward:0") == ["input:0"]


def test_double_backward_graph():
    x = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad((x ** 3).sum(), x, create_graph=True)
    g = ga.trace(grad.sum())
    ops = {n.op for n in g.by_kind("op")}
    assert "PowBackward1" in ops or "MulBackward0" in ops
    assert len(g.by_kind("leaf")) == 1


def test_dict_tuple_and_dataclass_outputs_share_subgraphs():
    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        aux: torch.Tensor
        name: str = "x"

    lin = nn.Linear(4, 3)
    h = lin(torch.randn(2, 4))
    outputs = {"main": Out(h.relu(), h.sigmoid()), "extra": [h.sum(), torch.zeros(1)]}
    g = ga.trace(outputs, model=lin)
    assert set(g.roots) == {"output:main.logits", "output:main.aux", "output:extra.0"}
    assert len([n for n in g.nodes if n.op == "AddmmBackward0"]) == 1


def test_leaf_root_and_views_and_inplace():
    x = torch.randn(4, 4, requires_grad=True)
    assert [n.kind for n in ga.trace(x).nodes] == [NodeKind.LEAF, NodeKind.OUTPUT]
    y = x * 2
    v = y[:, :2]
    v.mul_(3)
    g = ga.trace(y.sum())
    assert any(n.op.startswith("AsStrided") or n.op.startswith("CopySlices") for n in g.nodes)


@pytest.mark.parametrize("make,hint", [
    (lambda: torch.no_grad()(lambda: nn.Linear(2, 1)(torch.randn(1, 2)))(), "no_grad"),
    (lambda: nn.Linear(2, 1)(torch.randn(1, 2)).detach(), "detach"),
    (lambda: torch.randn(3), "requires_grad"),
])
def test_tensor_without_graph_gets_a_clear_error(make, hint):
    with pytest.raises(NotDifferentiableError, match=hint) as info:
        ga.trace(make())
    assert "shape=" in str(info.value)


@pytest.mark.parametrize("bad", [None, [], {}, "loss", 3.0])
def test_non_tensor_input_is_a_type_error(bad):
    with pytest.raises(TraceInputError, match="no tensor"):
        ga.trace(bad)
    with pytest.raises(TypeError):
        ga.trace(bad)


def test_tracing_pauses_the_garbage_collector_and_restores_its_state():
    from graphviz_autograd.graph import _gc
    from graphviz_autograd.tracer import trace_nodes
    x = torch.randn(3, requires_grad=True)
    seen = []

    def visit(_fn, _node_id):
        seen.append(gc.isenabled())
    gc.enable()
    trace_nodes((x * 2).sum(), visit=visit)
    assert seen and not any(seen) and gc.isenabled()
    gc.disable()
    try:
        ga.trace((x * 2).sum())
        assert not gc.isenabled()           # left as the caller had it
    finally:
        gc.enable()
    with pytest.raises(RuntimeError):
        with _gc.paused():
            raise RuntimeError("boom")
    assert gc.isenabled()
