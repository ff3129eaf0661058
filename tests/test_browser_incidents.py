"""Incidents, the spread over ranks and the optimizer's update rule, in real Chromium against
the real server, on real recorded runs.

Runs (made once for the module): ``nan``, a small net trained with SGD + momentum under a
GradScaler whose loss spikes at step 23 (one corrupted batch) and turns NaN at step 37
(``sqrt`` of a negative input; every=10, so neither is a recorded step); ``calm``, the same
net without either; ``ddp``, a gathered run of 4 gloo CPU processes under torchrun
(tests/jobs/gather_job.py: rank 2 fed a corrupted batch at step 4, rank 3 a NaN metric at
step 5). Everything asserted is read from the page. Screenshots go to /tmp/dashfeat/.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_browser_dashboard import CY, _click_node, launch_chromium, serve_dashboard, sync_api  # noqa: F401

import graphviz_autograd as ga

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = Path("/tmp/dashfeat")
JOBS = Path(__file__).with_name("jobs")


def _train(run_dir: Path, *, spike: int | None, nan_from: int | None, steps: int = 50) -> None:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class SqrtNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x, shift: float):
            return self.fc2(torch.sqrt(self.fc1(x).abs() - shift))     # NaN once shift > |h|

    torch.manual_seed(0)
    model = SqrtNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.amp.GradScaler("cpu")           # a step with NaN gradients is skipped
    with ga.Recorder(model, run_dir, optimizer=opt, every=10, scaler=amp, incidents=True) as rec:
        for step in range(steps):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
            if step == spike:
                x, y = x * 8, y * 8             # one corrupted batch: a loss spike
            opt.zero_grad()
            shift = 100.0 if nan_from is not None and step >= nan_from else 0.0
            loss = F.mse_loss(model(x, shift), y)
            amp.scale(loss).backward()
            amp.step(opt)
            amp.update()
            rec.log(step, loss=loss)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    SHOTS.mkdir(exist_ok=True)
    root = tmp_path_factory.mktemp("incidents")
    _train(root / "nan", spike=23, nan_from=37)
    _train(root / "calm", spike=None, nan_from=None, steps=20)
    out = tmp_path_factory.mktemp("gather")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           str(JOBS / "gather_job.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    shutil.move(str(out / "machine-0" / "run"), str(root / "ddp"))
    return root


@pytest.fixture(scope="module")
def server(runs_root):
    yield from serve_dashboard(runs_root)


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.gva_errors = errors
    yield page
    page.close()


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function(f"() => {{ const el = {CY}; return el && el._cyreg && "
                           "el._cyreg.cy.nodes().length > 0 && el.getAttribute('data-painted') }",
                           timeout=60_000, polling=100)


def _traces(page, fig_id: str) -> list[dict]:
    page.wait_for_function(f"() => {{ const gd = document.querySelector('#{fig_id} .js-plotly-plot');"
                           " return gd && gd._fullData && gd._fullData.length > 0 }", timeout=30_000)
    return page.evaluate(f"""() => document.querySelector('#{fig_id} .js-plotly-plot')._fullData.map(
        t => ({{name: t.name, x: t.x, y: t.y, customdata: t.customdata, text: t.text,
                hovertext: t.hovertext}}))""")


def _click_point(page, fig_id: str, trace_name: str, index: int) -> None:
    """A real mouse click on point ``index`` of the trace called ``trace_name``."""
    page.locator(f"#{fig_id}").scroll_into_view_if_needed()
    x, y = page.evaluate("""([figId, name, i]) => {
        const gd = document.querySelector('#' + figId + ' .js-plotly-plot');
        const fl = gd._fullLayout, t = gd._fullData.find(d => d.name === name);
        const r = gd.getBoundingClientRect();
        return [r.left + fl._size.l + fl.xaxis.l2p(fl.xaxis.c2l(t.x[i])),
                r.top + fl._size.t + fl.yaxis.l2p(fl.yaxis.c2l(t.y[i]))]; }""", [fig_id, trace_name, index])
    page.mouse.click(x, y)


def _step_label(page) -> str:
    return page.locator("#gva-step-label").inner_text()


def _slider(page) -> int:
    return int(page.locator("#gva-step-slider [role=slider]").first.get_attribute("aria-valuenow"))


def _outlined(page, step: int) -> list[str]:
    page.wait_for_function(f"() => {CY}.getAttribute('data-incident-step') === '{step}'",
                           timeout=20_000)
    return sorted(filter(None, page.evaluate(f"() => {CY}.getAttribute('data-incident')").split(" ")))


def test_incidents_are_listed_under_the_loss_and_marked_on_it(server, page, runs_root):
    with ga.open_run(runs_root / "nan") as run:
        incidents = run.incidents()
        loss = dict(zip(*run.loss()))
    assert [(i.step, i.kind) for i in incidents] == [(23, "spike"), (37, "nonfinite")]
    _open(page, server + "?run=nan")
    marks = next(t for t in _traces(page, "gva-loss") if t["name"] == "incidents")
    rows = page.locator("#gva-incidents .gva-incident")
    assert rows.count() == len(incidents)
    assert marks["x"] == [i.step for i in incidents] and marks["customdata"] == [0, 1]
    assert marks["y"][0] == pytest.approx(loss[23])          # the spike: on the curve
    assert loss[37] != loss[37] and marks["y"][1] == pytest.approx(max(v for v in loss.values() if v == v))
    assert marks["text"] == ["", "NaN/Inf"]                   # a NaN loss: at the top, labelled
    assert "loss = nan at step 37" in marks["hovertext"][1] and "`sqrt`" in marks["hovertext"][1]
    for i, inc in enumerate(incidents):
        text = rows.nth(i).inner_text()
        assert f"step {inc.step}" in text and inc.summary[:40] in text
        assert rows.nth(i).get_attribute("title") == inc.summary        # the whole of it on hover
    box = rows.nth(1).bounding_box()
    font = page.evaluate("() => parseFloat(getComputedStyle(document.querySelector("
                         "'.gva-incident-summary')).fontSize)")
    assert font >= 11 and box["height"] <= 3 * 18          # two lines at most, clamped
    page.locator("#gva-loss").scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / "incidents-list.png"))
    assert page.gva_errors == []


def test_a_click_selects_the_incident_step_and_outlines_its_nodes(server, page, runs_root):
    with ga.open_run(runs_root / "nan") as run:
        spike, nan = run.incidents()
        graph = run.graph_at(nan.step)
    _open(page, server + "?run=nan")
    _traces(page, "gva-loss")
    page.locator("#gva-incidents .gva-incident").nth(1).click()
    drawn = set(page.evaluate(f"() => {CY}._cyreg.cy.nodes().map(n => n.id())"))
    outlined = _outlined(page, nan.step)
    assert outlined == sorted(set(nan.nodes) & drawn & set(n.id for n in graph.nodes)) and outlined
    assert _step_label(page).startswith(f"step {nan.step}") and _slider(page) == nan.step
    widths = page.evaluate(f"""() => {{ const cy = {CY}._cyreg.cy;
        return [cy.nodes('.incident').map(n => parseFloat(n.style('border-width'))),
                cy.nodes().not('.incident').map(n => parseFloat(n.style('border-width')))]; }}""")
    assert min(widths[0]) > max(widths[1])                   # thicker than any other border
    assert "gva-incident-on" in page.locator(".gva-incident").nth(1).get_attribute("class")
    page.wait_for_function("() => document.querySelector('.gva-incidents-head').innerText.includes("
                           "'outlined in red in the graph: SqrtBackward0:0')", timeout=10_000)
    page.locator("#gva-graph").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "incident-outlined.png"))
    # the spike's marker on the loss curve: its step, and no nodes (a spike names none)
    _click_point(page, "gva-loss", "incidents", 0)
    assert _outlined(page, spike.step) == sorted(set(spike.nodes))
    assert _step_label(page).startswith(f"step {spike.step}") and _slider(page) == spike.step
    assert "gva-incident-on" in page.locator(".gva-incident").nth(0).get_attribute("class")
    page.wait_for_function("() => document.querySelector('.gva-incidents-head').innerText.includes("
                           "'names no node')", timeout=10_000)
    # another step: the outline and the chosen row go (they belong to the incident's step)
    _click_point(page, "gva-loss", "loss", 10)
    page.wait_for_function(f"() => {CY}.getAttribute('data-incident-step') === '' && "
                           "!document.querySelector('.gva-incident-on')", timeout=15_000)
    assert _slider(page) == 10 and page.evaluate(f"() => {CY}._cyreg.cy.nodes('.incident').length") == 0
    assert page.gva_errors == []


def test_a_run_without_incidents_shows_no_incident_panel(server, page, runs_root):
    with ga.open_run(runs_root / "calm") as run:
        assert run.incidents() == []
    _open(page, server + "?run=calm")
    names = [t["name"] for t in _traces(page, "gva-loss")]
    assert names == ["loss"]
    assert not page.locator("#gva-incidents").is_visible()
    assert page.locator(".gva-incident").count() == 0
    assert not page.locator("#gva-spread-card").is_visible()       # nor a spread: not gathered


def test_a_parameter_node_shows_its_momentum_update_rule(server, page):
    _open(page, server + "?run=nan")
    _click_node(page, "param:fc1.weight")
    rule = page.locator(".gva-update-rule")
    rule.wait_for(timeout=15_000)
    text = rule.inner_text()
    assert "b ← 0.9 · b + g" in text and "fc1.weight ← fc1.weight − 0.01 · b" in text
    head = page.locator("#gva-detail h4", has_text="optimizer.step()").inner_text()
    assert "SGD with momentum" in head and "from the run" in head
    page.locator("#gva-detail").screenshot(path=str(SHOTS / "update-rule.png"))
    _click_node(page, next(n for n in page.evaluate(f"() => {CY}._cyreg.cy.nodes().map(n => n.id())")
                           if n.startswith("AddmmBackward0") or "Addmm" in n))
    page.wait_for_function("() => !document.querySelector('.gva-update-rule')", timeout=15_000)


def test_a_gathered_run_draws_the_spread_band_and_shows_an_outliers_detail(server, page, runs_root):
    with ga.open_run(runs_root / "ddp") as run:
        keys = run.keys("param@mean")
        spreads = {k: run.rank_spread(k, "grad_norm") for k in keys}
        outliers = run.outliers()
        detail = {(o.step, o.rank): o.detail for o in outliers}
    _open(page, server + "?run=ddp")
    card = page.locator("#gva-spread-card")
    card.wait_for(state="visible", timeout=20_000)
    traces = {t["name"]: t for t in _traces(page, "gva-spread-fig")}
    assert set(traces) == {"max", "min", "mean", "outlier ranks"}
    key = page.locator("#gva-spread-key").inner_text().strip()
    widest = max(keys, key=lambda k: max((hi - lo) / abs(m) for lo, m, hi in
                                         zip(spreads[k].min, spreads[k].mean, spreads[k].max)))
    assert key == widest
    s = spreads[key]
    assert traces["mean"]["x"] == s.steps
    for lo, mean, hi in zip(traces["min"]["y"], traces["mean"]["y"], traces["max"]["y"]):
        assert lo <= mean <= hi
    assert traces["max"]["y"] == pytest.approx(s.max) and traces["min"]["y"] == pytest.approx(s.min)
    marks = traces["outlier ranks"]
    assert [tuple(c) for c in marks["customdata"]] == [(o.step, o.rank) for o in outliers]
    assert (4, 2) in detail and detail[(4, 2)]                      # the corrupted batch
    page.screenshot(path=str(SHOTS / "spread.png"), full_page=False)
    card.screenshot(path=str(SHOTS / "spread-card.png"))
    i = [tuple(c) for c in marks["customdata"]].index((4, 2))
    _click_point(page, "gva-spread-fig", "outlier ranks", i)
    box = page.locator("#gva-spread-detail")
    box.locator("h4", has_text="rank 2 at step 4").wait_for(timeout=15_000)
    with ga.open_run(runs_root / "ddp") as run:
        own = run.rank_stats_at(4, 2, "param", ("grad_norm",))["grad_norm"][key]
        why = [o.why for o in run.outliers(4) if o.rank == 2][0]
    text = box.inner_text()
    assert why in text and "grad_norm" in text
    assert marks["y"][i] == pytest.approx(own)                    # the marker: the rank's own value
    card.screenshot(path=str(SHOTS / "spread-detail.png"))
    missing = [j for j, c in enumerate(marks["customdata"]) if not detail[tuple(c)]]
    if missing:                                 # an outlier between recorded steps: only scalars
        j = missing[0]
        step, rank = marks["customdata"][j]
        _click_point(page, "gva-spread-fig", "outlier ranks", j)
        box.locator("h4", has_text=f"rank {rank} at step {step}").wait_for(timeout=15_000)
        assert "were not stored" in box.inner_text()
    _click_point(page, "gva-loss", "loss", 4)               # another step: the band's marker follows
    page.wait_for_function("() => { const gd = document.querySelector('#gva-spread-fig .js-plotly-plot');"
                           " return gd.layout.shapes && gd.layout.shapes[0].x0 === 4 }", timeout=15_000)
    assert page.gva_errors == []


def test_selecting_a_parameter_node_shows_its_spread(server, page, runs_root):
    _open(page, server + "?run=ddp")
    page.locator("#gva-spread-card").wait_for(state="visible", timeout=20_000)
    _traces(page, "gva-spread-fig")
    current = page.locator("#gva-spread-key").inner_text().strip()
    other = next(k for k in ("0.weight", "2.bias", "0.bias") if k != current)
    _click_node(page, f"param:{other}")
    page.wait_for_function("(k) => document.querySelector('#gva-spread-key').innerText.trim() === k",
                           arg=other, timeout=15_000)
    page.wait_for_function("(k) => { const gd = document.querySelector('#gva-spread-fig .js-plotly-plot');"
                           " return gd && gd.layout.title && gd.layout.title.text.includes('of ' + k + ' over') }",
                           arg=other, timeout=15_000)
    assert page.gva_errors == []
