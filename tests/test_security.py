"""Loading a run or a graph someone else made is safe: JSON and SQLite only, nothing executed."""
import ast
import os
import sqlite3
from array import array

import pytest

import graphviz_autograd as ga
from graphviz_autograd.store import RunWriter, open_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def _sources():
    for folder in ("graphviz_autograd", "dashboard"):
        for root, _dirs, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(root, name)


@pytest.mark.parametrize("path", sorted(_sources()), ids=lambda p: os.path.relpath(p, REPO))
def test_no_pickle_eval_or_torch_load_in_library_code(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None) else [])
            assert not FORBIDDEN_MODULES & {n.split(".")[0] for n in names}, f"{path}:{node.lineno} imports {names}"
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                assert f.id not in FORBIDDEN_CALLS, f"{path}:{node.lineno} calls {f.id}()"
            if isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name):
                assert f.value.id != "torch", f"{path}:{node.lineno} calls torch.load"


def test_a_foreign_store_with_hostile_strings_loads_as_plain_data(tmp_path):
    evil = "__import__('os').system('touch PWNED')"
    graph_json = ('{"format":"graphviz-autograd-graph","version":1,"roots":["output:0"],'
                  '"nodes":[{"id":"output:0","kind":"output","op":"' + evil.replace("'", "\\u0027") + '"}],'
                  '"edges":[]}')
    with RunWriter(tmp_path / "run", meta={"note": evil}) as w:
        v = w.add_graph(graph_json, "f" * 16, first_step=0, n_nodes=1)
        w.add_step(0, wall_time=0.0, graph_version=v, scalars={evil: 1.0},
                   stats={"param": [(evil, {"grad_norm": 1.0})]})
    run = open_run(tmp_path / "run")
    assert run.meta["note"] == evil
    assert run.graph().node("output:0").op == evil
    assert run.scalar_names() == [evil] and run.keys("param") == [evil]
    assert not os.path.exists("PWNED") and not (tmp_path / "PWNED").exists()


def test_store_blobs_are_only_packed_number_arrays(tmp_path):
    """No pickle: the only BLOB columns are the chunk arrays, 8 bytes (int64 step or float64
    value) per step of the chunk, readable with nothing but ``array``."""
    with RunWriter(tmp_path / "run") as w:
        w.add_step(0, wall_time=0.0, graph_version=None, scalars={"loss": 1.0},
                   stats={"param": [("w", {"grad_norm": 2.0, "grad_mean": None})]})
        w.add_step(3, wall_time=0.0, graph_version=None, scalars={"loss": 1.0},
                   stats={"param": [("w", {"grad_norm": float("nan"), "grad_mean": 1.0})]})
    db = sqlite3.connect(tmp_path / "run" / "rank-0.gva.sqlite")
    blob_columns = {(t, row[1]) for t, in db.execute("select name from sqlite_master where type='table'")
                    for row in db.execute(f"pragma table_info('{t}')") if row[2].upper() == "BLOB"}
    assert {t for t, _ in blob_columns} == {"chunks"}
    columns = [c for _, c in sorted(blob_columns)]
    for row in db.execute(f"SELECT n, {', '.join(columns)} FROM chunks"):
        n, blobs = row[0], row[1:]
        assert all(b is None or len(b) == 8 * n for b in blobs)
        assert not any(b and b[:1] == b"\x80" and b[-1:] == b"." for b in blobs)   # no pickle frame
    steps = array("q")
    steps.frombytes(db.execute("SELECT steps FROM chunks").fetchone()[0])
    assert list(steps) == [0, 3]
    assert ga.open_run(tmp_path / "run").loss().values == [1.0, 1.0]


HOSTILE_NAMES = ["a\x00b", "\x00", "tab\tand\nnewline", "\x1b[31mred\x1b[0m", "é≠😀", "../../etc/passwd",
                 "<script>alert(1)</script>", "x" * 1_000_000, " ", "'; DROP TABLE steps; --"]


def test_hostile_names_round_trip_exactly_through_the_store(tmp_path):
    """NUL, control characters, a 1 MB name, SQL and path text: stored and read back as given."""
    with RunWriter(tmp_path / "run", meta={"names": HOSTILE_NAMES[:5]}) as w:
        for step in range(3):
            w.add_step(step, wall_time=0.0, graph_version=None,
                       scalars={name: float(i) for i, name in enumerate(HOSTILE_NAMES)},
                       stats={"module": [(name, {"act_mean": float(i)}) for i, name in enumerate(HOSTILE_NAMES)]})
    run = open_run(tmp_path / "run")
    assert run.meta["names"] == HOSTILE_NAMES[:5]
    assert sorted(run.scalar_names()) == sorted(HOSTILE_NAMES)
    assert run.keys("module") == HOSTILE_NAMES
    for i, name in enumerate(HOSTILE_NAMES):
        assert run.series(name).values == [float(i)] * 3
        assert run.module_series(name).values == [float(i)] * 3
    assert run.stats_at(2, "module", "act_mean") == {name: float(i) for i, name in enumerate(HOSTILE_NAMES)}
    assert run.steps() == [0, 1, 2]
