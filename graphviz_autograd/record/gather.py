"""``Recorder(ranks="gather")``: every rank's statistics reach rank 0 through torch.distributed,
and rank 0 alone writes the run store (the run directory exists on its machine only).

On a recorded step each rank lays its statistics and the scalars it logged since the last
recorded step out in the agreed order (``spreads.py``) and one SUM and one MAX all-reduce,
issued together on the recorder's own gloo group, give every rank the min, mean and max of
every value over the ranks and the ranks holding the extremes. Unrecorded steps send nothing
(their scalars ride with the next recorded step). Then, only when needed:

- keys no layout holds yet (the first step, a new graph): the names are all-gathered once and
  the step reduced again; keys nobody has any more are dropped by every rank alike;
- ``detail_ranks`` and outlier ranks (``outliers.py``) send their full values to rank 0;
- ranks holding incidents or off-cadence rows send them to rank 0 as JSON ("mail").

A failed collective (a rank died, the group timed out) is warned about once: from then on
rank 0 records its own statistics only and the others record nothing, so training never
waits on the recorder again.

Example (on every rank of a torchrun job):
    >>> rec = ga.Recorder(model, "runs/ddp", optimizer=opt)     # doctest: +SKIP
    >>> # rank 0's machine: runs/ddp/rank-0.gva.sqlite, with the spreads of every rank
"""
from __future__ import annotations

import itertools
import json
import time
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

from graphviz_autograd.errors import StoreError
from graphviz_autograd.record import outliers as outlier_tests
from graphviz_autograd.record.gather_options import GatherOptions
from graphviz_autograd.record.gather_store import RankZero
from graphviz_autograd.record.spreads import COLUMNS, Layout, decode, local_values, pack, values_of
from graphviz_autograd.store import RunWriter

TAG_DETAIL, TAG_MAIL_SIZE, TAG_MAIL = 7101, 7102, 7103
_SEQ = itertools.count()        # Recorders made by this process: pairs them across ranks
PRUNE_MIN = 16                  # drop keys nobody has once this many and half the layout are dead


def open_gathered(run_dir, *, rank: int, world: int, options: GatherOptions, detail_ranks,
                  every: int, optimizer, writer_options: dict):
    """The rank's :class:`Gathered` (rank 0 opens the store); None when the other ranks did
    not make a Recorder within ``join_timeout`` (the caller records this rank alone).

    Raises:
        StoreError: rank 0 could not open the store (on every rank, with rank 0's reason).
    """
    store, prefix = _default_store(), f"graphviz_autograd/recorder/{next(_SEQ)}/"
    if store is not None and _join(store, prefix, world, options.join_timeout) != "go":
        warnings.warn(f"graphviz-autograd Recorder: rank {rank}: not every rank made a Recorder "
                      f"within {options.join_timeout:g} s, so this rank records its own store in "
                      f"{run_dir}. Make the Recorder on every rank to gather them on rank 0, or "
                      "pass ranks='each'", RuntimeWarning, stacklevel=3)
        return None
    writer = None
    if rank == 0:
        try:
            writer = RunWriter(run_dir, rank=0, world_size=world, **writer_options)
        except StoreError as exc:
            if store is not None:
                store.set(prefix + "opened", f"error: {exc}")
            raise
        if store is not None:
            store.set(prefix + "opened", "ok")
    elif store is not None:
        store.wait([prefix + "opened"], timedelta(seconds=options.join_timeout))
        said = store.get(prefix + "opened").decode()
        if said != "ok":
            raise StoreError(f"rank 0 could not open the run store: {said[len('error: '):]}")
    timeout = options.timeout if options.timeout is not None else _training_timeout()
    try:
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return Gathered(run_dir, rank=rank, world=world, group=group, options=options,
                    detail_ranks=detail_ranks, every=every, optimizer=optimizer, writer=writer)


def _default_store():
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private API: without it, no join check
        return None


def _join(store, prefix: str, world: int, timeout: float) -> str:
    """'go' once every rank arrived; 'alone' when one gave up waiting (decided once, for all)."""
    state = prefix + "state"
    if store.add(prefix + "arrived", 1) >= world:
        return store.compare_set(state, "", "go").decode()
    deadline, pause = time.monotonic() + timeout, 0.005
    while time.monotonic() < deadline:      # polled: a timed-out store.wait() logs C++ warnings
        if store.check([state]):
            return store.get(state).decode()
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
    return store.compare_set(state, "", "alone").decode()


def _training_timeout() -> float:
    group = dist.distributed_c10d._get_default_group()
    for device in ("cpu", "cuda"):
        try:
            return group._get_backend(torch.device(device)).options._timeout.total_seconds()
        except Exception:  # noqa: BLE001 - no backend for that device
            continue
    return dist.distributed_c10d.default_pg_timeout.total_seconds()


class Gathered:
    """One rank's side of a gathered run; stands in for the RunWriter the Recorder writes to.

    Args:
        writer: rank 0's RunWriter (None on the other ranks, which touch no file).
        optimizer: when given, a log() is a training step when the optimizer stepped since the
            last one (a log() of rank 0 alone, e.g. evaluation metrics, is then kept by rank 0
            without a collective); without one, when it has a ``loss``.
    """

    def __init__(self, run_dir, *, rank: int, world: int, group, options: GatherOptions,
                 detail_ranks: tuple[int, ...], every: int, optimizer, writer):
        self.run_dir = str(run_dir)
        self.rank, self.world, self.group, self.options = rank, world, group, options
        self.detail_ranks, self.every = detail_ranks, every
        self.bits = max(1, (world - 1).bit_length())
        self.zero = RankZero(writer, detail_ranks) if writer is not None else None
        self.layout = Layout()
        self.window: list[tuple[int, float, dict]] = []     # training logs since the last gather
        self.n_train = 0
        self.detail_next = False
        self.broken: str | None = None
        self.incidents = None           # the recorder's Incidents: a detailing rank asks for detail
        self.mail: dict = {}            # what this rank sends rank 0 at the next gather
        self._versions: dict[str, int] = {}
        self._steps_seen = self._steps = 0
        self._hook = optimizer.register_step_post_hook(self._stepped) if optimizer is not None else None
        self._uses_optimizer = optimizer is not None
        self._abandoned = self._closed = False
        self._said: set[str] = set()
        self.layout_used, self._counts = self.layout, None   # of the last gather

    # -- what the Recorder asks ---------------------------------------------------
    def recording_next(self) -> bool:
        """Whether the next training log() is a recorded (gathered) step; the same on every rank."""
        if self.broken is not None and self.zero is None:
            return False
        return self.n_train % self.every == 0 or self.detail_next

    def _stepped(self, *_args) -> None:
        self._steps += 1

    def _is_training(self, scalars: dict) -> bool:
        if self._uses_optimizer:
            stepped, self._steps_seen = self._steps > self._steps_seen, self._steps
            return stepped
        return "loss" in scalars

    # -- the RunWriter interface ------------------------------------------------------
    def add_graph(self, graph_json: str, fingerprint: str, *, first_step: int, n_nodes: int) -> int:
        if self.zero is not None:
            return self.zero.writer.add_graph(graph_json, fingerprint, first_step=first_step,
                                              n_nodes=n_nodes)
        return self._versions.setdefault(fingerprint, len(self._versions) + 1)

    def add_incident(self, incident_id: int, step: int, kind: str, summary: str, data: dict) -> None:
        item = {"type": "incident", "id": incident_id, "step": step, "kind": kind,
                "summary": summary, "data": data}
        if self.zero is not None:
            self.zero.incident(0, item)
        elif self.broken is None:
            self.mail[("incident", incident_id)] = item

    def flush(self) -> None:
        if self.zero is not None:
            self.zero.writer.flush()

    def add_step(self, step: int, *, wall_time: float, graph_version: int | None, scalars: dict,
                 stats: dict | None = None) -> None:
        """One log(): kept for the next gather, or gathered now on a recorded step."""
        if not self._is_training(scalars):      # e.g. rank 0's evaluation metrics: this rank's own
            if self.zero is not None:
                self.zero.own_step(step, wall_time, graph_version, scalars, stats)
            return
        recorded = self.recording_next()
        self.n_train += 1
        if self.broken is None:
            self.window.append((step, wall_time, scalars))
        if recorded and self.broken is None:
            self._gather(step, stats, graph_version)
            return
        if self.zero is not None:
            self.zero.own_step(step, wall_time, graph_version, scalars, stats)
        elif stats and self.broken is None:         # an incident's rows off the cadence
            self.mail[("rows", step)] = {"type": "rows", "step": step, "stats": stats}

    def abandon(self) -> None:
        """Close without the last gather (the Recorder is closing on an exception)."""
        self._abandoned = True

    def close(self) -> None:
        """Gather the steps logged since the last recorded one (unless abandoned), write and
        close rank 0's store, and leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._abandoned and self.broken is None and self.window:
                self._gather(None, None, None)
        finally:
            if self._hook is not None:
                self._hook.remove()
            try:
                if self.zero is not None:
                    self.zero.writer.close()
            finally:
                try:
                    dist.destroy_process_group(self.group)
                except Exception:  # noqa: BLE001 - already gone with the default group
                    pass

    # -- the gather ---------------------------------------------------------------------
    def _gather(self, step: int | None, stats: dict | None, graph_version: int | None) -> None:
        """Reduce the window (``step`` None: the last, at close) and write it on rank 0."""
        window, self.window = self.window, []
        mail, self.mail = list(self.mail.values()), {}
        try:
            got = self._exchange_all(window, stats, mail)
        except Exception as exc:  # noqa: BLE001 - a rank died or timed out: never stop training
            self._break(window[-1][0], exc)
            if self.zero is not None and step is not None:
                self.zero.own_step(step, window[-1][1], graph_version, window[-1][2], stats)
            return
        if self.zero is not None and got is not None:
            self.zero.write(step, graph_version, window, stats, self.layout_used, *got)
        elif self.zero is not None and step is not None:     # misaligned: rank 0's own step still
            self.zero.own_step(step, window[-1][1], graph_version, window[-1][2], stats)
        self._prune()

    def _exchange_all(self, window: list, stats: dict | None, mail: list):
        n_win = len(window)
        scalars = [(s, sc) for s, _, sc in window]
        new_keys, new_names = self.layout.missing(stats, scalars)
        exchanged = False
        if not self.layout.keys and not self.layout.names:     # nothing agreed yet: all know it
            self._agree(new_keys, new_names)
            exchanged = True
        want = int(self.incidents is not None and self.incidents.detailing)
        last = window[-1][0]
        while True:
            layout = self.layout
            values = local_values(layout, stats, scalars)
            tested = layout.tested(n_win)
            digest = layout.digest()
            uncovered = int(not exchanged and bool(new_keys or new_names))
            packed = pack(values, tested, rank=self.rank, bits=self.bits,
                          header_max=[uncovered, n_win, -n_win, digest, -digest, want, last, -last],
                          header_sum=[float(bool(mail))])
            works = [dist.all_reduce(packed.sums, op=dist.ReduceOp.SUM, group=self.group, async_op=True),
                     dist.all_reduce(packed.maxes, op=dist.ReduceOp.MAX, group=self.group, async_op=True)]
            for work in works:
                work.wait()
            reduced = decode(packed.sums, packed.maxes, len(values), len(tested), self.bits)
            head = reduced.header_max
            if head[0] and not exchanged:
                self._agree(new_keys, new_names)
                exchanged = True
                continue
            break
        self.layout_used, self._counts = layout, reduced.count
        self.detail_next = bool(head[5])
        if head[1] != -head[2] or head[3] != -head[4]:
            self._warn("misaligned", f"the ranks logged different numbers of training steps "
                                     f"({-head[2]} to {head[1]}) since the last recorded step, so "
                                     f"the spreads of steps up to {last} are left out")
            return None
        if head[6] != -head[7]:
            self._warn("steps", f"the ranks log different step numbers (at most {head[6]}, at least "
                                f"{-head[7]}); spreads are stored at rank 0's")
        flags = self._outliers(reduced, tested, window, layout)
        details = self._details(values, flags)
        received = self._mail(mail, int(round(reduced.header_sum[0])))
        return reduced, tested, flags, details, received

    def _agree(self, keys: list, names: list) -> None:
        """All-gather the keys each rank lacks; every rank extends the layout alike."""
        mine = json.dumps([keys, names]).encode()
        size = torch.tensor([len(mine)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, size, group=self.group)
        width = max(int(s) for s in sizes)
        buf = torch.zeros(width, dtype=torch.uint8)
        buf[:len(mine)] = torch.frombuffer(bytearray(mine), dtype=torch.uint8) if mine else buf[:0]
        bufs = [torch.zeros(width, dtype=torch.uint8) for _ in range(self.world)]
        dist.all_gather(bufs, buf, group=self.group)
        for got, n in zip(bufs, sizes):
            their_keys, their_names = json.loads(got[:int(n)].numpy().tobytes())
            self.layout.extend([tuple(k) for k in their_keys], their_names)

    def _outliers(self, reduced, tested: list[int], window: list, layout: Layout) -> list:
        cols = [t.tolist() for t in (reduced.count, reduced.mean, reduced.min, reduced.max,
                                     reduced.min_rank, reduced.max_rank)]
        t_sum, t_sq = reduced.t_sum.tolist(), reduced.t_sq.tolist()
        flags = []
        labels = [("loss", s) for s, _, _ in window] if "loss" in layout.name_index else []
        labels.append(("grad_norm", window[-1][0]))
        for j, (cell, (quantity, step)) in enumerate(zip(tested, labels)):
            n, mean, lo, hi, lo_rank, hi_rank = (c[cell] for c in cols)
            if n < 2:
                continue
            flags += outlier_tests.flag(
                outlier_tests.Cell(quantity, step, int(n), mean, t_sum[j], t_sq[j], lo, int(lo_rank),
                                   hi, int(hi_rank)),
                k=self.options.outlier_k, ratio=self.options.outlier_ratio)
        return flags

    def _details(self, values, flags: list) -> dict[int, list]:
        """Full values of the detail and outlier ranks, at rank 0."""
        senders = sorted((set(self.detail_ranks) | {f.rank for f in flags}) - {0})
        if self.rank in senders:
            blob = torch.frombuffer(bytearray(values.tobytes()), dtype=torch.float64)
            dist.send(blob, dst=0, group=self.group, tag=TAG_DETAIL)
        out = {}
        if self.rank == 0:
            for r in senders:
                blob = torch.empty(len(values), dtype=torch.float64)
                dist.recv(blob, src=r, group=self.group, tag=TAG_DETAIL)
                out[r] = values_of(blob)
        return out

    def _mail(self, mail: list, n_senders: int) -> list[tuple[int, dict]]:
        """Incidents and off-cadence rows of the other ranks, to rank 0 (JSON)."""
        if self.rank != 0:
            if mail:
                body = json.dumps(mail, default=str).encode()
                works = [dist.isend(torch.tensor([len(body)], dtype=torch.int64), dst=0,
                                    group=self.group, tag=TAG_MAIL_SIZE),
                         dist.isend(torch.frombuffer(bytearray(body), dtype=torch.uint8), dst=0,
                                    group=self.group, tag=TAG_MAIL)]
                for work in works:
                    work.wait()
            return []
        out = []
        for _ in range(n_senders):
            size = torch.zeros(1, dtype=torch.int64)
            src = dist.recv(size, src=None, group=self.group, tag=TAG_MAIL_SIZE)
            body = torch.empty(int(size), dtype=torch.uint8)
            dist.recv(body, src=src, group=self.group, tag=TAG_MAIL)
            out.extend((src, item) for item in json.loads(body.numpy().tobytes()))
        return out

    def _prune(self) -> None:
        """Drop keys and names no rank had at this step, once they are many (same on all ranks)."""
        layout, counts = self.layout_used, self._counts
        if counts is None or layout is not self.layout:
            return
        if len(layout.keys) < PRUNE_MIN:
            return
        present = (counts[:layout.n_cells] > 0).tolist()
        offsets = layout.offsets
        alive_keys = [any(present[offsets[k]:offsets[k] + len(COLUMNS[k[0]])]) for k in layout.keys]
        dead = alive_keys.count(False)
        if dead >= PRUNE_MIN and dead * 2 > len(alive_keys):
            self.layout = layout.pruned(alive_keys, [True] * len(layout.names))

    def _break(self, step: int, exc: Exception) -> None:
        self.broken = f"{type(exc).__name__}: {exc}"
        self.window, self.mail = [], {}
        who = "rank 0 records only its own statistics" if self.zero is not None else \
            "this rank records nothing more (rank 0 records its own statistics)"
        self._warn("broken", f"gathering the ranks failed at step {step} ({self.broken[:300]}); "
                             f"from here {who}")

    def _warn(self, reason: str, message: str) -> None:
        if reason not in self._said:
            self._said.add(reason)
            warnings.warn(f"graphviz-autograd Recorder (rank {self.rank}): {message}", RuntimeWarning,
                          stacklevel=6)

    def __repr__(self) -> str:
        return f"Gathered(rank {self.rank}/{self.world}, {len(self.layout.keys)} keys, {self.run_dir})"

