"""The real dashboard server over HTTP: path traversal refused, and 20 concurrent clients polling
the live callbacks while a run is being written (bounded: loopback only, fixed requests and time)."""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("dash")

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "graphviz_autograd"]
CLIENTS, REQUESTS_PER_CLIENT, DEADLINE_S = 20, 12, 240

WRITER = """
import sys, torch, torch.nn.functional as F
sys.path.insert(0, {repo!r})
import graphviz_autograd as ga
from graphviz_autograd.examples.models import LeNet5
torch.manual_seed(0)
model = LeNet5(); opt = torch.optim.SGD(model.parameters(), lr=0.01)
with ga.Recorder(model, sys.argv[1], optimizer=opt, every=1, flush_interval=0.2, meta={{"model": sys.argv[2]}}) as rec:
    for step in range(int(sys.argv[3])):
        x = torch.randn(8, 1, 28, 28); y = torch.randint(0, 10, (8,))
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
        rec.log(step, loss=loss)
        if step == 0:
            rec.flush(); print("ready", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, payload, timeout=20):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/_dash-update-component",
                                 data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def refresh_payload(run, n):
    return {"output": "..gva-latest.data...gva-status.children..",
            "outputs": [{"id": "gva-latest", "property": "data"}, {"id": "gva-status", "property": "children"}],
            "inputs": [{"id": "gva-run", "property": "value", "value": run},
                       {"id": "gva-rank", "property": "value", "value": 0},
                       {"id": "gva-interval", "property": "n_intervals", "value": n}],
            "state": [{"id": "gva-latest", "property": "data", "value": None}],
            "changedPropIds": ["gva-interval.n_intervals"]}


def _start_writer(run_dir, name, steps):
    script = run_dir.parent / f"writer-{name}.py"
    script.write_text(WRITER.format(repo=str(REPO)))
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), name, str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
    return proc


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*CLI, "dashboard", str(root), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("dashboard did not start: " + proc.stdout.read()[-2000:])
    yield root, port
    proc.terminate()
    proc.wait(timeout=20)


def test_runs_outside_the_root_are_never_opened(server, tmp_path):
    root, port = server
    outside = tmp_path / "outside"
    _start_writer(outside, "SECRET_MODEL", 2).wait(timeout=120)
    os.symlink(outside, root / "link")
    for name in ("../outside", str(outside), "%2e%2e/outside", "..%2Foutside", "link", "./../outside",
                 "link/../../outside", "/etc/passwd", "..\\outside"):
        status, body = _post(port, refresh_payload(name, 1))
        assert status == 200 and b"SECRET_MODEL" not in body, name
        assert b"no run named" in body or b"cannot read run" in body, (name, body[:300])
    for url in ("/?run=..%2Foutside", "/_gva/elements?key=..%2F..%2Foutside%7C0%7Cv1",
                "/_gva/elements?key=/etc/passwd"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{url}", timeout=10) as r:
                assert b"SECRET_MODEL" not in r.read()
        except urllib.error.HTTPError as exc:
            assert exc.code in (400, 403, 404)


def test_twenty_clients_poll_live_callbacks_while_a_run_is_written(server):
    root, port = server
    writer = _start_writer(root / "live", "LiveNet", 400)
    latencies, errors, seen = [], [], []
    lock = threading.Lock()
    stop_at = time.time() + DEADLINE_S

    def client(k):
        for i in range(REQUESTS_PER_CLIENT):
            if time.time() > stop_at:
                return
            t0 = time.perf_counter()
            try:
                status, body = _post(port, refresh_payload("live", k * 1000 + i))
                latest = json.loads(body)["response"]["gva-latest"]["data"] if status == 200 else None
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                if latest:
                    seen.append((k, latest["n_steps"]))
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE_S + 30)
    writer.kill()
    assert not errors, errors[:5]
    assert len(latencies) == CLIENTS * REQUESTS_PER_CLIENT
    per_client = {}
    for k, n in seen:
        per_client.setdefault(k, []).append(n)
    assert all(v == sorted(v) for v in per_client.values())      # steps only grow
    lat = sorted(latencies)
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    print(f"\n{len(lat)} refresh requests from {CLIENTS} clients: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms")


def test_serves_with_a_real_wsgi_server_and_prints_one_line(tmp_path):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*CLI, "dashboard", str(tmp_path), "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("graphviz-autograd dashboard: ") and f"http://127.0.0.1:{port}/" in first
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and "graphviz-autograd" in r.headers.get("Server", "")  # waitress
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert out == "", f"more than one line printed: {out!r}"
    for banner in ("Dash is running", "Serving Flask app", "development server", "Debug mode"):
        assert banner not in out + err + first
    assert "Traceback" not in err


def test_a_taken_port_is_reported_before_anything_is_printed(tmp_path):
    with socket.socket() as other:                 # another program listening there
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = subprocess.run([*CLI, "dashboard", str(tmp_path / "runs"), "--port", str(port)],
                              env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode != 0 and proc.stdout == ""
    assert f"port {port}" in proc.stderr and f"--port {port + 1}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_listening_beyond_loopback_warns(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([*CLI, "dashboard", str(tmp_path), "--host", "0.0.0.0", "--port", str(port)],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert f"http://0.0.0.0:{port}/" in proc.stdout.readline()
        warning = proc.stderr.readline()
        assert "WARNING" in warning and "network" in warning
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
