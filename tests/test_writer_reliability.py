"""The run store's writer under faults, in real processes: interpreter exit without close(),
fork, two writers of one store, failed writes followed by good ones, out-of-range values,
Ctrl-C during a flush.

Writers run as fresh interpreters (torch-free RunWriter children start in ~0.1 s); the
Recorder cases run in this process with real models.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

import graphviz_autograd as ga
from graphviz_autograd.errors import ConfigError, StoreError
from graphviz_autograd.store import RunWriter, open_run

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _child(code: str, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), **kwargs)


def _steps(writer: RunWriter, steps, n_keys: int = 3) -> None:
    for step in steps:
        writer.add_step(step, wall_time=float(step), graph_version=None, scalars={"loss": step / 10},
                        stats={"param": [(f"p{k}", {"grad_norm": step + k / 10}) for k in range(n_keys)]})


def _flusher_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("gva-flush")]


# == the flusher thread: wall-clock flushing, close, exit, fork =====================================
def test_steps_reach_disk_within_the_interval_while_nothing_else_happens(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=0.2)
    reader = open_run(tmp_path)
    _steps(writer, range(5))
    added = time.monotonic()
    while reader.latest_step() != 4 and time.monotonic() - added < 5:
        time.sleep(0.01)
    waited = time.monotonic() - added
    assert reader.steps() == list(range(5)) and waited < 1.0, waited   # no add_step came after
    assert len(_flusher_threads()) >= 1
    writer.close()
    assert not [t for t in threading.enumerate() if t.name == f"gva-flush {writer.path.name}"]
    reader.close()


def test_an_unclosed_writer_is_flushed_and_closed_at_interpreter_exit(tmp_path):
    child = _child("""
        import sys, time
        from graphviz_autograd.store import RunWriter
        w = RunWriter(sys.argv[1], flush_interval=3600)
        for s in range(50):
            w.add_step(s, wall_time=0.0, graph_version=None, scalars={"loss": s})
        print("exiting", flush=True)
        # no close(): interpreter exit must write the 50 steps and end the flusher thread
    """, tmp_path)
    start = time.monotonic()
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert time.monotonic() - start < 30 and "exiting" in out
    assert open_run(tmp_path).steps() == list(range(50))
    assert not (tmp_path / "rank-0.gva.sqlite.lock").exists()


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), True, "2"])
def test_flush_interval_must_be_a_finite_number(tmp_path, bad):
    with pytest.raises(StoreError, match=r"flush_interval=.* must be a finite number of seconds >= 0"):
        RunWriter(tmp_path, flush_interval=bad)
    assert not (tmp_path / "rank-0.gva.sqlite").exists() and not _flusher_threads()


def test_a_dropped_writer_writes_what_it_buffered(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=3600)
    _steps(writer, range(3))
    del writer                      # no close(): collected, and flushed then
    assert open_run(tmp_path).steps() == [0, 1, 2]
    with RunWriter(tmp_path / "again", flush_interval=1) as w2:     # its lock was released too
        _steps(w2, [0])


FORK_CHILD = """
    import json, os, sys
    from graphviz_autograd.errors import StoreError
    from graphviz_autograd.store import RunWriter
    w = RunWriter(sys.argv[1], flush_interval=0.05)
    for s in range(10):
        w.add_step(s, wall_time=0.0, graph_version=None, scalars={"loss": s})
    pid = os.fork()
    if pid == 0:                        # the child: may not write the parent's store
        try:
            w.add_step(100, wall_time=0.0, graph_version=None, scalars={"loss": 1.0})
            said = "no error"
        except StoreError as exc:
            said = str(exc)
        w.close()                       # does nothing to the parent's file
        print(json.dumps({"child": said}), flush=True)
        sys.exit(0)                     # atexit runs here: must not touch the parent's store
    _, status = os.waitpid(pid, 0)
    for s in range(10, 20):
        w.add_step(s, wall_time=0.0, graph_version=None, scalars={"loss": s})
    w.close()
    print(json.dumps({"parent": status}), flush=True)
"""


def test_a_forked_child_cannot_write_the_parents_store_and_leaves_it_intact(tmp_path):
    child = _child(FORK_CHILD, tmp_path)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    said = {k: v for line in out.splitlines() for k, v in json.loads(line).items()}
    assert said["parent"] == 0
    assert "is a fork of it and cannot write that store" in said["child"], said
    run = open_run(tmp_path)
    assert run.steps() == list(range(20))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")] == []


def test_a_recorder_with_fork_dataloader_workers(tmp_path):
    ds = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2,
                                         multiprocessing_context="fork")
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    step = 0
    with ga.Recorder(net, tmp_path, optimizer=opt, every=1, flush_interval=0.05) as rec:
        for _epoch in range(2):         # workers are forked while the flusher thread runs
            for x, y in loader:
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(x), y)
                loss.backward()
                opt.step()
                rec.log(step, loss=loss)
                step += 1
    run = open_run(tmp_path)
    assert run.steps() == list(range(16)) and run.param_series("0.weight").steps == list(range(16))


# == two writers of one store ========================================================================
HOLDER = """
    import sys
    from graphviz_autograd.store import RunWriter
    w = RunWriter(sys.argv[1], flush_interval=3600)
    for s in range(20):
        w.add_step(s, wall_time=0.0, graph_version=None, scalars={"loss": s})
    print("holding", flush=True)
    sys.stdin.readline()            # still nothing flushed while the other writer tries
    w.close()
    print("closed", flush=True)
"""


def test_a_second_writer_in_another_process_is_refused_and_deletes_nothing(tmp_path):
    holder = _child(HOLDER, tmp_path)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for overwrite in (False, True):
            with pytest.raises(StoreError) as info:
                RunWriter(tmp_path, overwrite=overwrite)
            message = str(info.value)
            assert f"pid {holder.pid}" in message and "is being written by another RunWriter" in message
            assert "close the other Recorder/RunWriter first" in message and "own run_dir" in message
        model = torch.nn.Linear(2, 1)
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            ga.Recorder(model, tmp_path)
        assert not model._forward_hooks and not model._forward_pre_hooks
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
    finally:
        holder.kill()
        holder.wait()
    assert open_run(tmp_path).steps() == list(range(20))      # all of the first writer's steps


def test_two_recorders_in_one_directory_in_one_process(tmp_path):
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with ga.Recorder(a, tmp_path, every=1) as first:
        first.log(0, loss=1.0)
        with pytest.raises(StoreError, match="this process"):
            ga.Recorder(b, tmp_path)
        for step in range(1, 20):
            first.log(step, loss=float(step))
    assert open_run(tmp_path).steps() == list(range(20))
    with ga.Recorder(b, tmp_path / "b", every=1) as second:   # its own directory: fine
        second.log(0, loss=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("flushed", [False, True])
def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path, flushed):
    child = _child(f"""
        import sys, time
        from graphviz_autograd.store import RunWriter
        w = RunWriter(sys.argv[1], flush_interval=3600)
        w.add_step(0, wall_time=0.0, graph_version=None, scalars={{"loss": 1.0}})
        if {flushed}:
            w.flush()
        print("ready", flush=True)
        time.sleep(600)
    """, tmp_path)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    lock = tmp_path / "rank-0.gva.sqlite.lock"
    assert lock.exists() and json.loads(lock.read_text())["pid"] == child.pid   # left behind
    if flushed:         # a store with steps is still protected, by the old rule
        with pytest.raises(StoreError, match="already holds a run"):
            RunWriter(tmp_path)
        assert open_run(tmp_path).steps() == [0]
    with RunWriter(tmp_path, overwrite=flushed) as w:
        _steps(w, [5])
    assert open_run(tmp_path).steps() == [5] and not lock.exists()


# == failed writes ======================================================================================
def test_a_failed_flush_leaves_the_writer_usable_and_the_step_not_counted(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=3600)
    _steps(writer, [0])
    writer.flush()
    pages = writer._conn.execute("PRAGMA page_count").fetchone()[0]
    writer._conn.execute(f"PRAGMA max_page_count={pages}")      # SQLITE_FULL from here on
    _steps(writer, range(1, 100), n_keys=40)
    for _ in range(3):
        with pytest.raises(StoreError, match=r"cannot write 99 buffered steps .*full.*Fix: free disk"):
            writer.flush()
        assert not writer._conn.in_transaction
    _steps(writer, [99], n_keys=40)     # not counted as written: re-adding it replaces it
    _steps(writer, [100, 101], n_keys=40)
    writer._conn.execute("PRAGMA max_page_count=1073741823")
    writer.flush()
    _steps(writer, [102])
    writer.close()
    run = open_run(tmp_path)
    assert run.steps() == list(range(103)) and len(run.stats_at(99, "param")) == 40
    assert sqlite3.connect(writer.path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_failing_background_flush_warns_once_then_the_next_step_raises_it(tmp_path):
    writer = RunWriter(tmp_path, flush_interval=0.05)
    _steps(writer, [0])
    writer.flush()
    pages = writer._conn.execute("PRAGMA page_count").fetchone()[0]
    writer._conn.execute(f"PRAGMA max_page_count={pages}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _steps(writer, range(1, 60), n_keys=40)
        time.sleep(0.5)                  # several background attempts fail
    failed = [w for w in caught if "cannot write" in str(w.message)]
    assert len(failed) == 1 and "retrying every 0.05 s" in str(failed[0].message)
    with pytest.raises(StoreError, match="full"):
        _steps(writer, [60], n_keys=40)      # the interval passed: add_step retries and raises
    writer._conn.execute("PRAGMA max_page_count=1073741823")
    _steps(writer, [61])
    writer.close()
    assert open_run(tmp_path).steps() == list(range(62))


@pytest.mark.parametrize("call, error, needles", [
    (lambda r: r.log(2 ** 63, loss=1.0), StoreError, ["step=9223372036854775808", "64-bit", "Fix"]),
    (lambda r: r.log(-2 ** 64, loss=1.0), StoreError, ["step=-18446744073709551616"]),
    (lambda r: r.log(0, loss=10 ** 400), ConfigError, ["loss=<an integer of about 401 digits>",
                                                        "too large for a float64"]),
    (lambda r: r.log(0, acc=-10 ** 5000), ConfigError, ["acc=<an integer of about 5001 digits>"]),
    (lambda r: r.log(0, **{"\ud800": 1.0}), StoreError, ["'\\ud800'", "UTF-8", "surrogates"]),
], ids=["step-2**63", "step-negative", "loss-10**400", "metric-10**5000", "surrogate-name"])
def test_out_of_range_values_are_refused_by_name_and_then_good_steps_work(tmp_path, call, error, needles):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with ga.Recorder(net, tmp_path, optimizer=opt, every=1) as rec:
        for attempt in range(2):     # refused every time: nothing left half-done
            with pytest.raises(error) as info:
                call(rec)
            for needle in needles:
                assert needle in str(info.value), (needle, str(info.value))
            assert not isinstance(info.value, OverflowError)
        for step in range(3):
            opt.zero_grad()
            loss = net(torch.randn(4, 3)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    run = open_run(tmp_path)
    assert run.steps() == [0, 1, 2] and run.param_series("weight").steps == [0, 1, 2]


SIGINT_CHILD = """
    import json, sys, time
    from graphviz_autograd.errors import StoreError
    from graphviz_autograd.store import RunWriter
    w = RunWriter(sys.argv[1], flush_interval=0)        # every add_step flushes: Ctrl-C lands in one
    keys = [f"k{i}" for i in range(400)]
    caught, step, deadline = [], 0, time.monotonic() + float(sys.argv[2])

    def add(step, again=False):
        try:
            w.add_step(step, wall_time=0.0, graph_version=None, scalars={"loss": float(step)},
                       stats={"node": [(k, {"grad_norm": float(step)}) for k in keys]})
        except StoreError as exc:       # again: it may have been written before the interrupt
            if not (again and "already written" in str(exc)):
                raise

    print("ready", flush=True)
    unsure = False      # an interrupt outside add(): the step may or may not be in
    while True:
        try:
            if unsure:
                add(step, again=True)
                step += 1
                unsure = False
            while time.monotonic() < deadline:
                try:
                    add(step)
                except KeyboardInterrupt:
                    caught.append("KeyboardInterrupt")
                    add(step, again=True)       # kept buffered, or never buffered, or written
                step += 1
            break
        except KeyboardInterrupt:
            caught.append("KeyboardInterrupt-outside")
            unsure = True
        except Exception as exc:
            caught.append(f"{type(exc).__name__}: {exc}")
            break
    w.close()
    print(json.dumps({"caught": caught, "steps": step}), flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_during_flushes_raises_keyboard_interrupt_and_loses_nothing(tmp_path):
    child = _child(SIGINT_CHILD, tmp_path, 6.0)
    rng = random.Random(12)
    try:
        assert child.stdout.readline().strip() == "ready"
        for _ in range(25):
            time.sleep(rng.uniform(0.05, 0.2))
            child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, err[-3000:]
    result = json.loads(out.splitlines()[-1])
    caught = result["caught"]
    assert len(caught) == 25 and set(caught) <= {"KeyboardInterrupt", "KeyboardInterrupt-outside"}, caught
    assert caught.count("KeyboardInterrupt") >= 10, caught     # most land inside add_step/flush
    run = open_run(tmp_path)
    steps = run.steps()
    assert steps == list(range(result["steps"])), "a step went missing"
    for step in steps[::max(1, len(steps) // 50)]:
        assert len(run.stats_at(step, "node")) == 400, f"step {step} half written"
    db = sqlite3.connect(run.rank(0).file)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
