"""Pure parts of the dashboard: run discovery, folding, layout, elements, colours, figures, ops."""
from __future__ import annotations

import math
import os
import time

import pytest

pytest.importorskip("dash")
pytest.importorskip("dash_cytoscape")

from graphviz_autograd.dashboard import app as APP  # noqa: E402
from graphviz_autograd.dashboard import server as SRV  # noqa: E402
from graphviz_autograd.dashboard.gradients import MISSING, ZERO, build_flow, build_heat  # noqa: E402
from graphviz_autograd.dashboard import figures as FIG  # noqa: E402
from graphviz_autograd.dashboard import fold as F  # noqa: E402
from graphviz_autograd.dashboard import graph_view as GV  # noqa: E402
from graphviz_autograd.dashboard import ids, layout, layout_engine as LE, ops, panels  # noqa: E402
from graphviz_autograd.dashboard.runs import is_safe_name, list_runs, newest_run, resolve_run  # noqa: E402
from graphviz_autograd.dashboard.synthetic import synthetic_graph, write_synthetic_run  # noqa: E402
from graphviz_autograd.graph.model import NodeKind  # noqa: E402


# -- runs under the root ----------------------------------------------------------------------
def _store(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rank-0.gva.sqlite").write_bytes(b"")
    return directory


def test_list_runs_finds_nested_runs_and_the_root_itself(tmp_path):
    _store(tmp_path / "a")
    _store(tmp_path / "group" / "b")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    _store(tmp_path / ".hidden" / "c")
    assert list_runs(tmp_path) == ["a", "group/b"]
    _store(tmp_path)
    assert list_runs(tmp_path)[0] == "."
    assert list_runs(tmp_path / "missing") == []


def test_resolve_run_refuses_paths_that_are_not_listed(tmp_path):
    root = tmp_path / "root"
    _store(root / "ok")
    outside = _store(tmp_path / "outside")
    os.symlink(outside, root / "link")
    assert resolve_run(root, "ok") == root / "ok"
    for bad in ("../outside", "/etc", str(outside), "link", "ok/../ok", "", None, "ok\\x", "a\x00b"):
        with pytest.raises(KeyError):
            resolve_run(root, bad)
    assert "link" not in list_runs(root)
    assert not is_safe_name("..") and not is_safe_name("/abs") and is_safe_name("a/b")


def test_symlinked_store_file_out_of_the_root_hides_the_run(tmp_path):
    root = tmp_path / "root"
    (root / "r").mkdir(parents=True)
    target = _store(tmp_path / "elsewhere") / "rank-0.gva.sqlite"
    os.symlink(target, root / "r" / "rank-0.gva.sqlite")
    assert list_runs(root) == []


def test_newest_run_is_the_last_written(tmp_path):
    _store(tmp_path / "old")
    time.sleep(0.01)
    newer = _store(tmp_path / "new") / "rank-0.gva.sqlite"
    os.utime(newer, (time.time() + 5, time.time() + 5))
    assert newest_run(tmp_path) == "new"


# -- folding ----------------------------------------------------------------------------------
def test_fold_merges_a_module_and_keeps_edges():
    g = synthetic_graph(120)
    view = F.fold(g, {"blocks.0"})
    folded = view.graph.node("module:blocks.0")
    assert folded.op == "module" and int(dict(folded.attrs)["nodes"]) == len(view.members["module:blocks.0"])
    assert view.visible("param:blocks.0.attn.q.weight") == "module:blocks.0"
    assert all(e.src in view.graph and e.dst in view.graph and e.src != e.dst for e in view.graph.edges)
    assert view.parent["module:blocks.0"] == "group:blocks"              # inside its parent module
    assert "module:blocks" not in F.fold(g, {"blocks"}).parent           # a top-level module
    assert view.parent["blocks.1.attn.q/AddmmBackward0:0"] == "group:blocks.1.attn.q"


def test_auto_fold_shows_a_screenful_and_opens_a_repeated_block_once():
    small = synthetic_graph(40)
    assert len(small) <= F.AUTO_MAX_NODES and F.auto_fold(small) == frozenset()
    big = synthetic_graph(400)                       # 9 transformer blocks
    n = len({m for m in F.all_modules(big) if m.startswith("blocks.") and m.count(".") == 1})
    folded = F.auto_fold(big)
    view = F.fold(big, folded)
    assert len(view.graph) <= F.AUTO_MAX_NODES and n == 9
    assert "blocks.0" not in folded                  # the first block is open...
    assert {f"blocks.{i}" for i in range(1, n)} <= folded      # ...its repeats folded
    assert f"blocks.1–{n - 1} ({n - 1} blocks)" in F.describe_folded(big, folded)
    huge = synthetic_graph(2000)                     # 48 blocks: one node each is all that fits
    assert len(F.fold(huge, F.auto_fold(huge)).graph) <= F.AUTO_MAX_NODES


def test_unchanged_modules_fold_everything_but_the_change():
    g = synthetic_graph(200)
    changed = {"blocks.2.mlp.fc1/AddmmBackward0:0"}
    folded = F.unchanged_modules(g, changed)
    assert "blocks.0" in folded and "blocks.2" not in folded and "blocks.2.attn" in folded
    assert "blocks.2.mlp.fc2" in folded and "blocks.2.mlp.fc1" not in folded


# -- layout -------------------------------------------------------------------------------------
def _layout_inputs(n):
    view = F.fold(synthetic_graph(n))
    ids_ = [x.id for x in view.graph.nodes]
    sizes = {x.id: LE.box_size(LE.label_lines(x)) for x in view.graph.nodes}
    return view, ids_, sizes, [(e.src, e.dst) for e in view.graph.edges]


@pytest.mark.parametrize("engine", ["dot", "layered"])
def test_layouts_place_every_node_top_down(engine):
    view, ids_, sizes, edges = _layout_inputs(160)
    if engine == "dot":
        pytest.importorskip("shutil").which("dot") or pytest.skip("no graphviz dot")
    pos, used, _broken = LE.layout(ids_, sizes, edges, view.parent, view.groups, engine)
    assert used == engine and set(pos) == set(ids_)
    below = sum(pos[d][1] > pos[s][1] for s, d in edges)
    assert below >= 0.9 * len(edges)                        # producers above consumers


def test_layered_layout_has_no_overlaps_and_is_fast_at_10k():
    view, ids_, sizes, edges = _layout_inputs(10_000)
    start = time.perf_counter()
    pos = LE.layered_layout(ids_, sizes, edges, view.parent)
    assert time.perf_counter() - start < 10
    rows: dict[float, list[tuple[float, float]]] = {}
    for nid, (x, y) in pos.items():
        rows.setdefault(y, []).append((x - sizes[nid][0] / 2, x + sizes[nid][0] / 2))
    for spans in rows.values():
        spans.sort()
        assert all(a[1] <= b[0] + 0.5 for a, b in zip(spans, spans[1:]))


def test_layered_layout_survives_cycles_and_empty():
    pos = LE.layered_layout(["a", "b", "c"], {k: (40, 20) for k in "abc"}, [("a", "b"), ("b", "c"), ("c", "a")])
    assert set(pos) == {"a", "b", "c"}
    assert LE.layered_layout([], {}, []) == {}


def test_dot_source_quotes_nothing_from_the_graph():
    src = LE.to_dot_source(["x<y>\"", "b"], {"x<y>\"": (30, 20), "b": (30, 20)}, [("x<y>\"", "b")],
                           {}, [])
    assert "x<y>" not in src and "n0 -> n1" in src


# -- elements, stylesheet, colours ---------------------------------------------------------------
def test_scene_elements_are_flat_boxes_with_positions():
    view = F.fold(synthetic_graph(200))
    scene = GV.build_scene(view, engine="layered")
    nodes = [e for e in scene.elements if "source" not in e["data"]]
    groups = [e for e in nodes if e["data"]["kind"] == "group"]
    assert groups and all("parent" not in g["data"] for g in groups)      # never nested
    real = [e for e in nodes if e["data"]["kind"] != "group"]
    assert [e["data"]["ix"] for e in real] == list(range(len(scene.order)))
    assert all("position" in e for e in real)
    x1, y1, x2, y2 = scene.bbox
    assert all(x1 <= e["position"]["x"] <= x2 and y1 <= e["position"]["y"] <= y2 for e in real)
    big = GV.build_scene(view, engine="layered", compounds=False)
    assert not any(e["data"].get("kind") == "group" for e in big.elements)


def test_stylesheet_distinguishes_kinds_and_drops_labels_when_big():
    sheet = GV.stylesheet(10)
    selectors = {r["selector"] for r in sheet}
    assert {"node.param", "node.op", "node.leaf", "node.output", "node.module", "node.group"} <= selectors
    assert sheet[0]["style"]["label"] == "data(label)"
    big = GV.stylesheet(5000)
    assert big[0]["style"]["label"] == "" and "font-size" not in big[0]["style"]
    assert next(r for r in big if r["selector"] == "node.lbl")["style"]["label"] == "data(label)"


def test_color_codes_log_scale_nan_and_missing():
    values = [1e-6, 1e-3, 1.0, None, math.nan, 0.0]
    payload, info = GV.color_payload("k", ids.GRAPH, values, "grad_norm", list("abcdef"), "s")
    c = payload["c"]
    assert c[0] == 0 and c[2] == len(GV.PALETTE) - 1 and 0 < c[1] < c[2]
    assert c[3] == -1 and c[4] == -2 and c[5] == -3 and info["n_nonfinite"] == 1
    assert info["n_zero"] == 1 and payload["zero"] == GV.ZERO
    payload, _ = GV.color_payload("k", ids.GRAPH, [0.0, 3.0], "nonfinite", ["a", "b"], "s")
    assert payload["c"] == [0, 1] and payload["p"] == GV.BINARY


def test_node_values_combine_folded_members():
    g = synthetic_graph(120)
    view = F.fold(g, {"blocks.0"})
    scene = GV.Scene(view=view, elements=[], order=[n.id for n in view.graph.nodes], engine="x")
    members = view.members["module:blocks.0"]
    node_stats = {"grad_norm": {m: float(i + 1) for i, m in enumerate(members)}}
    vals = GV.node_values(scene, "grad_norm", node_stats, {"grad_norm": {"blocks.0.ln1.weight": 1e6}})
    assert vals[scene.order.index("module:blocks.0")] == 1e6               # max over members
    saved = GV.node_values(scene, "saved_bytes", {}, {})
    assert saved[scene.order.index("module:blocks.0")] > 0


def test_search_maps_hits_inside_folded_modules():
    view = F.fold(synthetic_graph(200), {"blocks.1"})
    assert GV.search_nodes(view, "blocks.1.attn.q.weight") == ["module:blocks.1"]
    assert GV.search_nodes(view, "EmbeddingBackward")[0] == "embed/EmbeddingBackward0:0"
    assert GV.search_nodes(view, "  ") == []


# -- figures, ops, panels -----------------------------------------------------------------------
def test_plot_text_escapes_tags():
    assert FIG.plot_text("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    flow = build_flow(["<img src=x>"], {"<img src=x>": 1.0}, {"<img src=x>": 2.0}, {"<img src=x>": 4})
    fig = FIG.flow_figure(flow, 3)
    assert fig["data"][0]["y"] == ["&lt;img src=x&gt;"]


def test_loss_figure_marks_the_step_and_goes_gl_when_long():
    steps = list(range(5000))
    fig = FIG.loss_figure(steps, [1.0 / (s + 1) for s in steps], 42, "run")
    assert fig["data"][0]["type"] == "scattergl" and fig["layout"]["shapes"][0]["x0"] == 42
    assert fig["layout"]["yaxis"]["type"] == "log"
    assert FIG.loss_figure([], [], None, "r")["data"] == []
    assert FIG.loss_figure([0, 1], [math.nan, math.inf], None, "r")["data"][0]["y"] == [None, None]


def test_heatmap_is_log10_and_zero_and_missing_have_their_own_cells():
    heat = build_heat({"a": ([0, 1], [10.0, 1e-3]), "b": ([0, 1], [0.0, 0.0]), "c": ([], [])}, [0, 1])
    assert heat.rows == ["c", "b", "a"]              # no gradient, then zero, then the rest
    fig = FIG.heatmap_figure(heat, 1)
    assert fig["data"][0]["z"] == [[None, None], [None, None], [1.0, -3.0]]
    assert fig["data"][0]["x"] == [0, 1, 2]          # one cell per recorded step, edges
    states = fig["data"][1]["z"]
    assert states[0] == [MISSING, MISSING] and states[1] == [ZERO, ZERO] and states[2] == [None, None]
    assert {t["name"] for t in fig["data"][2:]} == {"exactly 0", "no gradient"}


def test_op_table_covers_common_ops():
    assert len(ops.OPS) >= 30
    for op in ("AddmmBackward0", "ConvolutionBackward0", "ReluBackward0", "MaxPool2DWithIndicesBackward0",
               "NllLossBackward0", "NativeBatchNormBackward0", "NativeLayerNormBackward0",
               "EmbeddingBackward0", "CatBackward0", "BmmBackward0", "NativeDropoutBackward0",
               "AccumulateGrad", "LogSoftmaxBackward0", "MseLossBackward0", "TBackward0"):
        assert ops.explain(op), op
    assert "Wᵀ" in ops.explain("AddmmBackward0")[0] and ops.explain("NoSuchBackward0") is None


def test_legend_shows_range_and_missing():
    info = {"metric": "grad_norm", "label": "gradient norm", "scale": "log", "lo": 1e-4, "hi": 2.0,
            "n_values": 3, "n_nonfinite": 1}
    text = str(panels.legend(info, 7))
    assert "gradient norm of step 7" in text and "NaN/Inf (1)" in text and "no data" in text
    assert "node kind" in str(panels.legend(None))


def test_synthetic_graph_size_and_ids():
    g = synthetic_graph(1000)
    assert 900 <= len(g) <= 1100 and g.roots == ("output:0",)
    assert any(n.kind is NodeKind.PARAM for n in g.nodes) and "blocks.0.attn.q" in g.modules()


def test_write_synthetic_run_versions(tmp_path):
    from graphviz_autograd.store import open_run
    write_synthetic_run(tmp_path / "r", n_nodes=80, n_steps=10, every=5, versions=2)
    run = open_run(tmp_path / "r")
    assert len(run.graph_versions()) == 2 and run.steps() == list(range(10))
    assert len(run.stats_at(5, "param", "grad_norm")) > 0 and run.stats_at(6, "param", "grad_norm") == {}


# -- the app ------------------------------------------------------------------------------------
def test_layout_has_every_id_once_and_reads_nothing(tmp_path):
    app = APP.create_app(tmp_path / "not-there-yet")
    assert not (tmp_path / "not-there-yet").exists()
    found: list[str] = []

    def walk(c):
        if isinstance(c, (list, tuple)):
            for x in c:
                walk(x)
        elif hasattr(c, "to_plotly_json"):
            if getattr(c, "id", None):
                found.append(c.id)
            walk(getattr(c, "children", None))
    walk(app.validation_layout)
    assert len(found) == len(set(found))
    wanted = {v for k, v in vars(ids).items() if k.isupper() and isinstance(v, str)}
    assert wanted <= set(found)
    assert set(layout.deferred()) <= set(found)


def test_is_loopback():
    assert SRV.is_loopback("127.0.0.1") and SRV.is_loopback("::1") and SRV.is_loopback("localhost")
    assert not SRV.is_loopback("0.0.0.0") and not SRV.is_loopback("192.168.1.4")


# -- gradient charts at scale, comparison, ticks ------------------------------------------------
def test_flow_chart_groups_200_parameters_by_module_and_keeps_problems_apart():
    params = [f"stage{s}.block{b}.conv{c}.{w}" for s in range(4) for b in range(5) for c in range(5)
              for w in ("weight", "bias")]
    assert len(params) == 200
    norm = {p: 0.1 for p in params}
    norm["stage2.block3.conv1.weight"] = 0.0
    del norm["stage3.block0.conv0.bias"]                      # no gradient at all
    flow = build_flow(params, norm, norm, {p: 9 for p in params}, max_rows=30)
    assert len(flow.labels) <= 30
    assert flow.labels[:2] == ["stage3.block0.conv0.bias", "stage2.block3.conv1.weight"]
    assert flow.state[:2] == [MISSING, ZERO]
    assert all("params)" in label for label in flow.labels[2:])   # the rest grouped by module
    assert sum(flow.members) == 200


def test_heat_map_merges_columns_past_its_width_and_drops_no_step():
    recorded = list(range(0, 4000, 10))                        # 400 recorded steps
    heat = build_heat({"a.w": (recorded, [1.0] * 400)}, recorded, max_cols=150)
    assert len(heat.firsts) <= 150 and sum(heat.counts) == 400
    assert heat.edges[0] == 0 and heat.edges[-1] == 4000
    assert all(v is not None for v in heat.z[0])


def test_overlay_shares_one_step_axis_and_logs_learning_rates():
    from graphviz_autograd.dashboard.compare import overlay_figure, split_choice

    curves = {"sgd": {"loss": ([0, 1], [2.0, 1.0]), "lr": ([0, 1], [0.01, 0.01])},
              "adam": {"loss": ([0, 1], [2.0, 0.5]), "lr": ([0, 1], [1e-3, 1e-3]),
                       "test_acc": ([], [])}}
    fig = overlay_figure(curves)
    assert {t["name"] for t in fig["data"] if t["yaxis"] == "y"} == {"sgd", "adam"}
    assert fig["layout"]["yaxis2"]["type"] == "log" and fig["layout"]["meta"]["rows"] == ["loss", "lr"]
    assert all("xaxis" not in t for t in fig["data"])         # every trace on the one x axis
    assert split_choice("ddp@1") == ("ddp", 1) and split_choice("a@b") == ("a@b", None)


def test_slider_ticks_are_round_numbers():
    from graphviz_autograd.dashboard.callbacks import nice_ticks

    assert nice_ticks(0, 399) == [0, 100, 200, 300, 399]
    assert nice_ticks(3, 3) == [3]
    assert all(t % 20_000 == 0 for t in nice_ticks(0, 100_000))


def test_log_axes_label_every_tick_in_full():
    assert FIG.log_axis(1e-3, 0.05)["dtick"] == "D2" and FIG.log_axis(1e-9, 1.0)["dtick"] == 1
    assert FIG.log_axis()["tickformat"] == ".2~g"
    metrics = FIG.metrics_figure({"lr": ([0, 1], [0.01, 0.01]), "test_accuracy": ([], [])}, 1, "r")
    assert len(metrics["data"]) == 1 and metrics["layout"]["yaxis"]["type"] == "log"
