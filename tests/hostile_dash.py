"""Helpers for the hostile-input tests of the real dashboard server: a runs root holding good,
damaged, long-named and unreadable entries; the server in a subprocess; every callback fired.

Every callback is found from the server's own ``/_dash-dependencies`` (so a new callback is
covered without touching the tests) and fired for a run with plausible inputs.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from test_damaged_stores import DAMAGES, write_good_store

from graphviz_autograd.store import RunWriter

REPO = Path(__file__).resolve().parents[1]
DAMAGED = {"bad-meta-null": "meta-null-value", "bad-chunk-cut": "chunk-cut-short",
           "bad-meta-page": "flipped-meta-page"}
GOOD = ("good-a", "good-b")
LONG = {"long-10k": 10_000, "long-100k": 100_000, "long-1m": 1_000_000}


def long_name(n: int) -> str:
    return ("metric_" + "x" * n)[:n]


def build_root(root: Path, *, damaged=True, unreadable=True, long=()) -> Path:
    """Good runs, damaged copies of a good store, runs with very long metric names and entries
    no one can read (a symlink loop, a store path that is a directory, a dangling link)."""
    root.mkdir(parents=True, exist_ok=True)
    good = write_good_store(root / GOOD[0])
    shutil.copytree(root / GOOD[0], root / GOOD[1])
    if damaged:
        for name, damage in DAMAGED.items():
            (root / name).mkdir()
            shutil.copyfile(good, root / name / good.name)
            DAMAGES[damage](root / name / good.name)
    for name in long:
        with RunWriter(root / name, flush_interval=3600) as w:
            for step in range(20):
                w.add_step(step, wall_time=1000.0 + step, graph_version=None,
                           scalars={"loss": 1.0 / (step + 1), long_name(LONG[name]): 1.0 + step % 3})
    if unreadable:
        os.symlink("loop", root / "loop")                                  # loops to itself
        (root / "dirstore" / "rank-0.gva.sqlite").mkdir(parents=True)      # a directory, not a file
        (root / "loopstore").mkdir()
        os.symlink("rank-0.gva.sqlite", root / "loopstore" / "rank-0.gva.sqlite")
        os.symlink(root / "nowhere", root / "dangling")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """The dashboard CLI serving ``root``; its stderr goes to a file (a pipe nobody reads would
    fill up with logged tracebacks and block the server)."""
    port = port or free_port()
    log = root.parent / f"dashboard-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "graphviz_autograd", "dashboard", str(root),
                             "--port", str(port)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    proc.gva_log = log
    first = proc.stdout.readline()
    assert f":{port}/" in first, first + log.read_text()[-2000:]
    return proc, port


def post(port: int, body: bytes, timeout: float = 30,
         path: str = "/_dash-update-component") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def dependencies(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-dependencies", timeout=30) as r:
        return [d for d in json.loads(r.read()) if not d.get("clientside_function")]


def _outputs(dep: dict):
    out = dep["output"]
    if out.startswith(".."):
        parts = [p for p in out.strip(".").split("...")]
        return [dict(zip(("id", "property"), p.rsplit(".", 1))) for p in parts]
    return dict(zip(("id", "property"), out.rsplit(".", 1)))


def payload(dep: dict, values: dict[str, object]) -> dict:
    """The request the browser sends for ``dep``, each input and state ``values["id.prop"]``."""
    def one(d):
        key = f"{d['id']}.{d['property']}"
        return {"id": d["id"], "property": d["property"], "value": values.get(key)}
    inputs = [one(d) for d in dep["inputs"]]
    return {"output": dep["output"], "outputs": _outputs(dep), "inputs": inputs,
            "state": [one(d) for d in dep["state"]],
            "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"] if inputs else []}


def latest_of(port: int, run: str) -> tuple[dict | None, str]:
    """The LATEST store and status line the server answers for ``run``."""
    dep = next(d for d in dependencies(port) if d["output"].startswith("..gva-latest.data"))
    status, body = post(port, json.dumps(payload(dep, {"gva-run.value": run, "gva-rank.value": 0,
                                                       "gva-interval.n_intervals": 1})).encode())
    assert status == 200, (run, status, body[:500])
    response = json.loads(body)["response"]
    return response.get("gva-latest", {}).get("data"), str(response.get("gva-status", {}).get("children"))


def run_values(run: str, latest: dict | None, step: int | None = 4) -> dict[str, object]:
    """Plausible inputs of every callback for ``run`` (what the page would hold)."""
    return {"gva-run.value": run, "gva-rank.value": 0, "gva-latest.data": latest,
            "gva-step.data": {"step": step, "follow": False, "run": run},
            "gva-step-slider.value": step, "gva-metric.value": "grad_norm",
            "gva-folded.data": {"mode": "auto"}, "gva-interval.n_intervals": 3,
            "gva-runs.value": [run], "gva-cmp-kind.value": "param", "gva-cmp-key.value": "0.weight",
            "gva-cmp-stat.value": "grad_norm", "gva-search.value": "Addmm",
            "gva-rank-a.value": 0, "gva-rank-b.value": 0, "gva-rank-stat.value": "grad_norm",
            "gva-version-a.value": 1, "gva-version-b.value": 1, "gva-location.search": f"?run={run}",
            "gva-scalars.value": (latest or {}).get("scalars", [])[:3],
            "gva-selected.data": "0/AddmmBackward0:0", "gva-painted.data": 1}


def fire_all(port: int, values: dict[str, object]) -> list[tuple[str, int, bytes]]:
    """Fire every server-side callback with ``values``; ``(output, status, body)`` of each."""
    results = []
    for dep in dependencies(port):
        status, body = post(port, json.dumps(payload(dep, values)).encode())
        results.append((dep["output"], status, body))
    return results


def stop(proc: subprocess.Popen) -> str:
    """Stop the server; what it wrote on stderr."""
    proc.terminate()
    try:
        proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc.gva_log.read_text()


def wait_ready(port: int, deadline_s: float = 60) -> None:
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"the dashboard on port {port} did not answer")
