"""The real dashboard (``graphviz-autograd dashboard`` in a subprocess) in headless Chromium.

Skipped, saying why, when Chromium or Playwright is missing. ``GVA_SCREENSHOT=1`` refreshes
``docs/dashboard.png`` (it is also written when missing).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("GVA_CHROMIUM", "/usr/bin/chromium")
if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or make system-deps)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
pytest.importorskip("dash")

from test_dashboard_callbacks import HOSTILE, hostile_root, recorded_root  # noqa: E402

from graphviz_autograd.dashboard.synthetic import synthetic_graph  # noqa: E402
from graphviz_autograd.store import RunWriter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "dashboard.png"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]
CY = "document.querySelector('#gva-graph')"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_steps(writer: RunWriter, version: int, steps: range) -> None:
    g = synthetic_graph(60)
    ops = [n.id for n in g.nodes if n.kind.value == "op"]
    for step in steps:
        writer.add_step(step, wall_time=time.time(), graph_version=version,
                        scalars={"loss": 2.0 / (step + 1)},
                        stats={"node": [(nid, {"grad_norm": 0.1 * (i + 1) / (step + 1)})
                                        for i, nid in enumerate(ops)]})
    writer.flush()


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash-browser")
    shutil.copytree(recorded_root() / "lenet", root / "lenet")
    shutil.copytree(hostile_root() / "hostile", root / "hostile")
    g = synthetic_graph(60)
    writer = RunWriter(root / "live", flush_interval=3600)
    version = writer.add_graph(g.to_json(), g.fingerprint(), first_step=0, n_nodes=len(g))
    _live_steps(writer, version, range(5))
    with RunWriter(root / "nograph") as w:            # only losses so far (record=() or no graph)
        for step in range(3):
            w.add_step(step, wall_time=time.time(), graph_version=None, scalars={"loss": 1.0})
    yield root, writer, version
    writer.close()


@pytest.fixture(scope="module")
def server(runs_root):
    root = runs_root[0]
    port = _free_port()
    code = ("import atexit, sys; atexit.register(lambda: print('torch-loaded', 'torch' in sys.modules, "
            "flush=True)); from graphviz_autograd.cli import main; main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", code, "dashboard", str(root), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    first = proc.stdout.readline()
    assert url in first, first + proc.stderr.read()
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield url
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=20)
    assert "torch-loaded False" in out, f"the dashboard process imported torch: {out}"


def launch_chromium():
    """Headless Chromium for a module's tests (a generator for a fixture to ``yield from``)."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                              args=ARGS)
        yield b
        b.close()


def serve_dashboard(root):
    """``graphviz-autograd dashboard root`` in a real process; yields its URL, stops it with
    Ctrl-C (a generator for a fixture to ``yield from``)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "graphviz_autograd", "dashboard", str(root),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in first, first + proc.stderr.read()
    yield f"http://127.0.0.1:{port}/"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.gva_errors = errors
    yield page
    page.close()


def _open(page, url: str, timeout: float = 45_000) -> None:
    page.goto(url)
    page.wait_for_function(f"() => {{ const el = {CY}; return el && el._cyreg && "
                           "el._cyreg.cy.nodes().length > 0 && el.getAttribute('data-painted') }",
                           timeout=timeout, polling=100)


def _click_node(page, node_id: str) -> None:
    page.locator("#gva-graph").scroll_into_view_if_needed()
    x, y = page.evaluate(f"""(id) => {{
        const el = {CY}; const cy = el._cyreg.cy; const n = cy.getElementById(id);
        const r = el.getBoundingClientRect(); let p = n.renderedPosition();
        if (p.x < 10 || p.y < 10 || p.x > r.width - 10 || p.y > r.height - 10) {{
            cy.center(n); p = n.renderedPosition(); }}
        return [r.left + p.x, r.top + p.y]; }}""", node_id)
    page.mouse.click(x, y)


def _click_loss_point(page, step: int) -> None:
    page.wait_for_function("() => { const gd = document.querySelector('#gva-loss .js-plotly-plot');"
                           " return gd && gd._fullData && gd._fullData.length > 0 }", timeout=30_000)
    page.locator("#gva-loss").scroll_into_view_if_needed()
    x, y = page.evaluate("""(step) => {
        const gd = document.querySelector('#gva-loss .js-plotly-plot');
        const fl = gd._fullLayout, t = gd._fullData[0], i = t.x.indexOf(step);
        const r = gd.getBoundingClientRect();
        return [r.left + fl._size.l + fl.xaxis.l2p(fl.xaxis.c2l(step)),
                r.top + fl._size.t + fl.yaxis.l2p(fl.yaxis.c2l(t.y[i]))]; }""", step)
    page.mouse.click(x, y)


def test_select_step_then_click_a_node_shows_its_details(server, page):
    _open(page, server + "?run=lenet")
    _click_loss_point(page, 4)
    page.wait_for_function("() => document.querySelector('#gva-step-label').innerText.startsWith('step 4')",
                           timeout=15_000)
    page.wait_for_function(f"() => ({CY}.getAttribute('data-painted') || '').endsWith('|4|grad_norm')",
                           timeout=15_000)
    _click_node(page, "fc1/AddmmBackward0:0")
    detail = page.locator("#gva-detail")
    detail.get_by_text("(8, 120) float32").wait_for(timeout=15_000)
    text = detail.inner_text()
    assert "AddmmBackward0" in text and "module" in text and "fc1" in text
    assert "(8, 256) float32" in text and "saved for backward" in text and "y = x Wᵀ + b" in text
    page.wait_for_function("() => { const gd = document.querySelector('#gva-node-fig .js-plotly-plot');"
                           " return gd && gd.layout && gd.layout.shapes && gd.layout.shapes[0].x0 === 4 }",
                           timeout=15_000)
    page.locator("#gva-detail-at-step").get_by_text("at step 4").wait_for(timeout=15_000)
    if os.environ.get("GVA_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert page.gva_errors == []


def test_hostile_module_name_renders_literally(server, page):
    _open(page, server + "?run=hostile")
    page.fill("#gva-search", "img src")
    page.press("#gva-search", "Enter")
    detail = page.locator("#gva-detail")
    detail.get_by_text(f"{HOSTILE}/AddmmBackward0:0").wait_for(timeout=15_000)
    assert HOSTILE in detail.inner_text()
    assert page.evaluate("() => document.querySelectorAll('#gva-detail img, .gva img').length") == 0
    label = page.evaluate(f"() => {CY}._cyreg.cy.getElementById('param:{HOSTILE}.weight').data('label')")
    box = page.evaluate(f"() => {CY}._cyreg.cy.getElementById('group:{HOSTILE}').data('label')")
    assert label.startswith("weight") and box == HOSTILE      # named inside its module's box
    page.wait_for_timeout(300)
    assert page.gva_errors == []                 # includes: no alert() dialog ran


def test_live_refresh_keeps_zoom_selection_and_elements(server, page, runs_root):
    _root, writer, version = runs_root
    _open(page, server + "?run=live&fold=none")
    node = "blocks.0.attn/SoftmaxBackward0:0"
    _click_node(page, node)
    page.locator("#gva-detail").get_by_text("SoftmaxBackward0").first.wait_for(timeout=15_000)
    box = page.locator("#gva-graph").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(400)
    before = page.evaluate(f"() => {{ const el = {CY}, cy = el._cyreg.cy; return [cy.zoom(), cy.pan(), "
                           "el.getAttribute('data-fitted'), el.getAttribute('data-painted')] }")
    _live_steps(writer, version, range(5, 10))
    page.locator("#gva-status").get_by_text("steps 0–9").wait_for(timeout=20_000)
    page.wait_for_function(f"(old) => {CY}.getAttribute('data-painted') !== old", arg=before[3],
                           timeout=15_000)
    after = page.evaluate(f"() => {{ const el = {CY}, cy = el._cyreg.cy; return [cy.zoom(), cy.pan(), "
                          "el.getAttribute('data-fitted'), cy.$(':selected').map(n => n.id())] }")
    assert after[0] == pytest.approx(before[0]) and after[1] == pytest.approx(before[1])
    assert after[2] == before[2]                 # same graph key: elements were not resent
    assert node in after[3] and "SoftmaxBackward0" in page.locator("#gva-detail").inner_text()
    assert page.evaluate("() => document.querySelector('#gva-step-label').innerText").startswith("step 9")
    assert page.gva_errors == []


def test_run_without_graph_says_so_and_still_plots(server, page):
    page.goto(server + "?run=nograph")
    page.locator("#gva-graph-info").get_by_text("no graph recorded yet").wait_for(timeout=30_000)
    page.wait_for_function("() => { const gd = document.querySelector('#gva-loss .js-plotly-plot');"
                           " return gd && gd._fullData && gd._fullData[0] && gd._fullData[0].x.length === 3 }",
                           timeout=30_000)
    page.wait_for_timeout(300)
    assert page.gva_errors == []
