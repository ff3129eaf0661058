"""Damaged run stores: every read raises the library's StoreError naming the file (and what is
damaged), never a TypeError, ValueError, struct.error or RecursionError; nothing is modified.

A real store is written with RunWriter (a real traced graph, statistics in evenly and unevenly
spaced chunks), copied, and each copy damaged one way with SQL or by editing its bytes: NULL and
non-JSON meta values, cut-short statistic blobs, text where numbers belong, a damaged graph, a
flipped byte in the meta table's page or the file header, a truncated file, and random byte
flips. Then every public read method is called on it.
"""
from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch

import graphviz_autograd as ga
from graphviz_autograd.errors import StoreError
from graphviz_autograd.store import STATS, RankReader, RunWriter

STEPS = list(range(0, 40, 2)) + [41, 47, 50]        # even, then uneven spacing (stride-0 chunks)


def write_good_store(run_dir: Path) -> Path:
    """A real store (traced graph, scalars, statistics in several chunks) in ``run_dir``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    graph = ga.trace(net(torch.randn(2, 3)).sum(), model=net)
    with RunWriter(run_dir, flush_interval=3600) as w:
        version = w.add_graph(graph.to_json(), graph.fingerprint(), first_step=0, n_nodes=len(graph))
        for i, step in enumerate(STEPS):
            stats = {"param": [(p, {"grad_norm": 1.0 + i, "param_norm": 2.0}) for p in graph.params],
                     "node": [(n.id, {"grad_norm": 0.5 * i}) for n in graph.by_kind("op")],
                     "module": [("0", {"act_mean": 0.1 * i})]}
            w.add_step(step, wall_time=1000.0 + i, graph_version=version,
                       scalars={"loss": 1.0 / (i + 1), "lr": 0.1}, stats=stats)
            if i % 7 == 6:
                w.flush()           # several chunks per key
    return run_dir / "rank-0.gva.sqlite"


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    return write_good_store(tmp_path_factory.mktemp("good"))


def reads(reader: RankReader):
    """Every public read of a RankReader, with arguments that exist in the good store."""
    node = "0/AddmmBackward0:0"
    return {
        "steps": lambda: reader.steps(), "latest_step": lambda: reader.latest_step(),
        "scalar_names": lambda: reader.scalar_names(), "series": lambda: reader.series("lr"),
        "scalar_at": lambda: reader.scalar_at("loss", 4), "loss": lambda: reader.loss(),
        "graph_versions": lambda: reader.graph_versions(), "version_at": lambda: reader.version_at(4),
        "graph_json": lambda: reader.graph_json(), "graph": lambda: reader.graph(),
        "graph_at": lambda: reader.graph_at(41), "keys": lambda: reader.keys("param"),
        "has_key": lambda: reader.has_key("node", node),
        "node_series": lambda: reader.node_series(node),
        "param_series": lambda: reader.param_series("0.weight", "param_norm"),
        "module_series": lambda: reader.module_series("0"),
        "stats_at_even": lambda: reader.stats_at(4, "param"),
        "stats_at_uneven": lambda: reader.stats_at(47, "node"),
        "stats_table_at": lambda: reader.stats_table_at(41, "param", STATS),
        "matrix": lambda: reader.matrix("param", "grad_norm", max_steps=7),
    }


def test_the_good_store_reads_completely(good_store):
    with RankReader(good_store) as reader:
        for name, call in reads(reader).items():
            assert call() not in (None, [], {}), name
        assert reader.steps() == STEPS and len(reader.param_series("0.weight").steps) == len(STEPS)


def _sql(statement: str):
    def damage(path: Path) -> None:
        db = sqlite3.connect(path)
        db.execute(statement)
        db.commit()
        db.close()
    return damage


def _page_of(table: str):
    """Flip one byte in the middle of ``table``'s root page (its cells: keys and values)."""
    def damage(path: Path) -> None:
        db = sqlite3.connect(path)
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        db.close()
        data = bytearray(path.read_bytes())
        start = (root - 1) * page_size
        page = data[start:start + page_size]
        cells = [i for i in range(page_size - 1, 100, -1) if page[i]][:400]   # bytes of its content
        for offset in cells[::40]:
            data[start + offset] ^= 0x5A
        path.write_bytes(bytes(data))
    return damage


def _bytes(offset: int, value: int | None = None, truncate: float | None = None):
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        if truncate is not None:
            data = data[:int(len(data) * truncate)]
        else:
            data[offset] = value if value is not None else data[offset] ^ 0xFF
        path.write_bytes(bytes(data))
    return damage


DEEP = "[" * 200_000 + "]" * 200_000
DAMAGES = {
    "meta-null-value": _sql("UPDATE meta SET value = NULL WHERE key = 'rank'"),
    "meta-null-format": _sql("UPDATE meta SET value = NULL WHERE key = 'format'"),
    "meta-not-json": _sql("UPDATE meta SET value = '{\"x\": ' WHERE key = 'world_size'"),
    "meta-rank-text": _sql("UPDATE meta SET value = '\"zero\"' WHERE key = 'rank'"),
    "meta-blob-key": _sql("UPDATE meta SET key = x'00ff' WHERE key = 'created'"),
    "meta-deep-json": _sql(f"UPDATE meta SET value = '{DEEP}' WHERE key = 'created'"),
    "chunk-cut-short": _sql("UPDATE chunks SET grad_norm = substr(grad_norm, 1, 13)"),
    "chunk-fewer-values": _sql("UPDATE chunks SET grad_norm = substr(grad_norm, 1, 16), "
                               "param_norm = substr(param_norm, 1, 8), act_mean = substr(act_mean, 1, 8)"),
    "chunk-steps-cut": _sql("UPDATE chunks SET steps = substr(steps, 1, 12)"),
    "chunk-text": _sql("UPDATE chunks SET grad_norm = 'not numbers', steps = 'x', act_mean = 'y', "
                       "param_norm = 'z'"),
    "chunk-integer": _sql("UPDATE chunks SET grad_norm = 7, steps = 3, param_norm = 2, act_mean = 1"),
    "chunk-stride-lies": _sql("UPDATE chunks SET stride = 1000000"),
    "scalar-text": _sql("UPDATE scalars SET value = 'abc'"),
    "scalar-blob": _sql("UPDATE scalars SET value = x'0102'"),
    "graph-not-json": _sql("UPDATE graphs SET json = 'not json'"),
    "graph-null": _sql("UPDATE graphs SET json = NULL"),
    "graph-deep": _sql(f"UPDATE graphs SET json = '{DEEP}'"),
    "graph-wrong-shape": _sql("UPDATE graphs SET json = '{\"nodes\": 5}'"),
    "keys-null": _sql("UPDATE keys SET kind = NULL, name = NULL"),
    "keys-blob-id": _sql("UPDATE keys SET id = id + 1000"),
    "steps-text": _sql("UPDATE steps SET graph_version = 'v'"),
    "flipped-meta-page": _page_of("meta"),
    "flipped-chunks-page": _page_of("chunks"),
    "flipped-header-magic": _bytes(3),
    "flipped-header-page-size": _bytes(16, 0x03),
    "truncated-half": _bytes(0, truncate=0.5),
    "truncated-to-header": _bytes(0, truncate=100 / 1e9),
}

# Damage that leaves well-formed rows: reads find less (no key, fewer stats), without an error.
LOOK_INTACT = {"chunk-stride-lies", "keys-null", "keys-blob-id"}


def _check_typed(path: Path, failures: list[str], label: str) -> int:
    """Open ``path`` and call every read; return how many raised StoreError."""
    typed = 0
    try:
        reader = RankReader(path)
    except StoreError as exc:
        assert str(path) in str(exc), f"{label}: open: the message does not name the file: {exc}"
        return 1
    except Exception as exc:  # noqa: BLE001 - that is the bug we look for
        failures.append(f"{label}: open raised {type(exc).__name__}: {exc}"[:300])
        return 0
    with reader:
        for name, call in reads(reader).items():
            try:
                call()
            except StoreError as exc:
                typed += 1
                assert str(path) in str(exc), f"{label}: {name}: no file name in: {exc}"
                assert "delete" not in str(exc), f"{label}: {name}: advises deleting: {exc}"
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{label}: {name} raised {type(exc).__name__}: {exc}"[:300])
    return typed


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_read_of_a_damaged_store_raises_store_error(good_store, tmp_path, damage):
    path = tmp_path / "rank-0.gva.sqlite"
    shutil.copyfile(good_store, path)
    DAMAGES[damage](path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    failures: list[str] = []
    typed = _check_typed(path, failures, damage)
    assert not failures, "\n".join(failures)
    if damage not in LOOK_INTACT:
        assert typed >= 1, f"{damage}: no read noticed the damage"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "reading changed the file"
    assert {p.name for p in tmp_path.iterdir()} <= {path.name, path.name + "-wal", path.name + "-shm"}


@pytest.mark.parametrize("what, needle", [
    ("meta-null-value", "meta row 'rank' holds NoneType"),
    ("meta-deep-json", "meta value of 'created' is not JSON"),
    ("chunk-cut-short", "bytes where packed 8-byte numbers belong (cut short?)"),
    ("chunk-fewer-values", "values for"),
    ("graph-not-json", "graph version 1 is not a readable graph"),
    ("flipped-header-magic", "not a readable graphviz-autograd run store"),
    ("scalar-text", "a scalar value is str 'abc'"),
])
def test_the_message_says_what_is_damaged(good_store, tmp_path, what, needle):
    path = tmp_path / "rank-0.gva.sqlite"
    shutil.copyfile(good_store, path)
    DAMAGES[what](path)
    messages = []
    try:
        with RankReader(path) as reader:
            for call in reads(reader).values():
                try:
                    call()
                except StoreError as exc:
                    messages.append(str(exc))
    except StoreError as exc:
        messages.append(str(exc))
    assert any(needle in m for m in messages), (needle, messages[:3])
    assert all("Fix:" in m for m in messages), messages[:3]


def test_random_byte_flips_give_only_store_errors(good_store, tmp_path):
    rng = random.Random(19)
    size = good_store.stat().st_size
    failures: list[str] = []
    for k in range(60):
        path = tmp_path / f"flip-{k}" / "rank-0.gva.sqlite"
        path.parent.mkdir()
        data = bytearray(good_store.read_bytes())
        for _ in range(rng.choice([1, 1, 4, 32])):
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        _check_typed(path, failures, f"flip-{k}")
    assert not failures, "\n".join(failures[:20])


def test_open_run_on_a_damaged_directory_is_typed(good_store, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(good_store, run_dir / "rank-0.gva.sqlite")
    DAMAGES["meta-null-value"](run_dir / "rank-0.gva.sqlite")
    with pytest.raises(StoreError, match=r"rank-0\.gva\.sqlite is not a readable"):
        ga.open_run(run_dir)
    shutil.copyfile(good_store, run_dir / "rank-0.gva.sqlite")
    DAMAGES["chunk-cut-short"](run_dir / "rank-0.gva.sqlite")
    run = ga.open_run(run_dir)
    with pytest.raises(StoreError, match="damaged"):
        run.param_series("0.weight")
    with pytest.raises(StoreError, match="damaged"):
        run.rank(0).matrix("node", "grad_norm")
    assert run.steps() == STEPS          # what is intact still reads
    run.close()
