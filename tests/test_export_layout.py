"""Renders a person can read: compact layouts (fill ratio), bounded PNGs, folded modules nested
in their parent's cluster, readable text on coloured fills, ``graph.to_graphviz()``.

Thresholds come from measurement (benchmarks/README.md, "Render layout"): before the compact
layout resnet18 filled 1.0% of its canvas and the 452-node Faster R-CNN 0.4%; now 6.5% and 4.3%.
"""
from __future__ import annotations

import io
import re
import shlex

import pytest
import torch
import torch.nn as nn

import graphviz_autograd as ga
from graphviz_autograd.export import compact
from graphviz_autograd.export.dot import (PNG_MAX_PIXELS, PNG_MAX_SIDE, fill_ratio, find_dot,
                                          run_dot, to_dot)
from graphviz_autograd.export.style import contrast
from graphviz_autograd.graph.fold import fold_depth, parent_path
from view_models import detection_graph, resnet18_graph

try:
    HAVE_DOT = find_dot()[1] == "dot"
except Exception:  # noqa: BLE001 - RenderError: no Graphviz
    HAVE_DOT = False
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` is not installed")


def _plain_nodes(source: str) -> dict[str, tuple[float, float]]:
    out = {}
    for line in run_dot(source, "plain").decode().splitlines():
        parts = shlex.split(line)
        if parts and parts[0] == "node":
            out[parts[1]] = (float(parts[2]), float(parts[3]))
    return out


@needs_dot
def test_resnet18_render_fills_its_canvas_and_reads_left_to_right():
    graph = resnet18_graph()
    source = to_dot(graph)
    assert fill_ratio(source) >= 0.04                 # 0.010 with the diagonal staircase
    pos = _plain_nodes(source)
    first, last = "param:conv1.weight", "output:0"
    assert pos[first][0] < pos[last][0]              # columns run left to right
    assert 'constraint="false"' in source            # wrapped into columns


@needs_dot
@pytest.mark.slow
def test_detection_model_render_is_compact_and_its_png_bounded(tmp_path):
    from PIL import Image

    graph = detection_graph()
    assert 400 <= len(graph) <= 500
    source = to_dot(graph)
    assert fill_ratio(source) >= 0.025                # 0.004 before
    png = graph.render(tmp_path / "frcnn.png")
    with Image.open(png) as im:
        width, height = im.size
    assert max(width, height) <= PNG_MAX_SIDE and width * height <= PNG_MAX_PIXELS
    assert min(width, height) >= 1500                # still big enough to read


def _cluster_of_each_node(source: str) -> tuple[dict[str, str], set[str]]:
    """Node name -> innermost enclosing cluster (module path, "" at top level); all clusters."""
    stack: list[str] = []
    where: dict[str, str] = {}
    clusters: set[str] = set()
    for line in source.splitlines():
        line = line.strip()
        m = re.match(r'subgraph "cluster_(.*)" \{$', line)
        if m:
            stack.append(m.group(1))
            clusters.add(m.group(1))
        elif line == "}" and stack:
            stack.pop()
        else:
            m = re.match(r'"((?:[^"\\]|\\.)*)" \[label=', line)
            if m:
                where[m.group(1)] = stack[-1] if stack else ""
    return where, clusters


def test_folded_modules_are_drawn_inside_their_parents_cluster():
    torch.manual_seed(0)
    net = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=4,
                         dim_feedforward=64, dropout=0.0, batch_first=True)
    with ga.instrument(net):
        out = net(torch.randn(2, 5, 32), torch.randn(2, 4, 32)).pow(2).mean()
    graph = ga.trace(out, model=net)
    source = to_dot(graph, depth=3)
    folded = [n.module for n in fold_depth(graph, 3).nodes if n.id.startswith("module:")]
    assert any(m.endswith("multihead_attn") for m in folded)
    where, clusters = _cluster_of_each_node(source)

    def drawn_parent(module: str) -> str:           # a parent spanning two columns is not drawn
        up = parent_path(module)
        while up and up not in clusters:
            up = parent_path(up)
        return up

    for module in folded:
        assert module not in clusters, f"a cluster is named after folded module {module}"
        assert where[f"module:{module}"] == drawn_parent(module), module
    assert sum(where[f"module:{m}"] == parent_path(m) for m in folded) > len(folded) / 2
    notes = [name for name in where if "@module:" in name]
    assert notes
    for name in notes:                               # reference notes sit with their user too
        user = name.split("@module:", 1)[1].rsplit("/", 1)[0]
        assert where[name] == drawn_parent(user), name
    assert "1 nodes" not in source


def test_colored_fills_get_readable_text():
    graph = resnet18_graph()
    dark, light = "#08306b", "#fff5eb"
    source = to_dot(graph, colors={"param:fc.weight": dark, "param:fc.bias": light})
    line = next(s for s in source.splitlines() if s.strip().startswith('"param:fc.weight"'))
    fg = re.search(r'fontcolor="(#[0-9a-f]{6})"', line).group(1)
    assert contrast(fg, dark) >= 4.5
    line = next(s for s in source.splitlines() if s.strip().startswith('"param:fc.bias"'))
    fg = re.search(r'fontcolor="(#[0-9a-f]{6})"', line).group(1)
    assert contrast(fg, light) >= 4.5


@needs_dot
def test_to_graphviz_is_a_digraph_that_renders():
    graphviz = pytest.importorskip("graphviz")
    graph = resnet18_graph()
    digraph = graph.to_graphviz(depth=0)
    assert isinstance(digraph, graphviz.Digraph)
    assert digraph.source == to_dot(graph, depth=0)
    svg = digraph.pipe(format="svg").decode()
    assert "layer1" in svg and "<svg" in svg


def test_plan_cuts_a_tall_chain_into_columns_between_clusters():
    names = [f"n{i}" for i in range(60)]
    edges = list(zip(names, names[1:]))
    clusters = {n: ("net", "net.a" if i < 30 else "net.b") for i, n in enumerate(names)}
    plan = compact.plan_layout(names, edges, clusters, {n: (60.0, 20.0) for n in names},
                               wrap_above=600.0, max_columns=2)
    assert plan.columns == 2
    assert plan.loose == {("n29", "n30")}            # the cheapest cut: between the blocks
    assert plan.broken == frozenset({"net"})
    assert plan.tops == [["n0"], ["n30"]]


def test_parameter_chains_are_held_below_the_data_input():
    # relu -> addmm <- T <- weight: the weight must not rise above relu
    edges = [("w0", "conv"), ("b0", "conv"), ("conv", "relu"), ("relu", "addmm"), ("w", "T"),
             ("T", "addmm"), ("b", "addmm")]
    nodes = ["w0", "b0", "conv", "relu", "w", "T", "b", "addmm"]
    hold = compact.hold_edges(nodes, edges)
    assert set(hold) == {("relu", "w"), ("relu", "b")}
    ranks = compact.ranks(nodes, edges + hold)
    assert ranks["w"] > ranks["relu"] and ranks["addmm"] > ranks["T"]


def test_png_resolution_is_bounded():
    from graphviz_autograd.export.dot import png_dpi

    assert png_dpi(10, 5) == 96
    for w, h in ((300, 100), (500, 20), (100, 100)):
        dpi = png_dpi(w, h)
        assert w * dpi <= PNG_MAX_SIDE + 1 and w * h * dpi * dpi <= PNG_MAX_PIXELS + 1


def test_hostile_names_survive_the_plain_parser():
    assert io is not None
    src = 'digraph { "a b \\"c\\"" [shape=box]; "a b \\"c\\"" -> d }'
    if HAVE_DOT:
        assert 0 < fill_ratio(src) <= 1
