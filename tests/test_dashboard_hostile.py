"""The real dashboard server (CLI subprocess, waitress) against hostile runs roots and requests:
damaged stores among good runs, unreadable entries, very long metric names, oversized and deeply
nested bodies, forged callback inputs. Every callback comes from the server's own
``/_dash-dependencies``; none may answer HTTP 500."""
from __future__ import annotations

import json
import socket
import time

import psutil
import pytest

pytest.importorskip("dash")

from hostile_dash import (DAMAGED, GOOD, LONG, build_root, dependencies, fire_all,  # noqa: E402
                          latest_of, payload, post, run_values, start_server, stop, wait_ready)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = build_root(tmp_path_factory.mktemp("hostile") / "runs", long=tuple(LONG))
    proc, port = start_server(root)
    wait_ready(port)
    yield root, port, proc
    log = stop(proc)
    assert "Traceback" not in log, log[-3000:]


def _callback(port: int, output_prefix: str) -> dict:
    return next(d for d in dependencies(port) if d["output"].startswith(output_prefix))


def test_damaged_stores_show_their_error_and_the_others_still_serve(server):
    root, port, _proc = server
    for run, needle in (("bad-meta-null", "meta row 'rank' holds NoneType"),
                        ("bad-meta-page", "is not a readable graphviz-autograd run store")):
        latest, status = latest_of(port, run)
        assert latest is None
        assert str(root / run / "rank-0.gva.sqlite") in status and needle in status, status
        assert "delete" not in status
        answers = fire_all(port, run_values(run, None))
        assert all(st in (200, 204) for _o, st, _b in answers), [(o, st) for o, st, _b in answers]
    latest, status = latest_of(port, "bad-chunk-cut")      # the steps read; the statistics do not
    answers = fire_all(port, run_values("bad-chunk-cut", latest))
    assert all(st in (200, 204) for _o, st, _b in answers), [(o, st) for o, st, _b in answers]
    flow = next(b for o, _st, b in answers if o == "gva-flow.figure").decode()
    assert "rank-0.gva.sqlite" in flow and "damaged" in flow, flow[-600:]
    for run in GOOD:                                         # the good runs are untouched
        latest, status = latest_of(port, run)
        assert status.startswith("run · steps 0–50 (23 logged)"), status
        assert all(st in (200, 204) for _o, st, _b in fire_all(port, run_values(run, latest)))


def test_unreadable_entries_are_skipped_and_named(server):
    _root, port, _proc = server
    dep = _callback(port, "..gva-run.options")
    st, body = post(port, json.dumps(payload(dep, {"gva-location.search": ""})).encode())
    assert st == 200, body[:500]
    names = [o["value"] for o in json.loads(body)["response"]["gva-run"]["options"]]
    assert names == sorted([*GOOD, *DAMAGED, *LONG])
    st, body = post(port, json.dumps(payload(_callback(port, "gva-skipped.children"), {})).encode())
    note = json.dumps(json.loads(body)["response"])
    assert st == 200 and "skipped 4 unreadable entries" in note, note
    for entry, why in (("loop", "too many levels of symbolic links"), ("dangling", "no such file"),
                       ("dirstore/rank-0.gva.sqlite", "not a file"), ("loopstore/rank-0.gva.sqlite",
                                                                      "too many levels")):
        assert f"{entry} ({why}" in note, (entry, note)


def test_a_50_mb_body_gets_413_at_once_and_memory_stays_flat(server):
    _root, port, proc = server
    rss = psutil.Process(proc.pid).memory_info().rss
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.perf_counter()
        s.sendall(b"POST /_dash-update-component HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: %d\r\n\r\n" % (50 * 2**20))
        try:
            for _ in range(50):                  # the server may answer and close before the end
                s.sendall(b"a" * 2**20)
        except OSError:
            pass
        head = s.recv(200)
        elapsed = time.perf_counter() - start
    assert head.startswith(b"HTTP/1.1 413"), head
    assert elapsed < 2.0, elapsed
    assert psutil.Process(proc.pid).memory_info().rss - rss < 20 * 2**20


def test_deep_and_malformed_requests_get_400(server):
    _root, port, _proc = server
    deep = b'{"output": "x", "outputs": {}, "inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for body in (deep, b"[" * 100_000, b"not json", b"null", b"[]", b"{}", b'{"output": 5}',
                 b'{"output": "gva-step-label.children", "outputs": {}, "inputs": "x"}'):
        st, answer = post(port, body)
        assert st == 400 and b"Fix:" in answer, (body[:40], st, answer[:300])


FORGED = [[0], 10**19, "x", -1, 1e400, -10**19, {"a": [1]}, "../../etc/passwd", [None], 3.5, True,
          "A" * 20_000]


def _raw(values: dict, dep: dict) -> bytes:
    return json.dumps(payload(dep, values)).replace("Infinity", "1e400").encode()


def test_forged_ranks_and_steps_get_400_naming_the_input(server):
    _root, port, _proc = server
    latest, _status = latest_of(port, "good-a")
    refresh = _callback(port, "..gva-latest.data")
    for rank in ([0], 10**19, "x", 1e400):
        st, body = post(port, _raw({**run_values("good-a", latest), "gva-rank.value": rank}, refresh))
        assert st == 400 and b"gva-rank.value" in body and b"Fix:" in body, (rank, st, body[:300])
    step = _callback(port, "gva-step-label.children")
    for value in ([0], "x", 1e400, 10**19):
        forged = {**run_values("good-a", latest), "gva-step.data": {"step": value, "follow": False}}
        st, body = post(port, _raw(forged, step))
        assert st == 400 and b"gva-step.data" in body, (value, st, body[:300])
    st, body = post(port, _raw({**run_values("good-a", latest),
                                "gva-step.data": {"step": -1, "follow": False}}, step))
    assert st == 200 and b"step -1" in body, body[:300]          # a number: shown as asked
    for name in ("no-such-run", "../good-a", "/etc", "good-a/../../x", "..\\good-a"):
        st, body = post(port, _raw({**run_values(name, None), "gva-rank.value": 0}, refresh))
        assert st == 200 and b"no run named" in body, (name, st, body[:300])


@pytest.mark.slow
def test_no_forged_input_of_any_callback_gives_500(server):
    _root, port, _proc = server
    latest, _status = latest_of(port, "good-a")
    counts: dict[int, int] = {}
    for dep in dependencies(port):
        for d in dep["inputs"] + dep["state"]:
            for value in FORGED:
                st, body = post(port, _raw({**run_values("good-a", latest),
                                            f"{d['id']}.{d['property']}": value}, dep))
                assert st < 500, (dep["output"], d, value, body[:300])
                counts[st] = counts.get(st, 0) + 1
    assert counts.get(400, 0) > 100 and counts.get(200, 0) > 100, counts


def test_every_server_callback_input_has_a_check_in_the_guard(tmp_path):
    """A new callback input gets its type in dashboard/guard.py INPUTS (the one place), or
    forged values of it reach the callback unchecked."""
    from graphviz_autograd.dashboard.app import create_app
    from graphviz_autograd.dashboard.guard import INPUTS

    client = create_app(tmp_path).server.test_client()
    deps = [d for d in client.get("/_dash-dependencies").get_json() if not d.get("clientside_function")]
    used = {f"{i['id']}.{i['property']}" for d in deps for i in d["inputs"] + d["state"]}
    assert used - set(INPUTS) == set(), "add these to dashboard/guard.py INPUTS"
