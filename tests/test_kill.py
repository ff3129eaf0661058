"""SIGKILL a recording training process at random moments; the store must survive.

Each writer trains a real LeNet-5 with the real Recorder (``flush_interval`` 0.1 s,
``every`` 2) and prints the step after each explicit ``rec.flush()``. After the kill
the store must open, hold every step up to the last printed flush (and nothing but
whole steps after it), have parameter, node and module statistics on every
recorded step, and answer the reader API (``loss()``, ``graph()``, ``param_series()``).

Importing torch costs seconds of CPU, so the writers are forked from one "zygote"
process that imported torch and the model once; each fork is a separate process,
killed with a real SIGKILL. Two writers run at a time. The zygote reaps them and
reports how they died, after everything they printed (so no output is missed).
Two more writers are fresh interpreters killed in their first seconds.

``GVA_STRESS=1 make stress`` runs many more kills (``GVA_STRESS_KILLS``, default 200).
``GVA_KILL_SEED`` repeats a run.
"""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import graphviz_autograd as ga
from graphviz_autograd.errors import RunNotFoundError

pytestmark = pytest.mark.slow     # real processes, kills or big graphs: `pytest -m 'not slow'` skips them

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
EVERY = 2
FLUSH_INTERVAL = 0.1
FLUSH_EVERY = 25
KILLS = 24            # killed while training, in `make test`
EARLY_KILLS = 6       # killed while the Recorder starts (before any flush)
LANES = 2             # writers at once
STRESS_KILLS = int(os.environ.get("GVA_STRESS_KILLS", 200))

WRITER = """
import os, sys, time
import torch, torch.nn.functional as F
import graphviz_autograd as ga
from nets import LeNet5



def say(text):
    os.write(1, f"{{os.getpid()}} {{text}}\\n".encode())


def train(run_dir, seed):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    say("start")
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rec = ga.Recorder(model, run_dir, optimizer=opt, every={every}, flush_interval={flush_interval})
    say("ready")
    gen = torch.Generator().manual_seed(seed)
    for step in range(100_000):
        x = torch.randn(8, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        rec.log(step, loss=loss, x_mean=x.mean())
        if step % {flush_every} == {flush_every} - 1:
            rec.flush()
            say(f"flushed {{step}}")
    rec.close()
    say("done")
""".format(every=EVERY, flush_interval=FLUSH_INTERVAL, flush_every=FLUSH_EVERY)

ZYGOTE = WRITER + """
import signal


def reap(_signum, _frame):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        how = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        os.write(1, f"exit {pid} {how}\\n".encode())


# Warm up what the writers need (the first optimizer alone takes ~2 s of lazy imports),
# without computing anything: no thread pool may exist when we fork.
torch.set_num_threads(1)
torch.optim.SGD(LeNet5().parameters(), lr=0.01, momentum=0.9)
ga.Recorder, ga.open_run
signal.signal(signal.SIGCHLD, reap)
os.write(1, b"zygote ready\\n")
for line in sys.stdin:
    parts = line.split()
    if parts[0] == "go":
        token, run_dir, seed = parts[1], parts[2], int(parts[3])
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                train(run_dir, seed)
            finally:
                os._exit(0)
        os.write(1, f"forked {token} {pid}\\n".encode())
    elif parts[0] == "quit":
        break
"""

FRESH = WRITER + """
train(sys.argv[1], int(sys.argv[2]))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


class Zygote:
    """The forking parent, and a reader thread sorting its output by writer pid."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_env(), bufsize=1)
        self.cond = threading.Condition()
        self.lines: dict[str, list[str]] = {}      # pid -> its lines, "exit <how>" last
        self.forked: dict[str, str] = {}           # token -> pid
        self.ready = False
        self.pids: set[str] = set()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda: self.ready or self.proc.poll() is not None, 300)
        if not self.ready:
            raise RuntimeError(f"zygote failed to start: {self.proc.stderr.read()[-3000:]}")

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split()
            with self.cond:
                if parts[:2] == ["zygote", "ready"]:
                    self.ready = True
                elif parts[0] == "forked":
                    self.forked[parts[1]] = parts[2]
                    self.pids.add(parts[2])
                elif parts[0] == "exit":
                    self.lines.setdefault(parts[1], []).append(f"exit {parts[2]}")
                else:
                    self.lines.setdefault(parts[0], []).append(" ".join(parts[1:]))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait(self, predicate, timeout):
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def start(self, run_dir: Path, seed: int) -> str:
        token = f"t{seed}"
        with self.cond:
            self.proc.stdin.write(f"go {token} {run_dir} {seed}\n")
            self.proc.stdin.flush()
        assert self.wait(lambda: token in self.forked, 60), "zygote did not fork"
        return self.forked[token]

    def seen(self, pid: str, text: str) -> bool:
        return any(line == text for line in self.lines.get(pid, ()))

    def exited(self, pid: str):
        for line in self.lines.get(pid, ()):
            if line.startswith("exit "):
                return int(line.split()[1])
        return None

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        for pid in self.pids:
            if self.exited(pid) is None:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    try:
        yield z
    finally:
        z.close()


def _flushed(lines: list[str]) -> int | None:
    steps = [int(line.split()[1]) for line in lines if line.startswith("flushed ")]
    return steps[-1] if steps else None


PARAMS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
          "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


def check_store(run_dir: Path, flushed: int | None) -> dict:
    """The store after a kill: opens, keeps every flushed step, holds whole steps only."""
    try:
        run = ga.open_run(run_dir)
    except RunNotFoundError:
        assert flushed is None, f"flush of step {flushed} was reported but there is no store"
        return {"steps": None}
    with run:
        steps = run.steps()
        assert steps == list(range(len(steps))), f"steps are not a prefix: {steps[:5]}..{steps[-5:]}"
        if flushed is not None:
            assert len(steps) >= flushed + 1, f"step {flushed} was flushed but the store ends at {steps[-1:]}"
        loss = run.loss()
        assert loss.steps == steps and run.series("x_mean").steps == steps
        recorded = [s for s in steps if s % EVERY == 0]
        if steps:
            graph = run.graph()
            assert sorted(graph.params) == sorted(PARAMS)
            assert run.graph_at(steps[-1]) == graph and len(run.graph_versions()) == 1
            assert run.keys("param") == PARAMS
            for name in PARAMS:
                series = run.param_series(name)
                assert series.steps == recorded, f"{name}: stats at {series.steps[-3:]}, steps {recorded[-3:]}"
                assert all(v > 0 for v in series.values)
            assert run.param_series("fc1.weight", "update_ratio").steps == recorded
            ops = {n.id for n in graph.by_kind("op")}
            for s in {recorded[0], recorded[len(recorded) // 2], recorded[-1]}:
                assert set(run.stats_at(s, "node")) == ops, f"partial node stats at step {s}"
                assert set(run.stats_at(s, "module", "act_mean")) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
        return {"steps": len(steps), "beyond": len(steps) - 1 - (flushed if flushed is not None else -1)}


def _kill(pid: str) -> None:
    try:
        os.kill(int(pid), signal.SIGKILL)
    except ProcessLookupError:   # it cannot end by itself (100,000 steps), but be safe
        pass


def one_kill(z: Zygote, run_dir: Path, seed: int, early: bool) -> dict:
    rng = random.Random(seed)
    pid = z.start(run_dir, seed)
    if early:        # while the Recorder creates its store, or in the first steps
        assert z.wait(lambda: z.seen(pid, "start") or z.exited(pid) is not None, 60)
        delay = rng.uniform(0.0, 0.08)
    else:
        assert z.wait(lambda: z.seen(pid, "ready") or z.exited(pid) is not None, 60), "writer never got ready"
        delay = rng.uniform(0.3, 2.5)
    time.sleep(delay)
    _kill(pid)
    assert z.wait(lambda: z.exited(pid) is not None, 60), f"writer {pid} did not die"
    how = z.exited(pid)
    lines = z.lines[pid]
    assert how == -signal.SIGKILL, f"writer exited with {how} before the kill: {lines[-5:]}"
    flushed = _flushed(lines)
    if early:
        assert flushed is None or flushed < FLUSH_EVERY * 2, lines
    result = check_store(run_dir, flushed)
    result.update(seed=seed, delay=round(delay, 3), flushed=flushed, early=early)
    return result


def run_kills(z: Zygote, root: Path, n: int, n_early: int) -> list[dict]:
    base = int(os.environ.get("GVA_KILL_SEED", random.randrange(1 << 30)))
    jobs = [(base + i, i < n_early) for i in range(n + n_early)]
    random.Random(base).shuffle(jobs)
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def lane(k: int):
        for seed, early in jobs[k::LANES]:
            try:
                result = one_kill(z, root / f"run-{seed}", seed, early)
            except AssertionError as exc:
                with lock:
                    errors.append(f"GVA_KILL_SEED={base} seed={seed} early={early}: {exc}")
                continue
            with lock:
                results.append(result)

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(LANES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, "\n".join(errors)
    return results


def _summary(results: list[dict]) -> str:
    late = [r for r in results if not r["early"]]
    flushed = [r["flushed"] for r in late if r["flushed"] is not None]
    beyond = [r["beyond"] for r in late]
    early = [r["steps"] for r in results if r["early"]]
    return (f"{len(results)} kills; {len(late)} while training: last reported flush at step "
            f"{min(flushed, default=None)}..{max(flushed, default=None)}, auto-flushed whole steps "
            f"beyond it {min(beyond, default=None)}..{max(beyond, default=None)}; {len(early)} early: "
            f"{early.count(None)} without a store, {early.count(0)} with an empty store, "
            f"{sum(1 for n in early if n)} with steps")


def test_sigkill_at_random_moments_while_training(zygote, tmp_path):
    results = run_kills(zygote, tmp_path, KILLS, EARLY_KILLS)
    late = [r for r in results if not r["early"]]
    assert len(late) == KILLS and len(results) == KILLS + EARLY_KILLS
    assert sum(r["flushed"] is not None for r in late) >= KILLS // 2, _summary(results)
    print(_summary(results))


@pytest.mark.stress
@pytest.mark.skipif(os.environ.get("GVA_STRESS") != "1", reason="set GVA_STRESS=1 (make stress)")
def test_sigkill_stress(zygote, tmp_path):
    results = run_kills(zygote, tmp_path, STRESS_KILLS, STRESS_KILLS // 10)
    print(_summary(results))


@pytest.mark.parametrize("when", ["random-first-seconds", "right-after-ready"])
def test_sigkill_a_fresh_writer_in_its_first_seconds(tmp_path, when):
    """A fresh interpreter: killed while importing or starting the Recorder, before any flush."""
    seed = random.randrange(1 << 30)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", FRESH, str(run_dir), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    out = b""
    try:
        if when == "right-after-ready":
            deadline = time.monotonic() + 120
            while b" ready\n" not in out and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    out += chunk
            assert b" ready\n" in out, (out, proc.stderr.read()[-2000:] if proc.poll() is not None else "")
        else:
            time.sleep(random.Random(seed).uniform(0.2, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    out += proc.stdout.read()
    assert proc.returncode == -signal.SIGKILL, (seed, proc.stderr.read()[-2000:])
    flushed = _flushed([line.split(b" ", 1)[1].decode() for line in out.splitlines()])
    result = check_store(run_dir, flushed)
    if when == "right-after-ready":
        assert result["steps"] is not None, "the Recorder said ready, so its store must exist"
    leftovers = [p.name for p in run_dir.iterdir()] if run_dir.exists() else []
    assert all(name.startswith("rank-0.gva.sqlite") for name in leftovers), leftovers


# == a kill during a pause: flushing happens in wall-clock time, not only inside log() ============
PAUSE = WRITER.split("def train")[0] + """
def pause_run(run_dir, flush_interval):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = ga.Recorder(model, run_dir, optimizer=opt, every=1, flush_interval=flush_interval)
    for step in range(100):         # faster than the flush interval
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        rec.log(step, loss=loss)
    say("paused")                   # validation, a checkpoint, a data stall: no log() for a minute
    time.sleep(600)


pause_run(sys.argv[1], float(sys.argv[2]))
"""


def test_sigkill_during_a_pause_keeps_every_step_logged_before_it(tmp_path):
    interval = 2.0          # the Recorder's default
    proc = subprocess.Popen([sys.executable, "-c", PAUSE, str(tmp_path), str(interval)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        line = proc.stdout.readline()
        assert line.endswith(b" paused\n"), (line, proc.stderr.read()[-2000:] if proc.poll() else "")
        paused = time.monotonic()
        time.sleep(interval + 1.0)      # one interval (and a flush) later: 10 s in the issue
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - paused < 60
    run = ga.open_run(tmp_path)
    assert run.steps() == list(range(100)), f"{len(run.steps())} of 100 steps after the kill"
    assert run.param_series("fc3.weight").steps == list(range(100))
    assert set(run.stats_at(99, "module", "act_mean")) == {"conv1", "conv2", "fc1", "fc2", "fc3"}


CLOCKED = """
import os, sys, time
from graphviz_autograd.store import RunWriter
w = RunWriter(sys.argv[1], flush_interval=float(sys.argv[2]))
for step in range(1_000_000):
    t = time.monotonic()
    w.add_step(step, wall_time=t, graph_version=None, scalars={"loss": 1.0},
               stats={"param": [(f"p{k}", {"grad_norm": 1.0}) for k in range(20)]})
    os.write(1, f"{step} {t}\\n".encode())
    time.sleep(0.003 if (step // 150) % 2 == 0 else 0.3)     # bursts of fast steps, then slow ones
"""


def test_sigkill_at_random_moments_loses_at_most_one_flush_interval(tmp_path):
    """Every step logged more than one interval (plus the time a flush takes) before the kill
    is on disk, whether the writer was busy or idle when it died."""
    interval, slack = 0.5, 0.3
    rng = random.Random(int(os.environ.get("GVA_KILL_SEED", random.randrange(1 << 30))))
    losses = []
    for k in range(8):
        run_dir = tmp_path / f"run-{k}"
        proc = subprocess.Popen([sys.executable, "-c", CLOCKED, str(run_dir), str(interval)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        try:
            time.sleep(rng.uniform(1.0, 4.0))
            killed_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        logged = [(int(a), float(b)) for a, b in (line.split() for line in out.decode().splitlines())]
        must = [s for s, t in logged if t < killed_at - interval - slack]
        try:
            steps = ga.open_run(run_dir).steps()
        except RunNotFoundError:
            steps = []
        assert steps == list(range(len(steps))), "not a prefix"
        assert not must or steps[-1:] >= must[-1:], f"kill {k}: stored up to {steps[-1:]}, must hold {must[-1]}"
        lost = [t for s, t in logged if s > (steps[-1] if steps else -1)]
        losses.append(killed_at - lost[0] if lost else 0.0)
    print(f"steps of the last ... s before each kill lost: {[round(x, 2) for x in losses]}")
    assert max(losses) < interval + 1.0
