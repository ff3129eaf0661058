"""Stores where they are found: on read-only media (a real read-only bind mount, as root), and
with their -wal file deleted while a writer runs in another process and this one polls.

Nothing here may advise deleting a file, and no read may modify a store.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from graphviz_autograd.errors import StoreError
from graphviz_autograd.store import RankReader, RunWriter, open_run

REPO = Path(__file__).resolve().parents[1]
STATS = {"param": [(f"p{k}", {"grad_norm": float(k)}) for k in range(5)]}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


KILLED_WRITER = """
    import os, sys
    from graphviz_autograd.store import RunWriter
    w = RunWriter(sys.argv[1], flush_interval=3600)
    for s in range(30):
        w.add_step(s, wall_time=0.0, graph_version=None, scalars={"loss": s / 10},
                   stats={"param": [(f"p{k}", {"grad_norm": float(k)}) for k in range(5)]})
    w.flush()
    os._exit(0)         # like a kill: no close, no checkpoint; the steps are in the -wal only
"""


def _killed_writer(run_dir: Path) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_WRITER), str(run_dir)], check=True,
                   env=_env(), timeout=120)


def _closed_writer(run_dir: Path) -> None:
    with RunWriter(run_dir) as w:
        for s in range(30):
            w.add_step(s, wall_time=0.0, graph_version=None, scalars={"loss": s / 10}, stats=STATS)


def _no_shm(run_dir: Path) -> None:
    _killed_writer(run_dir)
    (run_dir / "rank-0.gva.sqlite-shm").unlink()      # archived without it


def _empty_wal(run_dir: Path) -> None:
    _closed_writer(run_dir)
    (run_dir / "rank-0.gva.sqlite-wal").write_bytes(b"")


@pytest.fixture
def read_only(tmp_path):
    """``read_only(src)``: a read-only bind mount of directory ``src`` (root only)."""
    mounted = []

    def mount(src: Path) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a read-only bind mount needs root")
        point = tmp_path / f"ro-{len(mounted)}"
        point.mkdir()
        for args in (["mount", "--bind", str(src), str(point)],
                     ["mount", "-o", "remount,bind,ro", str(point)]):
            proc = subprocess.run(args, capture_output=True, text=True)
            if proc.returncode != 0:
                subprocess.run(["umount", str(point)], capture_output=True)
                pytest.skip(f"cannot bind-mount read-only here: {proc.stderr.strip()}")
        mounted.append(point)
        assert not os.access(point, os.W_OK)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.mark.parametrize("make, files, mode", [
    (_closed_writer, ["rank-0.gva.sqlite"], "immutable"),
    (_empty_wal, ["rank-0.gva.sqlite", "rank-0.gva.sqlite-wal"], "immutable"),
    (_killed_writer, ["rank-0.gva.sqlite", "rank-0.gva.sqlite-shm", "rank-0.gva.sqlite-wal"], "shared"),
    (_no_shm, ["rank-0.gva.sqlite", "rank-0.gva.sqlite-wal"], "copy"),
], ids=["closed", "empty-wal", "killed-writer", "wal-without-shm"])
def test_a_store_on_a_read_only_mount_opens_with_every_step(tmp_path, read_only, make, files, mode):
    src = tmp_path / "src"
    make(src)
    assert sorted(p.name for p in src.iterdir() if not p.name.endswith(".lock")) == files
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    ro = read_only(src)
    with open_run(ro) as run:
        assert run.rank(0).mode == mode
        assert run.steps() == list(range(30)) and run.loss().values[-1] == 2.9
        assert run.param_series("p3").values == [3.0] * 30
        assert run.stats_at(29, "param") == {f"p{k}": float(k) for k in range(5)}
        copy = run.rank(0)._copy_dir
    assert copy is None or not os.path.exists(copy)         # a private copy is removed at close
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before     # nothing changed


def test_writing_to_a_read_only_mount_is_a_clear_error(tmp_path, read_only):
    src = tmp_path / "src"
    src.mkdir()
    ro = read_only(src)
    with pytest.raises(StoreError) as info:
        RunWriter(ro / "run")
    assert "Read-only file system" in str(info.value) and "delete" not in str(info.value)
    _closed_writer(src / "done")
    with pytest.raises(StoreError) as info:
        RunWriter(ro / "done", overwrite=True)
    assert "delete" not in str(info.value)
    assert open_run(ro / "done").steps() == list(range(30))


WAL_WRITER = """
    import sys, time, warnings
    from graphviz_autograd.store import RunWriter
    warnings.simplefilter("always")
    w = RunWriter(sys.argv[1], flush_interval=0.1)
    print("started", flush=True)
    for s in range(500):
        w.add_step(s, wall_time=time.time(), graph_version=None, scalars={"loss": s / 10},
                   stats={"param": [(f"p{k}", {"grad_norm": float(s)}) for k in range(30)]})
        time.sleep(0.01)
    w.close()
    print("closed", flush=True)
"""


@pytest.mark.slow
def test_a_deleted_wal_under_a_polling_reader(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WAL_WRITER), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    store = tmp_path / "rank-0.gva.sqlite"
    try:
        assert writer.stdout.readline().strip() == "started"
        while not (store.with_name(store.name + "-wal")).exists():
            time.sleep(0.01)
        persistent = RankReader(store)
        while persistent.latest_step() is None:
            time.sleep(0.01)
        polls, errors, deleted_at, last, seen_after = 0, [], None, -1, []
        while writer.poll() is None:
            if deleted_at is None and persistent.latest_step() is not None and persistent.latest_step() > 100:
                os.unlink(store.with_name(store.name + "-wal"))
                deleted_at = time.monotonic()
            for reader_of in (lambda: persistent, lambda: RankReader(store)):
                polls += 1
                try:
                    reader = reader_of()
                    latest = reader.latest_step()
                    assert len(reader.param_series("p7").steps) == latest + 1
                    if reader is not persistent:
                        reader.close()
                    if deleted_at is not None:
                        seen_after.append((time.monotonic() - deleted_at, latest))
                except StoreError as exc:
                    errors.append((time.monotonic() - (deleted_at or 0), str(exc)))
            time.sleep(0.02)
        out, err = writer.communicate(timeout=60)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0 and "closed" in out, err[-2000:]
    assert deleted_at is not None
    assert "was deleted while the run was written" in err       # the writer noticed and said so
    for when, message in errors:        # a short window, explained; never "delete the file"
        assert when < 1.0, (when, message)
        assert "-wal" in message and "retry in a few seconds" in message and "delete the" not in message
    assert len(errors) < polls // 10, (len(errors), polls)
    assert seen_after and max(latest for _, latest in seen_after) > 400   # readers followed on
    assert persistent.steps() == list(range(500))                        # nothing lost
    persistent.close()
    assert open_run(tmp_path).steps() == list(range(500))
