"""Benchmark the run store: stat rows written per second, and reading one key's series.

Run: ``python benchmarks/bench_store.py [--keys 500] [--write-steps 2000] [--read-steps 100000]``.
Also times each ``add_step`` on the calling (training) thread: flushes run on the writer's
background thread, so no step should wait for one.
Targets: >= 200,000 stat rows/s written (indexes in place) and <= 50 ms to read one
key's series over 100,000 steps. A "stat row" is one key at one step with all its
statistics. The "plain sqlite3" lines time the obvious layout (one table row per key
and step, primary key (key, step), an index on step) with prebuilt rows and bare
executemany / fetchall: what SQLite itself costs without our Python layer.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from graphviz_autograd.store import STATS, RunWriter, open_run

_COLUMNS = ", ".join(f"{stat} REAL" for stat in STATS)


def bench_write(run_dir: Path, n_keys: int, n_steps: int) -> float:
    """Write ``n_steps`` steps of ``n_keys`` node rows through RunWriter; return stat rows/s."""
    rng = random.Random(0)
    entries = [(f"node:{i}", {stat: rng.random() for stat in STATS}) for i in range(n_keys)]
    start = time.perf_counter()
    with RunWriter(run_dir, flush_interval=2.0, overwrite=True) as writer:
        for step in range(n_steps):
            writer.add_step(step, wall_time=time.time(), graph_version=None,
                            scalars={"loss": 1.0 / (step + 1), "lr": 0.1}, stats={"node": entries})
    return n_keys * n_steps / (time.perf_counter() - start)


def bench_add_step_latency(run_dir: Path, n_keys: int, seconds: float) -> list[float]:
    """Milliseconds each add_step took on the calling (training) thread, with the default
    2 s flush interval, while steps come every 5 ms for ``seconds``."""
    rng = random.Random(0)
    entries = [(f"node:{i}", tuple(rng.random() for _ in STATS)) for i in range(n_keys)]
    times = []
    with RunWriter(run_dir, flush_interval=2.0, overwrite=True) as writer:
        deadline, step = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.add_step(step, wall_time=time.time(), graph_version=None,
                            scalars={"loss": 1.0 / (step + 1)}, stats={"node": entries})
            times.append((time.perf_counter() - start) * 1000)
            step += 1
            time.sleep(0.005)       # the rest of a training step
    return sorted(times)


def bench_raw_insert(path: Path, n_keys: int, n_steps: int, batch_steps: int = 200) -> float:
    """Ceiling: prebuilt rows, same table and index, plain executemany; return rows/s."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                       f"CREATE TABLE stats(key_id INTEGER, step INTEGER, {_COLUMNS}, "
                       f"PRIMARY KEY(key_id, step)) WITHOUT ROWID; CREATE INDEX s ON stats(step);")
    values = [random.random() for _ in STATS]
    spent = 0.0
    for first in range(0, n_steps, batch_steps):
        rows = [(k, s, *values) for s in range(first, min(first + batch_steps, n_steps)) for k in range(n_keys)]
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO stats VALUES ({', '.join('?' * (len(STATS) + 2))})", rows)
        conn.execute("COMMIT")
        spent += time.perf_counter() - start
    conn.close()
    return n_keys * n_steps / spent


def _best_and_median_ms(fn, repeats: int = 7) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[0], times[len(times) // 2]


def bench_raw_read(path: Path, n_steps: int) -> tuple[float, float]:
    """Plain sqlite3: one key's series from the one-row-per-step layout; best and median ms."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"PRAGMA journal_mode=WAL; CREATE TABLE stats(key_id INTEGER, step INTEGER, "
                       f"{_COLUMNS}, PRIMARY KEY(key_id, step)) WITHOUT ROWID;")
    values = [random.random() for _ in STATS]
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO stats VALUES ({', '.join('?' * (len(STATS) + 2))})",
                     ((1, s, *values) for s in range(n_steps)))
    conn.execute("COMMIT")
    try:
        return _best_and_median_ms(lambda: conn.execute(
            "SELECT step, grad_norm FROM stats WHERE key_id = 1 ORDER BY step").fetchall())
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--write-steps", type=int, default=2000)
    parser.add_argument("--read-keys", type=int, default=20)
    parser.add_argument("--read-steps", type=int, default=100_000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rate = bench_write(Path(tmp) / "write", args.keys, args.write_steps)
        ceiling = bench_raw_insert(Path(tmp) / "raw.sqlite", args.keys, args.write_steps)
        print(f"write {args.keys} keys x {args.write_steps} steps: {rate:,.0f} stat rows/s "
              f"(target >= 200,000: {'OK' if rate >= 200_000 else 'MISSED'}); "
              f"plain sqlite3, one row per key and step: {ceiling:,.0f} rows/s")

        lat = bench_add_step_latency(Path(tmp) / "latency", args.keys, args.latency_seconds)
        print(f"add_step of {args.keys} keys on the training thread, {len(lat)} steps 5 ms apart over "
              f"{args.latency_seconds:g} s: median {lat[len(lat) // 2]:.2f} ms, p99 "
              f"{lat[int(len(lat) * 0.99)]:.2f} ms, max {lat[-1]:.2f} ms")

        run_dir = Path(tmp) / "read"
        rate = bench_write(run_dir, args.read_keys, args.read_steps)
        print(f"write {args.read_keys} keys x {args.read_steps} steps: {rate:,.0f} stat rows/s")
        with open_run(run_dir) as run:
            key = f"node:{args.read_keys // 2}"
            series = run.node_series(key)
            assert series.steps == list(range(args.read_steps)), "series incomplete"
            best, median = _best_and_median_ms(lambda: run.node_series(key, "grad_norm"))
            at_best, at_median = _best_and_median_ms(lambda: run.stats_at(args.read_steps // 2, "node"))
        raw_best, raw_median = bench_raw_read(Path(tmp) / "raw-read.sqlite", args.read_steps)
        print(f"read one key's series over {args.read_steps:,} steps: best {best:.1f} ms, median "
              f"{median:.1f} ms (target <= 50 ms: {'OK' if median <= 50 else 'MISSED'}); plain sqlite3, "
              f"one row per step: best {raw_best:.1f} ms, median {raw_median:.1f} ms")
        print(f"read all {args.read_keys} keys at one step: best {at_best:.1f} ms, median {at_median:.1f} ms")


if __name__ == "__main__":
    main()
