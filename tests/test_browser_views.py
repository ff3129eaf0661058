"""Views a person can read and trust, checked in real Chromium against the real server.

One server and one browser for the module. Runs: LeNet-5 recorded every 2 steps for 80
steps (40 recorded steps, an lr schedule), a net with an unused layer and dead ReLUs, three
optimizers on one MLP, and the real graphs of a 452-node Faster R-CNN and a BERT-like
encoder (traced, with synthetic statistics). Every assertion is computed from the page:
plotly's figure data, cytoscape's rendered styles and positions, element rectangles.
"""
from __future__ import annotations

import random
import time

import pytest

from test_browser_dashboard import CY, launch_chromium, serve_dashboard, sync_api  # noqa: F401

from graphviz_autograd.export.style import contrast
from graphviz_autograd.store import RunWriter

pytestmark = [pytest.mark.browser, pytest.mark.slow]
LAPTOP = {"width": 1366, "height": 768}


def _digits(step: int):
    import torch

    g = torch.Generator().manual_seed(step)
    y = torch.randint(0, 10, (16,), generator=g)
    return torch.randn(16, 1, 28, 28, generator=g) * 0.3 + y.view(-1, 1, 1, 1) / 10, y


def _record(model, run_dir, steps: int, every: int, opt, sched=None) -> None:
    import torch.nn.functional as F

    import graphviz_autograd as ga

    with ga.Recorder(model, run_dir, optimizer=opt, every=every) as rec:
        for step in range(steps):
            x, y = _digits(step)
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss, acc=(out.argmax(1) == y).float().mean().item())
            if sched is not None:
                sched.step()


def _dead_net():
    import torch
    import torch.nn as nn

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 32)
            self.unused, self.head = nn.Linear(32, 32), nn.Linear(32, 10)
            with torch.no_grad():
                self.fc2.bias.fill_(-50.0)          # every ReLU after fc2 is dead

        def forward(self, x):
            return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))
    return Dead()


def _graph_run(run_dir, graph, steps: int = 3) -> None:
    """A run holding a real traced graph, with plausible synthetic statistics for each node."""
    rng = random.Random(0)
    with RunWriter(run_dir, meta={"model": run_dir.name}) as w:
        version = w.add_graph(graph.to_json(), graph.fingerprint(), first_step=0, n_nodes=len(graph))
        for step in range(steps):
            norm = lambda: 10 ** rng.uniform(-6, 1)  # noqa: E731
            w.add_step(step, wall_time=time.time(), graph_version=version,
                       scalars={"loss": 2.0 - 0.1 * step, "lr": 1e-3},
                       stats={"node": [(n.id, {"grad_norm": norm()}) for n in graph.nodes
                                       if n.kind.value == "op"],
                              "param": [(p, {"grad_norm": norm()}) for p in graph.params]})


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    import torch
    import torch.nn as nn

    from graphviz_autograd.examples.models import LeNet5
    from view_models import bert_graph, detection_graph

    root = tmp_path_factory.mktemp("views")
    torch.manual_seed(0)
    lenet = LeNet5()
    opt = torch.optim.SGD(lenet.parameters(), lr=0.05)
    _record(lenet, root / "heat", 80, 2, opt, torch.optim.lr_scheduler.ExponentialLR(opt, 0.97))
    dead = _dead_net()
    _record(dead, root / "dead", 12, 1, torch.optim.SGD(dead.parameters(), lr=1e-4))
    for name, make in (("sgd", lambda p: torch.optim.SGD(p, lr=0.01)),
                       ("adam", lambda p: torch.optim.Adam(p, lr=1e-3))):
        torch.manual_seed(1)
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        _record(mlp, root / name, 40, 5, make(mlp.parameters()))
    _graph_run(root / "frcnn", detection_graph())
    _graph_run(root / "bert", bert_graph())
    return root


@pytest.fixture(scope="module")
def server(runs_root):
    yield from serve_dashboard(runs_root)


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport=LAPTOP)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.gva_errors = errors
    yield page
    page.close()


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function(f"() => {{ const el = {CY}; return el && el._cyreg && "
                           "el._cyreg.cy.nodes().length > 0 && el.getAttribute('data-painted') }",
                           timeout=60_000, polling=100)


def _figure(page, fig_id: str, timeout: float = 30_000) -> dict:
    """Plotly's own view of a figure: its full data and layout (what it drew)."""
    page.wait_for_function(f"() => {{ const gd = document.querySelector('#{fig_id} .js-plotly-plot');"
                           " return gd && gd._fullData && gd._fullData.length > 0 }", timeout=timeout)
    return page.evaluate(f"""() => {{
        const gd = document.querySelector('#{fig_id} .js-plotly-plot');
        const axes = {{}};
        for (const [k, v] of Object.entries(gd._fullLayout)) {{
            if (/^[xy]axis\\d*$/.test(k)) axes[k] = {{type: v.type, title: v.title && v.title.text}};
        }}
        return {{data: gd._fullData.map(t => ({{type: t.type, name: t.name, x: t.x, y: t.y, z: t.z,
                                                 xaxis: t.xaxis, yaxis: t.yaxis, text: t.text,
                                                 showlegend: t.showlegend}})),
                 axes: axes}}; }}""")


VISIBLE = f"""() => {{
    const el = {CY}, cy = el._cyreg.cy, r = el.getBoundingClientRect();
    const vw = Math.min(r.width, window.innerWidth - r.left), vh = Math.min(r.height, window.innerHeight - r.top);
    const out = [];
    cy.nodes().forEach(n => {{
        const b = n.renderedBoundingBox({{includeLabels: false}});
        if (b.x2 < 0 || b.y2 < 0 || b.x1 > vw || b.y1 > vh) return;
        out.push({{id: n.id(), group: n.isParent(), label: n.style('label'),
                   font: parseFloat(n.renderedStyle('font-size')),
                   bg: n.style('background-color'), fg: n.style('color'),
                   opacity: parseFloat(n.style('background-opacity'))}});
    }});
    return {{nodes: out, zoom: cy.zoom()}};
}}"""


def _rgb(css: str) -> str:
    parts = [int(float(v)) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3]]
    return "#" + "".join(f"{v:02x}" for v in parts)


@pytest.mark.parametrize("run, shown", [("frcnn", 452), ("bert", 233)])
def test_first_paint_of_a_big_graph_is_readable(server, page, run, shown):
    _open(page, server + f"?run={run}")
    seen = page.evaluate(VISIBLE)
    boxes = seen["nodes"]
    labelled = [n for n in boxes if n["label"]]
    assert 0 < len(boxes) <= 80, len(boxes)             # a screenful, not hundreds of dots
    assert min(n["font"] for n in labelled) >= 11, seen["zoom"]
    info = page.locator("#gva-graph-info").inner_text()
    assert f"{shown} nodes" in info and "folded:" in info   # says what is folded
    assert page.gva_errors == []


def test_the_graph_is_above_the_fold_on_a_laptop(server, page):
    _open(page, server + "?run=heat")
    rect = page.evaluate(f"() => {CY}.getBoundingClientRect().toJSON()")
    assert rect["top"] < 200 and rect["bottom"] <= LAPTOP["height"] and rect["height"] >= 400


def test_text_contrast_of_every_node_style(server, page):
    _open(page, server + "?run=frcnn")
    styles = page.evaluate(VISIBLE)["nodes"]
    palette = page.evaluate(f"() => {CY}._cyreg.cy.scratch('_gvaColors')")
    pairs = {(_rgb(n["fg"]), _rgb(n["bg"])) for n in styles if n["label"] and not n["group"]}
    pairs |= set(zip(palette["t"], palette["p"]))         # every colour a gradient can give
    pairs |= {(palette["tnone"], palette["none"]), (palette["tnan"], palette["nan"]),
              (palette["tzero"], palette["zero"])}
    page.locator("#gva-metric").click()                 # and the plain kind colours
    page.get_by_text("node kind", exact=True).click()
    page.wait_for_function(f"() => ({CY}.getAttribute('data-painted') || '').endsWith('|kind')",
                           timeout=15_000)
    kinds = page.evaluate(VISIBLE)["nodes"]
    pairs |= {(_rgb(n["fg"]), _rgb(n["bg"])) for n in kinds if n["label"] and not n["group"]}
    assert len(pairs) > 20
    worst = min(pairs, key=lambda p: contrast(*p))
    assert contrast(*worst) >= 4.5, worst


def test_collapse_all_fills_the_viewport(server, page):
    _open(page, server + "?run=bert")
    before = page.evaluate(f"() => {CY}.getAttribute('data-fitted')")
    page.click("#gva-fold-all")
    page.wait_for_function(f"(old) => {CY}.getAttribute('data-fitted') !== old && "
                           f"{CY}._cyreg.cy.nodes().length < 12", arg=before, timeout=20_000)
    page.wait_for_timeout(300)
    fill = page.evaluate(f"""() => {{
        const el = {CY}, cy = el._cyreg.cy, b = cy.nodes().renderedBoundingBox();
        return [b.x1, b.y1, b.x2, b.y2, el.clientWidth, el.clientHeight]; }}""")
    x1, y1, x2, y2, width, height = fill
    assert x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height     # all of it in view
    assert max((x2 - x1) / width, (y2 - y1) / height) >= 0.6         # and not a speck in a corner


def test_heat_map_holds_one_cell_per_recorded_step(server, page):
    _open(page, server + "?run=heat")
    fig = _figure(page, "gva-heatmap")
    heat = fig["data"][0]
    assert heat["type"] == "heatmap" and len(heat["x"]) == 40 + 1       # edges of 40 cells
    assert len(heat["y"]) == 10
    for row in heat["z"]:
        assert len(row) == 40 and all(v is not None for v in row)      # every cell drawn


def test_learning_rate_gets_a_log_axis(server, page):
    _open(page, server + "?run=heat")
    fig = _figure(page, "gva-metrics")
    lr = [a for a in fig["axes"].values() if a["title"] and a["title"].startswith("lr")]
    assert lr and lr[0]["type"] == "log"
    loss = _figure(page, "gva-loss")
    assert loss["data"][0]["x"][-1] == 79


def test_zero_and_missing_gradients_are_shown_and_listed_first(server, page):
    _open(page, server + "?run=dead")
    flow = _figure(page, "gva-flow")
    labels = flow["data"][0]["y"]
    assert labels[:2] == ["unused.weight", "unused.bias"]            # no gradient: first
    problem = next(t for t in flow["data"] if t["name"] == "problem")
    states = dict(zip(problem["y"], problem["text"]))
    assert states["unused.weight"] == "no gradient" and states["fc1.weight"] == "exactly 0"
    assert labels.index("head.bias") == len(labels) - 1               # the one that learns: last
    legend = {t["name"] for t in flow["data"] if t["showlegend"]}
    assert {"exactly 0", "no gradient"} <= legend
    heat = _figure(page, "gva-heatmap")
    rows = heat["data"][0]["y"]
    codes = dict(zip(rows, heat["data"][1]["z"]))
    assert rows[:2] == ["unused.weight", "unused.bias"]
    assert set(codes["fc1.weight"]) == {1} and set(codes["unused.weight"]) == {2}   # ZERO, MISSING
    assert all(v is None for v in codes["head.bias"])
    assert {"exactly 0", "no gradient"} <= {t["name"] for t in heat["data"] if t["showlegend"]}
    legend = page.locator("#gva-legend").inner_text()
    assert "exactly 0" in legend                                      # the graph says it too


def test_two_runs_overlay_on_one_chart(server, page):
    _open(page, server + "?runs=sgd,adam")
    fig = _figure(page, "gva-cmp-fig")
    loss = [t for t in fig["data"] if t["yaxis"] == "y"]
    assert {t["name"] for t in loss} == {"sgd", "adam"}
    assert all(len(t["x"]) == 40 for t in loss)
    assert {t["xaxis"] for t in fig["data"]} == {"x"}                 # one shared step axis
    assert "gva-first" in page.get_attribute("#gva-compare", "class")   # the comparison opens first
    assert page.evaluate("() => document.querySelector('#gva-compare').getBoundingClientRect().top") < 100
    assert page.gva_errors == []
