"""Benchmark the dashboard: first paint of big graphs in headless Chromium, and callback latency.

Run: ``python benchmarks/bench_dashboard.py [--runs-dir DIR] [--repeats 3] [--skip-latency]``.

Targets: first paint of a 2,000-node graph <= 3 s and of a 10,000-node graph <= 6 s (from
navigation to the coloured graph on screen, fresh server so layouts are cold); a callback
answer <= 300 ms over HTTP for a 1,000-node graph with 10,000 recorded steps.

Every run is synthetic (``dashboard.synthetic``), written once into ``--runs-dir`` and reused.
Each first-paint sample starts a new server (``graphviz-autograd dashboard``) and a new page.
"Default" opens the graph as a user gets it (modules folded, by structure, until a laptop
screen shows it at a readable zoom); "expanded" adds ``?fold=none`` (every node drawn). Load
average is printed: the machine is shared.

``--readability`` opens the 452-node Faster R-CNN graph (torchvision
fasterrcnn_mobilenet_v3_large_fpn, random weights, traced once; synthetic statistics) on a
1366x768 page and reports what a person sees at first paint: boxes in view, the smallest
label in px, the lowest text/fill contrast of any node style, and where the graph sits.
``--url`` measures an already running dashboard instead (e.g. an older version).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from graphviz_autograd.dashboard.synthetic import write_synthetic_run  # noqa: E402

CHROMIUM = os.environ.get("GVA_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run"]
RUNS = {"g2k": dict(n_nodes=2000, n_steps=50), "g10k": dict(n_nodes=10000, n_steps=10),
        "lat1k": dict(n_nodes=1000, n_steps=10_000)}


def make_runs(root: Path, names) -> None:
    for name in names:
        if (root / name / "rank-0.gva.sqlite").exists():
            continue
        start = time.perf_counter()
        write_synthetic_run(root / name, **RUNS[name])
        print(f"wrote {name} in {time.perf_counter() - start:.1f} s", flush=True)


class Server:
    """``graphviz-autograd dashboard ROOT`` on a free loopback port, in a subprocess."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graphviz_autograd", "dashboard", str(root), "--port",
             str(self.port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdout.readline()
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("dashboard server did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def first_paint(browser, root: Path, run: str, fold: str) -> dict:
    server = Server(root)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        query = f"?run={run}" + (f"&fold={fold}" if fold != "auto" else "")
        start = time.perf_counter()
        page.goto(server.url + query)
        page.wait_for_function(
            "() => { const el = document.querySelector('#gva-graph'); return el && el._cyreg && "
            "el._cyreg.cy.nodes().length > 0 && el.getAttribute('data-painted') }",
            timeout=120_000, polling=20)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        total = time.perf_counter() - start
        info = page.evaluate("""() => {
            const el = document.querySelector('#gva-graph'), cy = el._cyreg.cy;
            const big = performance.getEntriesByType('resource')
                .filter(e => e.name.includes('/_gva/elements')).pop();
            return {nodes: cy.nodes().length, edges: cy.edges().length,
                    elements_at: big ? big.responseEnd / 1000 : null,
                    elements_kb: big ? big.transferSize / 1024 : null}; }""")
        return {"total_s": total, **info}
    finally:
        page.close()
        server.close()


CASES = ("g2k/auto", "g2k/none", "g10k/auto", "g10k/none")


def bench_first_paint(root: Path, repeats: int, cases=CASES) -> dict:
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            first_paint(browser, root, "g2k", "auto")                 # warm the OS file cache
            for run, fold in (c.split("/") for c in cases):
                samples = [first_paint(browser, root, run, fold) for _ in range(repeats)]
                times = [s["total_s"] for s in samples]
                results[f"{run}/{fold}"] = {"median_s": statistics.median(times), "all_s": times,
                                            **{k: samples[-1][k] for k in ("nodes", "edges", "elements_kb",
                                                                            "elements_at")}}
                r = results[f"{run}/{fold}"]
                print(f"first paint {run:5s} fold={fold:4s}: median {r['median_s']:.2f} s "
                      f"(all {', '.join(f'{t:.2f}' for t in times)}); {r['nodes']} nodes, "
                      f"{r['edges']} edges drawn; elements {r['elements_kb']:.0f} KiB, "
                      f"arrived at {r['elements_at']:.2f} s", flush=True)
        finally:
            browser.close()
    return results


# -- callback latency over HTTP ---------------------------------------------------------------
def _spec(app, output_key: str):
    cb = app.callback_map[output_key]
    return cb["inputs"], cb["state"]


def _post(url: str, app, output_key: str, inputs: list, state: list, changed: list[str]) -> float:
    in_spec, st_spec = _spec(app, output_key)
    body = {"output": output_key,
            "outputs": [{"id": k.split(".")[0], "property": k.split(".")[1]}
                        for k in output_key.strip(".").split("...")],
            "inputs": [{**s, "value": v} for s, v in zip(in_spec, inputs)],
            "state": [{**s, "value": v} for s, v in zip(st_spec, state)],
            "changedPropIds": changed}
    if len(body["outputs"]) == 1:
        body["outputs"] = body["outputs"][0]
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + "_dash-update-component", data=data,
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
        assert resp.status in (200, 204), resp.status
    return (time.perf_counter() - start) * 1000


def bench_latency(root: Path) -> dict:
    import random

    from graphviz_autograd.dashboard import callbacks as C
    from graphviz_autograd.dashboard import ids
    from graphviz_autograd.dashboard.app import create_app
    from graphviz_autograd.dashboard.data import DataSource

    app = create_app(root)          # only for the callback specs; requests go to the server
    src = DataSource(root)
    latest, _ = C.refresh(src, "lat1k", None, 0, None)
    keys = {k: k for k in app.callback_map}

    def key_of(*outs):
        return next(k for k in keys if all(o in k for o in outs))

    server = Server(root)
    url = server.url
    out: dict[str, list[float]] = {}
    try:
        # As the page does: picking the run starts laying its graph out (and reading the
        # heat map) in the background, so the first answers below may wait for that.
        out["run picker (starts the background prewarm)"] = [_post(
            url, app, key_of("gva-run.options"), ["?run=lat1k", None], [None, None],
            [f"{ids.LOCATION}.search"])]
        rng = random.Random(0)
        steps = [rng.randrange(latest["latest"]) for _ in range(25)]
        g_key = key_of("gva-elements.data")
        graph_key = None
        first = True
        for step in steps:
            state = {"step": step, "follow": False, "run": "lat1k"}
            body_inputs = [latest, state, {"mode": "auto"}, "grad_norm"]
            ms = _post(url, app, g_key, body_inputs, [graph_key], [f"{ids.STEP}.data"])
            if first:                   # layout; the browser then fetches the elements
                graph_key = C.graph_update(src, latest, state, {"mode": "auto"}, "grad_norm", None)[2]
                start = time.perf_counter()
                with urllib.request.urlopen(url + "_gva/elements?key=" + quote(graph_key, safe=""),
                                            timeout=60) as resp:
                    size = len(resp.read())
                fetch = (time.perf_counter() - start) * 1000
                out.setdefault("graph: first load (layout, cold)", []).append(ms)
                out.setdefault(f"graph: elements fetch ({size // 1024} KiB)", []).append(fetch)
                first = False
            else:
                out.setdefault("graph colours at a new step", []).append(ms)
        scene = src.scene_for_key(graph_key) or src.scene("lat1k", 0, 1, {"mode": "auto"})[1]
        nodes = [n.id for n in scene.graph.nodes if n.kind.value in ("op", "param")]
        fig_key, det_key, at_key = key_of("gva-node-fig.figure"), key_of("gva-detail.children"), \
            key_of("gva-detail-at-step.children")
        for node in rng.sample(nodes, 8):
            state = {"step": rng.randrange(latest["latest"]), "follow": False}
            out.setdefault("node statistics figure (10,000 steps)", []).append(
                _post(url, app, fig_key, [node, graph_key, latest, state], [], [f"{ids.SELECTED}.data"]))
            out.setdefault("node detail panel", []).append(
                _post(url, app, det_key, [node, graph_key], [], [f"{ids.SELECTED}.data"]))
            out.setdefault("node stats at step", []).append(
                _post(url, app, at_key, [node, state, graph_key], [latest], [f"{ids.STEP}.data"]))
        state = {"step": 5000, "follow": False}
        for name, key, inputs, st, changed in (
                ("loss curve (10,000 points)", key_of("gva-loss.figure"), [latest, state], [],
                 [f"{ids.LATEST}.data"]),
                ("heat map layer x step (1st: cold)", key_of("gva-heatmap.figure"), [latest, state], [],
                 [f"{ids.LATEST}.data"]),
                ("gradient flow bars", key_of("gva-flow.figure"), [latest, state], [], [f"{ids.STEP}.data"]),
                ("refresh (live poll)", key_of("gva-latest.data"), ["lat1k", 0, 5], [latest, ""],
                 [f"{ids.INTERVAL}.n_intervals"]),
                ("search", key_of("gva-search-result.data"), ["AddmmBackward0", None], [graph_key, None],
                 [f"{ids.SEARCH}.value"]),
                ("select step (slider)", key_of("gva-step.data"), [1234, None, latest],
                 [{"step": 10, "follow": False}, ""], [f"{ids.STEP_SLIDER}.value"])):
            for _ in range(3):
                out.setdefault(name, []).append(_post(url, app, key, inputs, st, changed))
    finally:
        server.close()
    for name, values in out.items():
        print(f"callback {name:42s} median {statistics.median(values):7.1f} ms, max {max(values):7.1f} ms "
              f"({len(values)} calls)", flush=True)
    return {k: {"median_ms": statistics.median(v), "max_ms": max(v)} for k, v in out.items()}


# -- readability at first paint ---------------------------------------------------------------
def make_detection_run(root: Path) -> None:
    """The real 452-node Faster R-CNN graph in a run with synthetic statistics (torch here only)."""
    if (root / "frcnn" / "rank-0.gva.sqlite").exists():
        return
    import random

    import torch
    import torchvision

    import graphviz_autograd as ga
    from graphviz_autograd.store import RunWriter

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5).train()
    images = [torch.rand(3, 224, 224)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0]]), "labels": torch.tensor([1])}]
    with ga.instrument(model):
        loss = sum(model(images, targets).values())
    graph = ga.trace(loss, model=model)
    rng = random.Random(0)
    with RunWriter(root / "frcnn", meta={"model": "fasterrcnn_mobilenet_v3_large_fpn"}) as w:
        v = w.add_graph(graph.to_json(), graph.fingerprint(), first_step=0, n_nodes=len(graph))
        for step in range(3):
            w.add_step(step, wall_time=time.time(), graph_version=v, scalars={"loss": 2.0, "lr": 1e-3},
                       stats={"node": [(n.id, {"grad_norm": 10 ** rng.uniform(-6, 1)})
                                       for n in graph.nodes if n.kind.value == "op"],
                              "param": [(p, {"grad_norm": 10 ** rng.uniform(-6, 1)}) for p in graph.params]})
    print(f"wrote frcnn ({len(graph)} nodes)", flush=True)


def _luminance(css: str) -> float:
    rgb = [int(float(v)) / 255 for v in css[css.index("(") + 1:css.index(")")].split(",")[:3]]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def readability(url: str, run: str) -> dict:
    """First paint of ``run`` on a 1366x768 page, as a person sees it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        start = time.perf_counter()
        page.goto(f"{url}?run={run}")
        page.wait_for_function(
            "() => { const el = document.querySelector('#gva-graph'); return el && el._cyreg && "
            "el._cyreg.cy.nodes().length > 0 && el.getAttribute('data-painted') }", timeout=120_000)
        painted = time.perf_counter() - start
        page.wait_for_timeout(500)
        seen = page.evaluate("""() => {
            const el = document.querySelector('#gva-graph'), cy = el._cyreg.cy;
            const r = el.getBoundingClientRect(), out = [];
            const vw = Math.min(r.width, innerWidth - r.left), vh = Math.min(r.height, innerHeight - r.top);
            cy.nodes().forEach(n => {
                const b = n.renderedBoundingBox({includeLabels: false});
                if (b.x2 < 0 || b.y2 < 0 || b.x1 > vw || b.y1 > vh) return;
                out.push({label: n.style('label'), group: n.isParent(),
                          font: parseFloat(n.renderedStyle('font-size')),
                          fg: n.style('color'), bg: n.style('background-color')});
            });
            const c = cy.scratch('_gvaColors') || {};
            return {boxes: out, total: cy.nodes().length, top: r.top, bottom: r.bottom,
                    palette: (c.p || []).map((p, i) => [c.t ? c.t[i] : '#222222', p])}; }""")
        browser.close()
    labelled = [b for b in seen["boxes"] if b["label"]]
    hexrgb = lambda h: f"rgb({int(h[1:3], 16)}, {int(h[3:5], 16)}, {int(h[5:7], 16)})"  # noqa: E731
    pairs = [(b["fg"], b["bg"]) for b in labelled if not b["group"]]
    pairs += [(hexrgb(t), hexrgb(f)) for t, f in seen["palette"]]
    result = {"paint_s": painted, "visible_boxes": len(seen["boxes"]), "boxes_drawn": seen["total"],
              "smallest_label_px": min((b["font"] for b in labelled), default=None),
              "min_contrast": min((_contrast(a, b) for a, b in pairs), default=None),
              "graph_top_px": seen["top"], "graph_bottom_px": seen["bottom"]}
    print("readability " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in result.items()), flush=True)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/gva-bench-dashboard"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-paint", action="store_true")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES,
                    help="first-paint cases: run/fold")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--readability", action="store_true", help="first paint of a 452-node graph")
    ap.add_argument("--url", help="measure readability on this running dashboard (runs dir: --runs-dir)")
    ap.add_argument("--smoke", action="store_true", help="a tiny run (the suite's rot check)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.skip_latency, args.repeats, args.cases = True, 1, ["g2k/auto"]
        RUNS["g2k"] = dict(n_nodes=200, n_steps=5)
        args.runs_dir = args.runs_dir.with_name(args.runs_dir.name + "-smoke")
    if args.readability or args.url:
        make_detection_run(args.runs_dir)
        if args.url:
            readability(args.url.rstrip("/") + "/", "frcnn")
            return
        server = Server(args.runs_dir)
        try:
            results = {"readability": readability(server.url, "frcnn")}
        finally:
            server.close()
        if args.skip_paint and args.skip_latency:
            return
    names = ([] if args.skip_paint else ["g2k", "g10k"]) + ([] if args.skip_latency else ["lat1k"])
    make_runs(args.runs_dir, names)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    results = {"loadavg": os.getloadavg()}
    if not args.skip_paint:
        results["first_paint"] = bench_first_paint(args.runs_dir, args.repeats, args.cases)
    if not args.skip_latency:
        results["latency"] = bench_latency(args.runs_dir)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
