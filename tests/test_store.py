"""Tests of the run store: real SQLite files in tmp_path, real subprocesses."""
from __future__ import annotations

import ast
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from graphviz_autograd.store.chunks import unpack_values
from graphviz_autograd.errors import RunNotFoundError, SchemaVersionError, StoreError
from graphviz_autograd.store import (STATS, STORE_SCHEMA_VERSION, RankReader, RunWriter, Series,
                                     open_run, store_filename)

REPO = Path(__file__).resolve().parents[1]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _node_stats(n: int, step: int) -> dict[str, list]:
    return {"node": [(f"n{i}", {"grad_norm": float(step * 100 + i)}) for i in range(n)]}


def _write_steps(writer: RunWriter, steps, n_keys: int = 3) -> None:
    for step in steps:
        writer.add_step(step, wall_time=1000.0 + step, graph_version=None,
                        scalars={"loss": 1.0 / (step + 1)}, stats=_node_stats(n_keys, step))


def test_round_trip(tmp_path):
    run_dir = tmp_path / "run"
    with RunWriter(run_dir, meta={"model": "mlp", "config": {"lr": 0.1}}) as writer:
        version = writer.add_graph('{"nodes": []}', "fp-a", first_step=0, n_nodes=7)
        for step in range(5):
            writer.add_step(step, wall_time=1000.0 + step, graph_version=version,
                            scalars={"loss": 2.0 - step * 0.25, "lr": 0.1},
                            stats={"param": [("fc.weight", {"grad_norm": step + 0.5, "param_norm": 3.0}),
                                             ("fc.bias", {"grad_norm": step + 0.25})],
                                   "node": [("op:AddmmBackward0:1", {"grad_mean": -step * 1.0})],
                                   "module": [("fc", {"act_mean": 0.5, "act_sat_frac": 0.01})]})
    assert (run_dir / "rank-0.gva.sqlite").is_file()
    with open_run(run_dir) as run:
        assert run.path == run_dir and run.ranks == [0] and run.world_size == 1
        assert run.meta["model"] == "mlp" and run.meta["config"] == {"lr": 0.1}
        assert run.meta["format"] == "graphviz-autograd-run" and run.meta["rank"] == 0
        assert run.meta["schema_version"] == STORE_SCHEMA_VERSION and run.meta["created"] > 0
        assert run.steps() == [0, 1, 2, 3, 4] and run.latest_step() == 4
        assert run.scalar_names() == ["loss", "lr"]
        assert run.loss() == Series([0, 1, 2, 3, 4], [2.0, 1.75, 1.5, 1.25, 1.0])
        assert run.series("lr").values == [0.1] * 5 and run.series("nope") == Series([], [])
        assert run.keys("param") == ["fc.weight", "fc.bias"]
        assert run.keys("node") == ["op:AddmmBackward0:1"] and run.keys("module") == ["fc"]
        assert run.param_series("fc.weight").values == [0.5, 1.5, 2.5, 3.5, 4.5]
        assert run.param_series("fc.weight", "param_norm").values == [3.0] * 5
        assert run.param_series("fc.bias", "param_norm") == Series([], [])  # NULL rows skipped
        assert run.node_series("op:AddmmBackward0:1", "grad_mean").values[-1] == -4.0
        with pytest.raises(KeyError, match="no graph node 'no-such-node'"):
            run.node_series("no-such-node")
        assert run.module_series("fc").values == [0.5] * 5
        assert run.module_series("fc", "act_sat_frac").steps == [0, 1, 2, 3, 4]
        assert run.stats_at(2, "param") == {"fc.weight": 2.5, "fc.bias": 2.25}
        assert run.stats_at(2, "param", "param_norm") == {"fc.weight": 3.0}
        assert run.stats_at(99, "param") == {}
        assert run.has_key("param", "fc.bias") and not run.has_key("node", "fc.bias")
        assert [tuple(v) for v in run.graph_versions()] == [(1, "fp-a", 0, 7)]
        assert run.graph_json() == '{"nodes": []}' and run.version_at(3) == 1
        reader = run.rank(0)
        assert isinstance(reader, RankReader) and reader.rank == 0 and reader.meta == run.meta


def test_graph_dedupe_version_at_and_lazy_graph(tmp_path, monkeypatch):
    with RunWriter(tmp_path, flush_interval=0) as writer:
        assert writer.add_graph('{"g": 1}', "fp1", first_step=0, n_nodes=3) == 1
        for step in range(3):
            writer.add_step(step, wall_time=0.0, graph_version=1, scalars={})
        assert writer.add_graph('{"g": 1}', "fp1", first_step=3, n_nodes=3) == 1  # same structure
        writer.add_step(3, wall_time=0.0, graph_version=None, scalars={})
        assert writer.add_graph('{"g": 2}', "fp2", first_step=4, n_nodes=5) == 2
        writer.add_step(4, wall_time=0.0, graph_version=2, scalars={})
        writer.add_step(5, wall_time=0.0, graph_version=1, scalars={})
        with pytest.raises(StoreError, match="unknown graph_version 3"):
            writer.add_step(6, wall_time=0.0, graph_version=3, scalars={})
    run = open_run(tmp_path)
    assert [tuple(v) for v in run.graph_versions()] == [(1, "fp1", 0, 3), (2, "fp2", 4, 5)]
    assert [run.version_at(s) for s in (-1, 0, 2, 3, 4, 5, 100)] == [None, 1, 1, 1, 2, 1, 1]
    assert run.graph_json(1) == '{"g": 1}' and run.graph_json() == '{"g": 2}'
    with pytest.raises(StoreError, match=r"no graph version 9 .*available: \[1, 2\]"):
        run.graph_json(9)
    calls = []
    from graphviz_autograd.store import reader as reader_module
    monkeypatch.setattr(reader_module, "from_json", lambda text: calls.append(text) or json.loads(text))
    assert run.graph() == {"g": 2} and run.graph(1) == {"g": 1}
    assert run.graph_at(4) == {"g": 2} and run.graph_at(5) == {"g": 1} and run.graph_at(-5) is None
    assert run.graph(2) is run.graph()  # parsed once per version
    assert calls == ['{"g": 2}', '{"g": 1}']


def test_real_graph_round_trip(tmp_path):
    from graphviz_autograd.graph import serialize
    from graphviz_autograd.graph.model import Graph, Node, NodeKind

    graph = Graph(nodes=(Node(id="param:w", kind=NodeKind.PARAM, op="AccumulateGrad"),),
                  edges=(), roots=())
    with RunWriter(tmp_path) as writer:
        version = writer.add_graph(serialize.to_json(graph), graph.fingerprint(), first_step=0,
                                   n_nodes=len(graph))
        writer.add_step(0, wall_time=0.0, graph_version=version, scalars={"loss": 1.0})
    run = open_run(tmp_path)
    assert run.graph() == graph and run.graph_at(0) == graph
    assert run.graph_versions()[0].fingerprint == graph.fingerprint()


def test_no_graph_yet(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={"loss": 1.0})
    with pytest.raises(StoreError, match="no graph recorded yet"):
        open_run(tmp_path).graph_json()


class _Scalar:
    """Stands in for a 0-d tensor / numpy scalar: converts with float()."""

    def __float__(self) -> float:
        return 0.75


def test_nan_inf_none_round_trip(tmp_path):
    nan, inf = float("nan"), float("inf")
    values = {"grad_norm": nan, "grad_mean": inf, "grad_std": -inf, "grad_absmax": None,
              "grad_zero_frac": 0.0, "grad_nan": 1, "grad_inf": True, "param_norm": _Scalar()}
    with RunWriter(tmp_path) as writer:
        writer.add_step(0, wall_time=0.0, graph_version=None,
                        scalars={"loss": nan, "lr": inf, "m": None, "z": -inf},
                        stats={"param": [("w", values), ("v", {"grad_norm": 1.0, "grad_mean": nan})]})
        writer.add_step(1, wall_time=0.0, graph_version=None, scalars={"loss": 1.0},
                        stats={"param": [("w", {"grad_norm": 2.0})]})
    run = open_run(tmp_path)
    loss = run.loss()
    assert loss.steps == [0, 1] and math.isnan(loss.values[0]) and loss.values[1] == 1.0
    assert run.series("lr").values == [inf] and run.series("z").values == [-inf]
    assert run.series("m") == Series([], [])  # a None scalar is NULL: skipped in series
    assert set(run.scalar_names()) == {"loss", "lr", "m", "z"}
    at0 = {stat: run.stats_at(0, "param", stat).get("w", "missing") for stat in STATS}
    assert math.isnan(at0["grad_norm"]) and type(at0["grad_norm"]) is float
    assert (at0["grad_mean"], at0["grad_std"]) == (inf, -inf)
    assert at0["grad_absmax"] == "missing" and at0["act_mean"] == "missing"  # NULL: not applicable
    assert (at0["grad_zero_frac"], at0["grad_nan"], at0["grad_inf"], at0["param_norm"]) == (0.0, 1.0, 1.0, 0.75)
    keys, steps, grid = run.matrix("param", "grad_absmax")
    assert keys == ["w", "v"] and steps == [0, 1] and grid == [[None, None], [None, None]]
    _, _, grid = run.matrix("param", "grad_norm")
    assert math.isnan(grid[0][0]) and grid[0][1] == 2.0 and grid[1] == [1.0, None]
    series = run.param_series("v", "grad_mean")
    assert series.steps == [0] and math.isnan(series.values[0])
    db = sqlite3.connect(tmp_path / store_filename(0))  # None everywhere is NULL, NaN is a value
    absmax, norm, mean = db.execute("SELECT grad_absmax, grad_norm, grad_mean FROM chunks "
                                    "WHERE key_id = 1").fetchone()
    assert absmax is None and math.isnan(unpack_values(norm)[0]) and unpack_values(norm)[1] == 2.0
    assert unpack_values(mean) == [inf, None]           # None beside a value: the MISSING marker


def test_bad_input_is_rejected_and_leaves_no_partial_step(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=3600)
    good = {"param": [("w", {"grad_norm": 1.0})]}
    with pytest.raises(StoreError, match=r"unknown stat names \['grad_nrom'\].*valid stats: grad_norm, "):
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={},
                        stats={**good, "node": [("n", {"grad_nrom": 1.0})]})
    with pytest.raises(StoreError, match="unknown key kind 'nodes'; valid kinds: param, node, module"):
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={}, stats={"nodes": []})
    with pytest.raises(StoreError, match="step 0, param .w., grad_norm must be a number or None, got .abc."):
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={},
                        stats={"param": [("w", {"grad_norm": "abc"})]})
    with pytest.raises(StoreError, match="step 0: scalar .loss. must be a number or None, got <object object"):
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={"loss": object()})
    with pytest.raises(StoreError, match="graph_json must be JSON text"):
        writer.add_graph({"nodes": []}, "fp", first_step=0, n_nodes=0)
    writer.add_step(1, wall_time=0.0, graph_version=None, scalars={"loss": 1.0}, stats=good)
    writer.close()
    run = open_run(tmp_path)
    assert run.steps() == [1] and run.stats_at(0, "param") == {} and run.loss().steps == [1]
    assert run.keys("param") == ["w"] and run.keys("node") == []  # no key from a refused step
    with pytest.raises(StoreError, match="unknown stat 'bogus'; valid stats: grad_norm"):
        run.node_series("n", "bogus")
    with pytest.raises(StoreError, match="valid stats"):
        run.matrix("node", "bogus")
    with pytest.raises(StoreError, match="unknown key kind 'weights'"):
        run.keys("weights")


def test_flush_interval_batching(tmp_path):
    writer = RunWriter(tmp_path / "a", flush_interval=3600)
    reader = open_run(tmp_path / "a")
    _write_steps(writer, range(10))
    assert reader.latest_step() is None and reader.steps() == [] and reader.keys("node") == []
    writer.flush()
    assert reader.steps() == list(range(10)) and reader.node_series("n2").values[-1] == 902.0
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        _write_steps(writer, [10])

    writer = RunWriter(tmp_path / "b", flush_interval=0.3)
    reader = open_run(tmp_path / "b")
    _write_steps(writer, [0])
    assert reader.latest_step() is None
    deadline = time.monotonic() + 5     # no add_step comes: the background flusher writes step 0
    while reader.latest_step() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert reader.steps() == [0]
    _write_steps(writer, [1, 2])
    writer.close()                      # close flushes
    assert reader.steps() == [0, 1, 2]

    with RunWriter(tmp_path / "c", flush_interval=0) as writer:
        reader = open_run(tmp_path / "c")
        for step in range(3):
            _write_steps(writer, [step])
            assert reader.latest_step() == step


def test_reader_picks_up_new_keys(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=0)
    _write_steps(writer, [0], n_keys=1)
    run = open_run(tmp_path)
    assert run.keys("node") == ["n0"] and not run.has_key("node", "n5")
    with pytest.raises(KeyError, match="'n5'"):  # miss: cache refreshed, still unknown
        run.node_series("n5")
    _write_steps(writer, [1], n_keys=6)
    assert run.has_key("node", "n5") and run.node_series("n5") == Series([1], [105.0])
    writer.close()


def test_disk_full_raises_and_keeps_buffer(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=3600)
    _write_steps(writer, [0])
    writer.flush()
    # Simulate a full disk: SQLite refuses to grow the file past max_page_count (SQLITE_FULL).
    pages = writer._conn.execute("PRAGMA page_count").fetchone()[0]
    writer._conn.execute(f"PRAGMA max_page_count={pages}")
    _write_steps(writer, range(1, 200), n_keys=50)
    with pytest.raises(StoreError, match=r"cannot write 199 buffered steps to .*rank-0\.gva\.sqlite.*full"):
        writer.flush()
    assert open_run(tmp_path).steps() == [0]  # nothing of the failed flush is visible
    writer._conn.execute("PRAGMA max_page_count=1073741823")
    writer.flush()  # retry succeeds with the kept buffer
    run = open_run(tmp_path)
    assert run.steps() == list(range(200)) and len(run.stats_at(199)) == 50
    writer.close()


_READER_CHILD = """
import json, sys, time
from graphviz_autograd.store import open_run
run = open_run(sys.argv[1])
target, n_keys = int(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
last, polls, mid_run, errors = -1, 0, 0, []
deadline = time.time() + 120
while time.time() < deadline and last < target:
    polls += 1
    latest = run.latest_step()
    if latest is not None:
        if latest < last:
            errors.append(f"latest step went back from {last} to {latest}")
        stats = run.stats_at(latest, "node")
        if len(stats) != n_keys:
            errors.append(f"step {latest} visible with {len(stats)} of {n_keys} stats")
        steps = run.steps()
        if steps != list(range(len(steps))) or steps[-1] < latest:
            errors.append(f"steps not contiguous up to {latest}")
        if run.loss().steps[-1] < latest:
            errors.append(f"loss missing at {latest}")
        keys, cols, grid = run.matrix("node", "grad_norm", max_steps=20)
        if any(value is None for row in grid for value in row):
            errors.append("matrix hole")
        mid_run += latest < target
        last = latest
    time.sleep(0.002)
print(json.dumps({"polls": polls, "last": last, "mid_run": mid_run, "errors": errors[:5]}))
"""


def test_concurrent_reader_process(tmp_path):
    n_keys, n_steps = 20, 500
    writer = RunWriter(tmp_path, flush_interval=0.01)
    child = subprocess.Popen([sys.executable, "-c", _READER_CHILD, str(tmp_path), str(n_steps - 1),
                              str(n_keys)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=_child_env())
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for step in range(n_steps):
            _write_steps(writer, [step], n_keys=n_keys)
            time.sleep(0.002)
        writer.close()
        out, err = child.communicate(timeout=150)
    finally:
        child.kill()
    assert child.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["errors"] == [] and report["last"] == n_steps - 1, report
    assert report["mid_run"] >= 5, report  # the reader really polled while the writer wrote


_KILLED_WRITER_CHILD = """
import sys, time
from graphviz_autograd.store import RunWriter
writer = RunWriter(sys.argv[1], flush_interval=3600)
stats = {"node": [(f"n{i}", {"grad_norm": float(i), "grad_mean": 0.5}) for i in range(40)]}
step = 0
print("ready", flush=True)
while True:
    writer.add_step(step, wall_time=time.time(), graph_version=None, scalars={"loss": 1.0 / (step + 1)},
                    stats=stats)
    if step % 7 == 6:
        writer.flush()
        print(step, flush=True)
    step += 1
"""


@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_writer_keeps_flushed_steps(tmp_path, attempt):
    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.05, 0.6)
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER_CHILD, str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_child_env())
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        lines.append(child.stdout.readline())  # wait for the first flush, then kill at random
        reader.start()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    reader.join(timeout=30)
    flushed = [int(line) for line in lines if line.endswith("\n")]
    assert child.returncode == -signal.SIGKILL and flushed, (seed, child.stderr.read())
    last = flushed[-1]
    run = open_run(tmp_path)
    steps = run.steps()
    assert steps[: last + 1] == list(range(last + 1)), (seed, last, steps[-1])
    assert (len(steps) - 1 - last) % 7 == 0  # anything beyond the last print is a whole flush
    assert run.loss().steps == steps
    for step in (0, last // 2, last, steps[-1]):
        assert len(run.stats_at(step, "node")) == 40, (seed, step)


def _make_sqlite(path: Path, user_version: int, tables: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(f"{tables} PRAGMA user_version={user_version};")
    db.close()


def test_newer_schema_is_refused(tmp_path):
    store = tmp_path / store_filename(0)
    _make_sqlite(store, STORE_SCHEMA_VERSION + 1, "CREATE TABLE future(x);")
    for attempt in (lambda: RunWriter(tmp_path), lambda: open_run(tmp_path), lambda: open_run(store)):
        with pytest.raises(SchemaVersionError) as info:
            attempt()
        message = str(info.value)
        assert str(store) in message and f"version {STORE_SCHEMA_VERSION + 1}" in message
        assert f"version {STORE_SCHEMA_VERSION} at most" in message and "upgrade" in message
    with RunWriter(tmp_path, overwrite=True) as writer:  # explicit overwrite replaces it
        _write_steps(writer, [0])
    assert open_run(tmp_path).steps() == [0]


def test_garbage_and_foreign_files_are_refused(tmp_path):
    store = tmp_path / "g" / store_filename(0)
    store.parent.mkdir()
    store.write_bytes(b"definitely not sqlite " * 100)
    for attempt in (lambda: RunWriter(store.parent), lambda: open_run(store.parent)):
        with pytest.raises(StoreError) as info:
            attempt()
        assert not isinstance(info.value, sqlite3.Error) and str(store) in str(info.value)
        assert "not a readable graphviz-autograd run store" in str(info.value)
    foreign = tmp_path / "f" / store_filename(0)
    _make_sqlite(foreign, 0, "CREATE TABLE meta(key TEXT, value TEXT);")
    with pytest.raises(StoreError, match="not a graphviz-autograd run store"):
        open_run(foreign.parent)


def test_unwritable_run_dir(tmp_path):
    (tmp_path / "afile").write_text("a regular file, so nothing can be created below it")
    run_dir = tmp_path / "afile" / "run"
    with pytest.raises(StoreError, match=r"cannot create run directory .*afile/run.*Fix"):
        RunWriter(run_dir)


def test_overwrite_semantics(tmp_path):
    with RunWriter(tmp_path, meta={"n": 1}) as writer:
        _write_steps(writer, range(5))
    with pytest.raises(StoreError, match=r"already holds a run .*pass overwrite=True .*another run dir"):
        RunWriter(tmp_path)
    assert open_run(tmp_path).steps() == list(range(5))  # refused: nothing touched
    with RunWriter(tmp_path, meta={"n": 2}, overwrite=True) as writer:
        _write_steps(writer, [100])
    run = open_run(tmp_path)
    assert run.steps() == [100] and run.meta["n"] == 2 and run.keys("node") == ["n0", "n1", "n2"]
    run.close()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no half-built store left over
    with RunWriter(tmp_path / "empty"):  # a store without steps is simply replaced
        pass
    with RunWriter(tmp_path / "empty") as writer:
        _write_steps(writer, [0])


def test_meta_must_be_json_and_not_reserved(tmp_path):
    with pytest.raises(StoreError, match="reserved"):
        RunWriter(tmp_path / "a", meta={"rank": 3})
    with pytest.raises(StoreError, match="JSON-serializable"):
        RunWriter(tmp_path / "b", meta={"path": Path("x")})
    with pytest.raises(StoreError, match=r"rank=2 must be in \[0, world_size=2\)"):
        RunWriter(tmp_path / "c", rank=2, world_size=2)
    with RunWriter(tmp_path / "d") as writer:
        _write_steps(writer, [0])
    with pytest.raises(StoreError, match="JSON-serializable"):  # checked before deleting anything
        RunWriter(tmp_path / "d", meta={"bad": {1, 2}}, overwrite=True)
    assert open_run(tmp_path / "d").steps() == [0]


def test_multi_rank_run_dir(tmp_path):
    writers = [RunWriter(tmp_path, rank=r, world_size=2, flush_interval=0) for r in (1, 0)]
    for writer in writers:
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={"loss": 10.0 + writer.rank})
        writer.close()
    run = open_run(tmp_path)
    assert run.ranks == [0, 1] and run.world_size == 2 and run.meta["rank"] == 0
    assert "matrix" in dir(run) and not hasattr(run, "_conn")
    assert run.loss().values == [10.0] and run.rank(1).loss().values == [11.0]
    assert run.rank(1).rank == 1 and run.rank(1) is run.rank(1)
    with pytest.raises(StoreError, match=r"no rank 2 in .*available ranks: \[0, 1\]"):
        run.rank(2)
    (tmp_path / "rank-x.gva.sqlite").write_text("ignored: not a rank number")
    assert run.ranks == [0, 1]
    single = open_run(tmp_path / store_filename(1))
    assert single.ranks == [1] and single.loss().values == [11.0]
    run.close()


def test_open_run_not_found(tmp_path):
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(RunNotFoundError) as info:
            open_run(path)
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, StoreError)
        assert str(path) in str(info.value) and "rank-*.gva.sqlite" in str(info.value)


def test_matrix_downsampling(tmp_path):
    with RunWriter(tmp_path) as writer:
        for step in range(101):
            entries = [("a", {"grad_norm": float(step)}), ("b", {"grad_norm": -float(step)})]
            if step % 2 == 0:
                entries.append(("c", {"grad_norm": step + 0.5}))
            writer.add_step(step, wall_time=0.0, graph_version=None, scalars={}, stats={"param": entries})
    run = open_run(tmp_path)
    keys, steps, grid = run.matrix("param", "grad_norm", max_steps=5)     # merged, never dropped
    assert keys == ["a", "b", "c"] and steps == [19, 39, 60, 80, 100]
    assert grid == [[9.5, 29.5, 50.0, 70.5, 90.5], [-9.5, -29.5, -50.0, -70.5, -90.5],
                    [9.5, 29.5, 50.5, 71.5, 91.5]]
    keys, steps, grid = run.matrix("param", "grad_norm", max_steps=7)
    assert len(steps) == 7 and steps[-1] == 100 and None not in grid[2]
    keys, steps, grid = run.matrix("param", "grad_norm", keys=["c", "zzz"])
    assert keys == ["c", "zzz"] and steps == list(range(0, 101, 2)) and grid[1] == [None] * 51
    assert grid[0][:3] == [0.5, 2.5, 4.5]
    assert run.matrix("param", "grad_norm", max_steps=1)[1] == [100]
    assert run.matrix("param", "grad_norm", max_steps=1000)[1] == list(range(101))
    assert run.matrix("node", "grad_norm") == ([], list(range(101)), [])
    with pytest.raises(StoreError, match="max_steps must be >= 1"):
        run.matrix("param", "grad_norm", max_steps=0)


def test_matrix_keeps_every_recorded_step_when_statistics_are_sparse(tmp_path):
    """Issue 15: statistics every 10th of 400 steps, max_steps=150 gave 15 values out of 40."""
    with RunWriter(tmp_path) as writer:
        for step in range(400):
            stats = {"param": [("conv1.weight", {"grad_norm": float(step)})]} if step % 10 == 0 else {}
            writer.add_step(step, wall_time=0.0, graph_version=None, scalars={"loss": 1.0}, stats=stats)
    run = open_run(tmp_path)
    keys, steps, grid = run.matrix("param", "grad_norm", keys=["conv1.weight"], max_steps=150)
    assert steps == list(range(0, 400, 10)) and grid == [[float(s) for s in steps]]
    keys, steps, grid = run.matrix("param", "grad_norm", max_steps=8)       # 40 -> 8 columns of 5
    assert steps == list(range(40, 400, 50)) and grid[0] == [float(s - 20) for s in steps]
    run.close()


@pytest.mark.parametrize("module", sorted(p.stem for p in (REPO / "graphviz_autograd" / "store").glob("*.py")))
def test_store_modules_do_not_import_torch_or_pickle(module):
    tree = ast.parse((REPO / "graphviz_autograd" / "store" / f"{module}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "pickle", "marshal", "shelve", "numpy"}


def test_steps_must_increase_past_what_is_written_and_buffered_steps_can_be_replaced(tmp_path):
    with RunWriter(tmp_path, flush_interval=3600) as writer:
        _write_steps(writer, [0, 1])
        writer.add_step(1, wall_time=0.0, graph_version=None, scalars={"loss": 9.0},
                        stats={"node": [("n0", {"grad_norm": -1.0})]})       # still buffered: replaces
        writer.flush()
        with pytest.raises(StoreError, match=r"step 1 is not after step 1, which is already written"):
            _write_steps(writer, [1])
        _write_steps(writer, [5])
    run = open_run(tmp_path)
    assert run.node_series("n0") == Series([0, 1, 5], [0.0, -1.0, 500.0])
    assert run.node_series("n1") == Series([0, 1, 5], [1.0, 101.0, 501.0])
    assert run.loss().values[1] == 9.0


def test_frequent_flushes_grow_chunks_instead_of_piling_up_tiny_ones(tmp_path):
    from graphviz_autograd.store.schema import CHUNK_MIN
    steps = list(range(0, 3 * CHUNK_MIN + 7, 2))          # every other step, one flush per step
    with RunWriter(tmp_path, flush_interval=0) as writer:
        _write_steps(writer, steps, n_keys=2)
    db = sqlite3.connect(tmp_path / store_filename(0))
    sizes = [n for (n,) in db.execute("SELECT n FROM chunks WHERE key_id = 1 ORDER BY first_step")]
    assert sum(sizes) == len(steps) and len(sizes) == -(-len(steps) // CHUNK_MIN)
    run = open_run(tmp_path)
    assert run.node_series("n1") == Series(steps, [s * 100 + 1.0 for s in steps])
    for step in (0, 2, 254, 256, steps[-1]):                # chunk edges and the short last chunk
        assert run.stats_at(step, "node") == {"n0": step * 100.0, "n1": step * 100 + 1.0}
    assert run.stats_at(3, "node") == {} and run.stats_at(10**6, "node") == {}
    keys, at, grid = run.matrix("node", "grad_norm", max_steps=5)
    assert len(at) == 5 and at[-1] == steps[-1] and set(at) <= set(steps)
    merged = [[s for s in steps if lo < s <= hi] for lo, hi in zip([-1, *at], at)]
    assert sum(map(len, merged)) == len(steps)                       # every step in one column
    assert grid[1] == [sum(s * 100 + 1.0 for s in m) / len(m) for m in merged]


V1_SCHEMA = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE graphs(version INTEGER PRIMARY KEY, fingerprint TEXT UNIQUE, first_step INTEGER,
                    n_nodes INTEGER, json TEXT);
CREATE TABLE steps(step INTEGER PRIMARY KEY, wall_time REAL, graph_version INTEGER);
CREATE TABLE scalars(name TEXT, step INTEGER, value REAL, PRIMARY KEY(name, step)) WITHOUT ROWID;
CREATE TABLE keys(id INTEGER PRIMARY KEY, kind TEXT, name TEXT, UNIQUE(kind, name));
CREATE TABLE stats(key_id INTEGER, step INTEGER, {", ".join(s + " REAL" for s in STATS)},
                   PRIMARY KEY(key_id, step)) WITHOUT ROWID;
"""


def test_a_schema_1_store_is_still_read(tmp_path):
    """Runs recorded by the first release (one row per key and step) open unchanged."""
    db = sqlite3.connect(tmp_path / store_filename(0))
    db.executescript(V1_SCHEMA + "PRAGMA user_version=1;")
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("rank", "0"),
                   ("world_size", "1"), ("format", '"graphviz-autograd-run"')])
    db.executemany("INSERT INTO steps VALUES (?, ?, NULL)", [(s, 0.0) for s in range(3)])
    db.execute("INSERT INTO keys VALUES (1, 'param', 'w')")
    cols = ", ".join(STATS[:2])
    db.executemany(f"INSERT INTO stats(key_id, step, {cols}) VALUES (1, ?, ?, ?)",
                   [(0, 1.0, "NaN"), (1, 2.0, None), (2, 3.0, 0.5)])
    db.commit()
    db.close()
    run = open_run(tmp_path)
    assert run.param_series("w") == Series([0, 1, 2], [1.0, 2.0, 3.0])
    mean = run.param_series("w", "grad_mean")
    assert mean.steps == [0, 2] and math.isnan(mean.values[0]) and mean.values[1] == 0.5
    assert run.stats_at(1, "param") == {"w": 2.0} and run.stats_at(1, "param", "grad_mean") == {}
    assert run.matrix("param", "grad_norm")[2] == [[1.0, 2.0, 3.0]]


def test_stats_at_in_chunks_of_uneven_steps_and_several_stats_at_once(tmp_path):
    steps = [0, 1, 2, 5, 9, 10]                    # not evenly spaced: the chunk keeps a step list
    with RunWriter(tmp_path, flush_interval=3600) as writer:
        for step in steps:
            writer.add_step(step, wall_time=0.0, graph_version=None, scalars={},
                            stats={"param": [("w", {"grad_norm": step + 0.5,
                                                    "grad_nan": None if step == 5 else 0.0})]})
    run = open_run(tmp_path)
    for step in range(12):
        want = {"w": step + 0.5} if step in steps else {}
        assert run.stats_at(step, "param") == want, step
    table = run.rank(0).stats_table_at(5, "param", ("grad_norm", "grad_nan", "act_mean"))
    assert table == {"grad_norm": {"w": 5.5}, "grad_nan": {}, "act_mean": {}}
    assert run.rank(0).stats_table_at(9, "param", ("grad_nan",)) == {"grad_nan": {"w": 0.0}}


def test_scalar_at_one_step(tmp_path):
    with RunWriter(tmp_path) as writer:
        _write_steps(writer, [0, 3])
        writer.add_step(4, wall_time=0.0, graph_version=None, scalars={"loss": float("nan"), "m": None})
    run = open_run(tmp_path)
    assert run.scalar_at("loss", 3) == 0.25 and run.scalar_at("loss", 1) is None
    assert math.isnan(run.scalar_at("loss", 4)) and run.scalar_at("m", 4) is None
    assert run.scalar_at("nope", 0) is None


def test_stats_given_as_tuples_in_stats_order(tmp_path):
    from graphviz_autograd.record.rows import ROW_STATS
    assert ROW_STATS == STATS                  # the recorder's rows are in the store's order
    row = tuple(float(i) if i % 3 else None for i in range(len(STATS)))
    with RunWriter(tmp_path) as writer:
        writer.add_step(0, wall_time=0.0, graph_version=None, scalars={},
                        stats={"node": [("a", row)], "param": [("w", {"grad_norm": 2.0})]})
        with pytest.raises(StoreError, match="one value per STATS entry"):
            writer.add_step(1, wall_time=0.0, graph_version=None, scalars={},
                            stats={"node": [("a", row[:-1])]})
        with pytest.raises(StoreError, match="step 1, node 'a', grad_norm must be a number or None"):
            writer.add_step(1, wall_time=0.0, graph_version=None, scalars={},
                            stats={"node": [("a", ("x",) * len(STATS))]})
    table = open_run(tmp_path).rank(0).stats_table_at(0, "node", STATS)
    assert table == {k: ({"a": v} if v is not None else {}) for k, v in zip(STATS, row)}
