"""Dashboard callbacks called directly (no server, no browser) on real recorded and synthetic runs.

Also home of the run fixtures the browser tests reuse (``recorded_root``, ``hostile_root``).
"""
from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("dash")
pytest.importorskip("dash_cytoscape")

from dash import Patch, no_update  # noqa: E402

from graphviz_autograd.dashboard import analysis as A  # noqa: E402
from graphviz_autograd.dashboard import callbacks as C  # noqa: E402
from graphviz_autograd.dashboard import details as D  # noqa: E402
from graphviz_autograd.dashboard import ids  # noqa: E402
from graphviz_autograd.dashboard.data import DataSource, parse_key  # noqa: E402
from graphviz_autograd.dashboard.synthetic import write_synthetic_run  # noqa: E402
from graphviz_autograd.graph.model import Edge, Graph, Node, NodeKind, TensorMeta  # noqa: E402
from graphviz_autograd.store import RunWriter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HOSTILE = "<img src=x onerror=alert(1)>"
LENET_STEPS = 12


def _tmpdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.lru_cache(maxsize=None)
def recorded_root() -> Path:
    """Runs recorded with the real Recorder: LeNet-5 (static graph) and DynamicNet (3 versions)."""
    import torch
    import torch.nn.functional as F

    from graphviz_autograd.examples.models import DynamicNet, LeNet5
    from graphviz_autograd import Recorder

    root = _tmpdir("gva-dash-runs-")
    torch.manual_seed(0)
    for name, model in (("lenet", LeNet5()), ("dynamic", DynamicNet())):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        with Recorder(model, root / name, optimizer=opt, every=1, flush_interval=0) as rec:
            for step in range(LENET_STEPS):
                x = torch.randn(8, 1, 28, 28) * (0.5 + step % 3)
                y = torch.randint(0, 10, (8,))
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                rec.log(step, loss=loss, acc=step / LENET_STEPS)
    return root


def hostile_graph() -> Graph:
    meta = TensorMeta((4, 3), "float32")
    mod = HOSTILE
    nodes = (Node(id="output:0", kind=NodeKind.OUTPUT, op="output", param="0", outputs=(meta,)),
             Node(id=f"{mod}/AddmmBackward0:0", kind=NodeKind.OP, op="AddmmBackward0", module=mod,
                  outputs=(meta,), source="evil.py:1", seq=0),
             Node(id=f"param:{mod}.weight", kind=NodeKind.PARAM, op="AccumulateGrad",
                  param=f"{mod}.weight", outputs=(TensorMeta((3, 2), "float32"),)))
    edges = (Edge(f"param:{mod}.weight", f"{mod}/AddmmBackward0:0", 0, 2, TensorMeta((3, 2), "float32")),
             Edge(f"{mod}/AddmmBackward0:0", "output:0", 0, 0, meta))
    return Graph(nodes=nodes, edges=edges, roots=("output:0",))


@functools.lru_cache(maxsize=None)
def hostile_root() -> Path:
    """A run whose module (and so parameter and node ids) is an HTML tag."""
    root = _tmpdir("gva-dash-hostile-")
    g = hostile_graph()
    with RunWriter(root / "hostile") as w:
        v = w.add_graph(g.to_json(), g.fingerprint(), first_step=0, n_nodes=len(g))
        for step in range(3):
            w.add_step(step, wall_time=time.time(), graph_version=v, scalars={"loss": 1.0 / (step + 1)},
                       stats={"node": [(f"{HOSTILE}/AddmmBackward0:0", {"grad_norm": 0.5})],
                              "param": [(f"{HOSTILE}.weight", {"grad_norm": 0.25, "grad_absmax": 0.1})]})
    return root


@functools.lru_cache(maxsize=None)
def synthetic_root() -> Path:
    """Synthetic runs: a 2-rank run with two graph versions, and a 1,200-node one (folds by default)."""
    root = _tmpdir("gva-dash-syn-")
    for rank in (0, 1):
        write_synthetic_run(root / "ddp", n_nodes=120, n_steps=40, every=2, versions=2, rank=rank,
                            world_size=2)
    write_synthetic_run(root / "big", n_nodes=1200, n_steps=5)
    return root


@pytest.fixture(scope="module")
def rec_src():
    return DataSource(recorded_root())


@pytest.fixture(scope="module")
def syn_src():
    return DataSource(synthetic_root())


def _latest(src, run, rank=None):
    latest, _status = C.refresh(src, run, rank, 0, None)
    return latest


def _graph(src, latest, step=None, folded=None, metric="grad_norm", key=None):
    state = {"step": latest["latest"] if step is None else step, "follow": step is None}
    return C.graph_update(src, latest, state, folded or {"mode": "auto"}, metric, key)


# -- runs, refresh, steps ----------------------------------------------------------------
def test_dashboard_imports_no_torch():
    code = ("import sys; import dashboard.app, dashboard.callbacks, dashboard.analysis; "
            f"dashboard.app.create_app({str(synthetic_root())!r}); "
            "assert 'torch' not in sys.modules, 'the dashboard imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_run_options_pick_url_run_then_keep_the_choice(rec_src):
    options, value = C.run_options(rec_src, "?run=dynamic", 0, None, None)
    assert [o["value"] for o in options] == ["dynamic", "lenet"] and value == "dynamic"
    assert C.run_options(rec_src, "?run=dynamic", 1, "lenet", options) == (no_update, no_update)


def test_refresh_summarizes_and_is_silent_when_nothing_changed(rec_src):
    latest, status = C.refresh(rec_src, "lenet", None, 0, None)
    assert latest["latest"] == LENET_STEPS - 1 and latest["first"] == 0 and latest["ranks"] == [0]
    assert "loss" in latest["scalars"] and "12 logged" in status
    assert C.refresh(rec_src, "lenet", None, 1, latest) == (no_update, no_update)


def test_refresh_of_an_unknown_run_reports_instead_of_raising(rec_src):
    latest, status = C.refresh(rec_src, "../etc", None, 0, {"run": "x"})
    assert latest is None and "cannot read run" in status


def test_a_run_written_again_is_reopened(tmp_path):
    write_synthetic_run(tmp_path / "again", n_nodes=60, n_steps=5)
    src = DataSource(tmp_path)
    first = _latest(src, "again")
    assert first["latest"] == 4 and src.stats_at("again", 0, 4, "param", ("grad_norm",))["grad_norm"]
    write_synthetic_run(tmp_path / "again", n_nodes=60, n_steps=3, seed=7)    # overwrite=True
    second = _latest(src, "again")
    assert second["latest"] == 2 and second["n_steps"] == 3


def test_select_step_follows_latest_until_the_user_picks(rec_src):
    latest = _latest(rec_src, "lenet")
    state, slider = C.select_step(None, 0, None, latest, None, "")
    assert state["step"] == LENET_STEPS - 1 and state["follow"]
    assert C.step_label(rec_src, state, latest) == f"step {LENET_STEPS - 1} (the latest)"
    picked = {"step": 3, "at": 1.0}
    state, slider = C.select_step(ids.PICKED, slider, picked, latest, state, "")
    assert state == {"step": 3, "follow": False, "run": "lenet"} and slider == 3
    newer = {**latest, "latest": LENET_STEPS + 5}
    assert C.select_step(ids.LATEST, 3, picked, newer, state, "")[0] is no_update   # stays on 3
    state, _ = C.select_step(ids.STEP_SLIDER, 99, None, latest, state, "")
    assert state["step"] == LENET_STEPS - 1 and state["follow"]                    # clamped


def test_pick_step_from_click_and_from_box_selection():
    click = {"points": [{"x": 7, "y": 0.5}]}
    assert C.pick_step(ids.LOSS, click, None, None, None)["step"] == 7
    box = {"points": [{"x": 3, "y": 0.2}, {"x": 4, "y": 9.0}, {"x": 5, "y": 0.1}], "range": {"x": [2, 6]}}
    assert C.pick_step(ids.LOSS, None, box, None, None)["step"] == 4      # the spike in the box
    assert C.pick_step(ids.METRICS, None, None, None, {"range": {"x": [10, 20]}})["step"] == 15
    assert C.pick_step(ids.LOSS, None, None, None, None) is no_update


# -- the graph -----------------------------------------------------------------------------
def test_graph_update_sends_elements_once_then_only_colours(rec_src):
    latest = _latest(rec_src, "lenet")
    ref, sheet, key, info, colors, legend = _graph(rec_src, latest)
    assert ref["key"] == key and ref["target"] == ids.GRAPH and ref["url"].startswith("/_gva/elements?key=")
    payload = json.loads(rec_src.scene_json(key))
    assert len(payload["elements"]) == ref["n"] and len(payload["bbox"]) == 4
    ids_ = {e["data"]["id"] for e in payload["elements"]}
    assert "fc1/AddmmBackward0:0" in ids_ and "param:fc1.weight" in ids_ and "layout: dot" in info
    assert colors["key"] == key and len(colors["c"]) == colors["n"] and max(colors["c"]) >= 0
    again = _graph(rec_src, latest, step=2, key=key)
    assert again[:4] == (no_update,) * 4                       # zoom, pan, folding survive
    assert again[4]["stamp"] != colors["stamp"] and "step 2" in str(again[5])


def test_graph_update_switches_elements_when_the_version_changes(rec_src):
    latest = _latest(rec_src, "dynamic")
    assert len(latest["versions"]) >= 2
    v1_first, v2_first = latest["versions"][0][1], latest["versions"][1][1]
    _, _, key1, *_ = _graph(rec_src, latest, step=v1_first)
    payload, _, key2, *_ = _graph(rec_src, latest, step=v2_first, key=key1)
    assert key2 != key1 and payload["key"] == key2 and parse_key(key2)[2] == latest["versions"][1][0]


def test_elements_route_serves_only_keys_the_app_built():
    from graphviz_autograd.dashboard.app import create_app
    app = create_app(recorded_root())
    latest = _latest(app.gva_source, "lenet")
    ref, _s, key, *_ = _graph(app.gva_source, latest)
    client = app.server.test_client()
    ok = client.get(ref["url"])
    assert ok.status_code == 200 and len(ok.get_json()["elements"]) == ref["n"]
    for bad in ("lenet|0|v1|x|y", "../../etc/passwd", ""):
        assert client.get("/_gva/elements", query_string={"key": bad}).status_code == 404


def test_colour_metrics_cover_nan_inf_and_saved_bytes(rec_src):
    latest = _latest(rec_src, "lenet")
    for metric in ("grad_absmax", "grad_zero_frac", "nonfinite", "saved_bytes", "act_zero_frac", "kind"):
        _e, _s, _k, _i, colors, _legend = _graph(rec_src, latest, metric=metric)
        assert len(colors["c"]) == colors["n"], metric
    _e, _s, _k, _i, colors, _legend = _graph(rec_src, latest, metric="saved_bytes")
    assert colors["c"].count(-1) < colors["n"]                 # ops that saved tensors are coloured


def test_big_graph_opens_folded_and_folding_toggles(syn_src):
    latest = _latest(syn_src, "big")
    _ref, _s, key, info, _c, _l = _graph(syn_src, latest)
    elements = syn_src.scene_for_key(key).elements
    assert "folded" in info and sum(e["data"].get("kind") == "module" for e in elements) > 0
    module_id = next(e["data"]["id"] for e in elements if e["data"].get("kind") == "module")
    folded = C.fold_modules(syn_src, ids.FOLD_TOGGLE, module_id, key, {"mode": "auto"}, "")
    assert folded["mode"] == "paths" and module_id[len("module:"):] not in folded["paths"]
    ref2, _s, key2, _i, _c, _l = _graph(syn_src, latest, folded=folded, key=key)
    assert key2 != key and ref2["n"] > len(elements)
    assert C.fold_modules(syn_src, ids.UNFOLD_ALL, None, key2, folded, "") == {"mode": "none"}
    assert C.fold_modules(syn_src, ids.FOLD_ALL, None, key2, folded, "") == {"mode": "all"}
    assert C.fold_modules(syn_src, ids.RUN, None, key2, folded, "?fold=none") == {"mode": "none"}
    fig = D.node_figure(syn_src, {ids.SELECTED}, module_id, key, latest, {"step": 2})
    assert fig["data"][0]["name"].startswith("grad_norm (max of members)") and fig["data"][0]["y"]
    table = str(D.node_at_step(syn_src, module_id, {"step": 2}, key, latest))
    assert "grad_norm" in table and "grad_absmax" in table


def test_fold_an_open_module_from_its_box_or_a_member(rec_src):
    latest = _latest(rec_src, "lenet")
    key = _graph(rec_src, latest)[2]
    for selected in ("group:fc1", "fc1/AddmmBackward0:0", "param:fc1.weight"):
        folded = C.fold_modules(rec_src, ids.FOLD_TOGGLE, selected, key, {"mode": "auto"}, "")
        assert folded == {"mode": "paths", "paths": ["fc1"]}, selected
    key2 = _graph(rec_src, latest, folded=folded, key=key)[2]
    panel, label, disabled = D.node_detail(rec_src, "module:fc1", key2)
    assert label == "unfold fc1" and not disabled and "folded module" in str(panel)
    again = C.fold_modules(rec_src, ids.FOLD_TOGGLE, "module:fc1", key2, folded, "")
    assert again == {"mode": "paths", "paths": []}
    assert C.fold_modules(rec_src, ids.FOLD_TOGGLE, "ReluBackward0:0", key, {"mode": "auto"}, "") is no_update


def test_search_finds_ops_modules_and_params_and_cycles(rec_src):
    latest = _latest(rec_src, "lenet")
    key = _graph(rec_src, latest)[2]
    result, info = C.search(rec_src, "fc1.weight", None, key, None)
    assert result["focus"] == "param:fc1.weight" and "1 of 1" in info
    result, info = C.search(rec_src, "relu", None, key, None)
    assert len(result["ids"]) >= 4 and all("Relu" in i for i in result["ids"])
    nxt, _ = C.search(rec_src, "relu", 1, key, result)
    assert nxt["focus"] == result["ids"][1]
    assert C.search(rec_src, "no-such-thing", None, key, None)[0]["ids"] == []
    assert C.select_node(ids.SEARCH_RESULT, None, result, "lenet", None) == result["focus"]


def test_node_detail_shows_op_shapes_saved_and_the_rule(rec_src):
    latest = _latest(rec_src, "lenet")
    key = _graph(rec_src, latest)[2]
    panel, fold_label, disabled = D.node_detail(rec_src, "fc1/AddmmBackward0:0", key)
    text = str(panel)
    assert "AddmmBackward0" in text and "(8, 120) float32" in text and "(8, 256) float32" in text
    assert "saved for backward" in text and "y = x Wᵀ + b" in text
    assert fold_label == "fold fc1" and not disabled
    fig = D.node_figure(rec_src, {ids.SELECTED}, "fc1/AddmmBackward0:0", key, latest, {"step": 4})
    assert [t["name"] for t in fig["data"]][:2] == ["grad_norm", "grad_absmax"]
    assert fig["layout"]["shapes"][0]["x0"] == 4
    assert isinstance(D.node_figure(rec_src, {ids.STEP}, "x", key, latest, {"step": 5}), Patch)
    table = D.node_at_step(rec_src, "param:fc1.weight", {"step": 4}, key, latest)
    assert "grad_norm" in str(table) and "update_ratio" in str(table)


def test_detail_of_a_hostile_module_is_text(tmp_path):
    src = DataSource(hostile_root())
    latest = _latest(src, "hostile")
    key = _graph(src, latest)[2]
    panel, _label, _disabled = D.node_detail(src, f"{HOSTILE}/AddmmBackward0:0", key)
    from dash import html
    strings = []

    def walk(c):
        if isinstance(c, str):
            strings.append(c)
        elif isinstance(c, (list, tuple)):
            for x in c:
                walk(x)
        elif isinstance(c, html.Div.__mro__[1]):
            walk(getattr(c, "children", None))
    walk(panel)
    assert HOSTILE in strings                                   # a plain string child, not markup


def test_curves_and_step_patches(rec_src):
    latest = _latest(rec_src, "lenet")
    fig = C.loss_figure(rec_src, {ids.LATEST}, latest, {"step": 5})
    assert fig["data"][0]["x"] == list(range(LENET_STEPS)) and fig["layout"]["uirevision"] == "lenet"
    assert fig["layout"]["dragmode"] == "select"
    assert isinstance(C.loss_figure(rec_src, {ids.STEP}, latest, {"step": 6}), Patch)
    options, value = C.scalar_options(latest, None)
    assert "acc" in value and all(o["value"] != "loss" for o in options)
    metrics = C.metrics_figure(rec_src, {ids.LATEST}, latest, value, {"step": 5})
    assert len(metrics["data"]) == len(value)


def test_gradient_flow_and_heatmap(rec_src):
    latest = _latest(rec_src, "lenet")
    flow = A.flow_figure(rec_src, latest, {"step": 3})
    names = flow["data"][0]["y"]
    assert "fc1.weight" in names and all(v is None or v > 0 for v in flow["data"][1]["x"])
    heat = A.heatmap_figure(rec_src, {ids.LATEST}, latest, {"step": 3})
    z, edges = heat["data"][0]["z"], heat["data"][0]["x"]
    assert len(z) == len(heat["data"][0]["y"]) == 10                 # every parameter, a row each
    assert edges == list(range(LENET_STEPS + 1))                       # one cell per recorded step
    assert all(len(row) == LENET_STEPS for row in z)


def test_version_diff_highlights_added_and_removed(rec_src):
    latest = _latest(rec_src, "dynamic")
    options, va, _o, vb = A.version_options(latest, None, None)
    assert va != vb and len(options) == len(latest["versions"])
    elements, layout, info = A.diff_view(rec_src, latest, va, vb)
    classes = " ".join(e.get("classes", "") for e in elements)
    assert ("added" in classes or "removed" in classes) and "nodes added" in str(info)
    assert A.diff_view(rec_src, latest, va, vb, layout) == (no_update, no_update, no_update)


def test_rank_compare(syn_src):
    latest = _latest(syn_src, "ddp")
    _o, a, _o2, b = A.rank_options(latest, None, None)
    assert (a, b) == (0, 1)
    fig = A.rank_figure(syn_src, latest, a, b, "grad_norm", {"step": 10})
    assert [t["name"] for t in fig["data"]] == ["rank 0", "rank 1"] and "rel. diff" in fig["layout"]["title"]["text"]
    single = A.rank_figure(syn_src, {**latest, "ranks": [0]}, 0, 0, "grad_norm", {"step": 10})
    assert "single-rank" in str(single)


def test_stats_step_uses_the_last_recorded_step(syn_src):
    assert syn_src.recorded_steps("ddp", 0)[:3] == [0, 2, 4]
    assert syn_src.stats_step("ddp", 0, 5) == 4 and syn_src.stats_step("ddp", 0, None) == 38


def test_mount_fills_slots_once():
    first = C.mount("stamp", None, False)
    assert first[-1] is True and all(c is not no_update for c in first)
    assert all(c is no_update for c in C.mount("stamp", 1, True))


def test_findings_of_the_step_are_listed_and_marked_on_the_graph(tmp_path):
    import torch

    from graphviz_autograd import Recorder

    class DeadRelu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.unused = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1), torch.nn.Linear(8, 2)
            with torch.no_grad():
                self.fc1.bias.fill_(-50.0)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = DeadRelu()
    with Recorder(model, tmp_path / "runs" / "dead", every=1, flush_interval=0) as rec:
        for step in range(2):
            loss = model(torch.randn(4, 4)).pow(2).mean()
            loss.backward()
            rec.log(step, loss=loss)
    src = DataSource(tmp_path / "runs")
    latest = _latest(src, "dead")
    out = _graph(src, latest, step=1)
    colors, legend = out[4], out[5]
    _, scene = src.scene("dead", None, 1, {"mode": "auto"})
    marked = {scene.order[i] for i in colors["m"]}
    assert any(n.startswith("ReluBackward0") for n in marked)        # dead ReLUs, on the graph
    assert "param:unused.weight" not in scene.order                   # no path to the loss: listed only
    def texts(c):
        if isinstance(c, str):
            return c
        if isinstance(c, (list, tuple)):
            return " ".join(texts(x) for x in c)
        return texts(getattr(c, "children", "") or "")
    text = texts(legend)
    assert "unused_parameter" in text and "dead_units" in text and "findings at step 1" in text
