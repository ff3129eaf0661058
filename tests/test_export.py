"""Exports: golden DOT/JSON text, real graphviz renders, networkx and GraphML."""
import os
import xml.etree.ElementTree as ET

import networkx as nx
import pytest
import torch
import torch.nn as nn

import graphviz_autograd as ga
from graphviz_autograd.errors import FormatError, RenderError
from graphviz_autograd.export import dot as dotmod
import graphviz_autograd.graph.fold
from nets import lenet_loss

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _golden(name, text, update):
    path = os.path.join(GOLDEN, name)
    if update or not os.path.exists(path):
        if not update:
            pytest.fail(f"golden file {path} is missing; run with GVA_UPDATE_GOLDEN=1 to create it")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(path, encoding="utf-8") as f:
        assert text == f.read(), f"{name} changed; if intended, regenerate with GVA_UPDATE_GOLDEN=1"


def test_lenet_golden_json_and_dot(update_golden):
    net, loss = lenet_loss()
    graph = ga.trace(loss, model=net)
    _golden("lenet5.json", graph.to_json(indent=1) + "\n", update_golden)
    _golden("lenet5.dot", graph.to_dot(), update_golden)


def test_json_round_trip_is_lossless():
    net, loss = lenet_loss()
    with ga.instrument(net):
        _, loss = lenet_loss(net)
    graph = ga.trace(loss, model=net, show_saved=True)
    again = ga.load_graph(graph.to_json())
    assert again == graph
    assert again.fingerprint() == graph.fingerprint()
    assert again.node("fc1/AddmmBackward0:0").source.startswith("models.py:")


@pytest.mark.parametrize("text", ["", "{", '{"format": "x"}', '{"format": "graphviz-autograd-graph", "version": 99}',
                                  '{"format": "graphviz-autograd-graph", "version": 1, "nodes": [{}]}'])
def test_bad_json_is_a_clear_error(text):
    with pytest.raises(FormatError):
        ga.load_graph(text)


def test_networkx_has_every_attribute():
    net, loss = lenet_loss()
    graph = ga.trace(loss, model=net)
    g = graph.to_networkx()
    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == {n.id for n in graph.nodes}
    conv = g.nodes["conv1/ConvolutionBackward0:0"]
    assert conv["module"] == "conv1" and conv["shapes"] == [(4, 6, 24, 24)]
    assert conv["saved"][0]["name"] == "input"
    edge = g.edges["param:fc1.weight", "fc1/TBackward0:0"]
    assert edge["shape"] == (120, 256) and edge["output_nr"] == 0
    assert nx.is_directed_acyclic_graph(g)


def test_graphml_file_parses_back(tmp_path):
    net, loss = lenet_loss()
    graph = ga.trace(loss, model=net)
    path = graph.to_graphml(tmp_path / "lenet.graphml")
    back = nx.read_graphml(path)
    assert set(back.nodes) == {n.id for n in graph.nodes}
    assert back.nodes["param:conv1.weight"]["kind"] == "param"


def _labels(graph):
    return {line for n in graph.nodes for line in dotmod.node_label(n, short=True) if line}


@pytest.mark.parametrize("binary", ["dot", "graphviz-pure"])
def test_real_renders_svg_png_pdf(tmp_path, binary, monkeypatch):
    import shutil, sys
    path = shutil.which("dot") if binary == "dot" else os.path.join(os.path.dirname(sys.executable), "graphviz-pure")
    if not path or not os.path.exists(path):
        pytest.skip(f"{binary} is not installed here")
    monkeypatch.setenv("GVA_DOT", path)
    net, loss = lenet_loss()
    graph = ga.trace(loss, model=net)
    svg = graph.render(tmp_path / "g.svg")
    root = ET.parse(svg).getroot()
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert _labels(graph) <= texts
    with open(graph.render(tmp_path / "g.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(graph.render(tmp_path / "g.pdf"), "rb") as f:
        assert f.read(5) == b"%PDF-"
    assert graph._repr_svg_().lstrip().startswith("<?xml")


def test_unknown_suffix_names_the_formats(tmp_path):
    net, loss = lenet_loss()
    with pytest.raises(FormatError, match=r"\.svg"):
        ga.trace(loss, model=net).render(tmp_path / "g.jpeg2000")


class Evil(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module('<img src=x onerror=alert(1)>"{a|b}\\', nn.Linear(3, 2))

    def forward(self, x):
        return next(iter(self.children()))(x)


def test_hostile_module_names_render_literally(tmp_path):
    net = Evil()
    with ga.instrument(net):
        out = net(torch.randn(1, 3)).sum()
    graph = ga.trace(out, model=net)
    name = '<img src=x onerror=alert(1)>"{a|b}\\'
    assert graph.params[name + ".weight"]
    root = ET.parse(graph.render(tmp_path / "evil.svg")).getroot()
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert "weight" in texts and name in texts              # the parameter, in its module's box
    assert not list(root.iter("{http://www.w3.org/2000/svg}img"))


def test_big_graph_folds_modules_or_says_what_to_do():
    layers = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(60)])
    with ga.instrument(layers):
        out = layers(torch.randn(2, 4)).sum()
    graph = ga.trace(out, model=layers)
    assert len(graph) > 300
    text = graph.to_dot(max_nodes=100)
    assert '"module:0"' in text and "AddmmBackward0" in text
    chain = torch.randn(3, requires_grad=True)
    y = chain
    for _ in range(400):
        y = y * 1.01
    with pytest.raises(RenderError, match="max_nodes"):
        ga.trace(y.sum()).to_dot(max_nodes=100)


def test_depth_folds_modules_into_module_nodes():
    tv = pytest.importorskip("torchvision")
    net = tv.models.resnet18(num_classes=10)
    graph = ga.trace(net(torch.randn(2, 3, 32, 32)).sum(), model=net)
    folded = graph.to_dot(depth=0)
    assert '"module:layer1"' in folded and '"module:conv1"' in folded
    assert 'label="ConvolutionBackward0\\n' not in folded and 'label="ConvolutionBackward0\\n' in graph.to_dot()
    from graphviz_autograd.graph.fold import fold_depth
    top = fold_depth(graph, 0)
    assert len(top) < len(graph) / 3
    layer1 = top.node("module:layer1")
    assert layer1.kind is ga.NodeKind.MODULE and layer1.module == "layer1"
    assert int(dict(layer1.attrs)["nodes"]) == sum(1 for n in graph.nodes if n.module.startswith("layer1")
                                                   or n.param.startswith("layer1."))


def test_shared_parameter_is_drawn_beside_each_user():
    cell = nn.RNNCell(3, 4)
    h = torch.zeros(1, 4)
    for _ in range(5):
        h = cell(torch.randn(1, 3), h)
    graph = ga.trace(h.sum(), model=cell)
    text = graph.to_dot()
    assert text.count('label="weight_hh') >= 5


def test_dense_connections_use_reference_notes_and_render(tmp_path):
    tv = pytest.importorskip("torchvision")
    net = tv.models.densenet121(num_classes=10)
    with ga.instrument(net):
        out = net(torch.randn(2, 3, 32, 32)).sum()
    graph = ga.trace(out, model=net)
    text = graph.to_dot(max_nodes=None)
    refs = [line for line in text.splitlines() if 'shape="note"' in line]
    assert len(refs) > 100
    edges = [line for line in text.splitlines() if " -> " in line and "invis" not in line]
    assert len(edges) == len(graph.edges)          # every edge drawn, directly or from a note
    svg = graph.render(tmp_path / "densenet.svg", max_nodes=None)
    assert ET.parse(svg).getroot() is not None


def test_focus_draws_one_module_in_full_detail():
    tv = pytest.importorskip("torchvision")
    net = tv.models.resnet18(num_classes=10)
    with ga.instrument(net):
        out = net(torch.randn(2, 3, 32, 32)).sum()
    graph = ga.trace(out, model=net)
    text = graph.to_dot(focus="layer3.1")
    assert '"layer3.1.conv1/ConvolutionBackward0:0"' in text and '"param:layer3.1.conv2.weight"' in text
    assert "layer1.0." not in text and "layer4.1." not in text
    assert "layer3.0." in text and "layer4.0." in text          # one hop of context
    with pytest.raises(FormatError, match="layer9"):
        graph.to_dot(focus="layer9")


def test_unrolled_rnn_overview_folds_repeated_calls(tmp_path):
    cell = nn.LSTMCell(8, 16)
    x, h, c = torch.randn(1, 8), torch.zeros(1, 16), torch.zeros(1, 16)
    with ga.instrument(cell):
        for _ in range(700):
            h, c = cell(x, (h, c))
        loss = h.sum()
    graph = ga.trace(loss, model=cell)
    assert len(graph) > 10_000
    assert {dict(n.attrs).get("call") for n in graph.by_kind("op")} >= {"1", "700"}
    text = graph.to_dot()                           # over max_nodes: folds by itself
    assert '"repeat:#1-700"' in text and "x700 calls" in text
    root = ET.parse(graph.render(tmp_path / "lstm.svg")).getroot()
    assert root is not None
