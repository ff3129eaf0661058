"""Gathered runs (Recorder(ranks="gather")): the reduction itself, the outlier rule, the
store's spread layout, and real 4-process gloo jobs (torchrun, each rank its own run
directory) compared with what every rank measured itself."""
from __future__ import annotations

import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
import torch

import graphviz_autograd as ga
from graphviz_autograd.errors import ConfigError, StoreError
from graphviz_autograd.record import outliers as ot
from graphviz_autograd.record.gather_options import GatherOptions, check_detail_ranks, check_ranks
from graphviz_autograd.record.spreads import MISSING_FLOAT, Layout, decode, local_values, pack
from graphviz_autograd.store import RunWriter
from graphviz_autograd.store.spread import rank_kind, spread_kind, spread_scalar

JOBS = Path(__file__).parent / "jobs"
PARAMS = ["0.weight", "0.bias", "2.weight", "2.bias"]


# -- the reduction, without processes: SUM and MAX of every rank's tensors by hand ----------------
def _reduce(per_rank: list[array], tested: list[int]):
    world = len(per_rank)
    bits = max(1, (world - 1).bit_length())
    packs = [pack(v, tested, rank=r, bits=bits, header_max=[0] * 8, header_sum=[0.0])
             for r, v in enumerate(per_rank)]
    sums = sum(p.sums for p in packs)
    maxes = torch.stack([p.maxes for p in packs]).max(0).values
    return decode(sums, maxes, len(per_rank[0]), len(tested), bits), bits


@pytest.mark.parametrize("world", [2, 3, 4, 7, 64])
def test_min_mean_max_and_their_ranks_match_a_direct_computation(world):
    rng = random.Random(world)
    n = 300
    special = [math.inf, -math.inf, 0.0, -0.0, 5e-324, -5e-324, 1.7e308, -1.7e308, math.nan]
    per_rank = []
    for _ in range(world):
        v = array("d", [MISSING_FLOAT]) * n
        for i in range(n):
            roll = rng.random()
            if roll < 0.1:
                continue                        # this rank has no value here
            v[i] = rng.choice(special) if roll < 0.18 else \
                rng.choice([1, -1]) * rng.random() * 10.0 ** rng.randint(-30, 30)
        per_rank.append(v)
    for v in per_rank:
        v[0] = 3.25                             # a tie everywhere: the lowest rank holds it
    got, bits = _reduce(per_rank, [0, 1])
    tol = 2.0 ** (bits - 52)
    for i in range(n):
        have = [(v[i], r) for r, v in enumerate(per_rank) if struct.pack("<d", v[i]) !=
                struct.pack("<d", MISSING_FLOAT)]
        assert int(got.count[i]) == len(have)
        if not have:
            continue
        numbers = [p for p in have if p[0] == p[0]]
        hi = (math.nan, min(r for v, r in have if v != v)) if len(numbers) < len(have) else \
            max(numbers, key=lambda p: (p[0], -p[1]))           # NaN counts as the largest
        lo = min(numbers, key=lambda p: (p[0], p[1])) if numbers else (math.nan, have[0][1])
        for value, rank, which in ((hi, None, "max"), (lo, None, "min")):
            want_v, want_r = value
            got_v = float(getattr(got, which)[i])
            assert int(getattr(got, f"{which}_rank")[i]) == want_r, (i, which, have)
            assert (got_v != got_v and want_v != want_v) or \
                got_v == pytest.approx(want_v, rel=tol, abs=1e-320)
        mean = sum(v for v, _ in have) / len(have)
        got_mean = float(got.mean[i])
        assert (mean != mean and got_mean != got_mean) or got_mean == pytest.approx(mean, rel=1e-12)
    assert int(got.min_rank[0]) == 0 and int(got.max_rank[0]) == 0 and float(got.max[0]) == 3.25


def _missing(x: float) -> bool:
    return struct.pack("<d", x) == struct.pack("<d", MISSING_FLOAT)


def test_layout_lays_out_keys_scalars_and_the_gradient_norm():
    layout = Layout()
    layout.extend([("param", "w"), ("module", "fc"), ("param", "w")], ["loss", "acc"])
    assert layout.n_cells == 9 + 4 and layout.size(3) == 13 + 2 * 3 + 1
    assert layout.tested(3) == [13, 14, 15, 19]
    row = tuple(float(i + 1) for i in range(13))
    values = local_values(layout, {"param": [("w", row)], "node": [("n", row)]},
                          [(0, {"loss": 1.0}), (1, {"loss": 2.0, "acc": 0.5}), (2, {"other": 1.0})])
    assert list(values[:9]) == list(row[:9])                     # grad and param columns of w
    assert all(_missing(x) for x in values[9:13])                # module fc: not logged here
    assert values[13:15].tolist() == [1.0, 2.0] and _missing(values[15])
    assert values[17] == 0.5 and _missing(values[16]) and _missing(values[18])
    assert values[19] == 1.0                                     # global gradient norm: |1.0|
    assert layout.missing({"node": [("n", row)]}, [(0, {"other": 1.0})]) == ([("node", "n")], ["other"])
    assert layout.digest() != Layout().digest()
    pruned = layout.pruned([False, True], [True, False])
    assert pruned.keys == [("module", "fc")] and pruned.names == ["loss"] and pruned.n_cells == 4


def test_keys_nobody_has_any_more_are_dropped_once_they_are_many():
    from graphviz_autograd.record.gather import PRUNE_MIN, Gathered

    g = Gathered("unused", rank=1, world=2, group=None, options=GatherOptions(), detail_ranks=(0,),
                 every=1, optimizer=None, writer=None)
    keys = [("module", f"m{i}") for i in range(2 * PRUNE_MIN)]
    g.layout.extend(keys, ["loss"])
    counts = torch.zeros(g.layout.size(1))
    counts[:4 * (PRUNE_MIN + 1)] = 1.0          # PRUNE_MIN - 1 modules dead: too few to rebuild
    g.layout_used, g._counts = g.layout, counts
    g._prune()
    assert len(g.layout.keys) == 2 * PRUNE_MIN
    counts[4 * (PRUNE_MIN - 2):] = 0.0          # PRUNE_MIN + 2 dead: more than half
    g._prune()
    assert g.layout.keys == keys[:PRUNE_MIN - 2] and g.layout.names == ["loss"]


def test_outliers_only_the_extreme_far_from_the_others():
    def cell(values, step=3):
        lo, hi = min(values), max(values)
        c = ot.Cell("loss", step, len(values), sum(values) / len(values), 0.0, 0.0, lo,
                    values.index(lo), hi, values.index(hi))
        return ot.with_log_sums(c, values)
    flags = ot.flag(cell([2.0, 2.1, 1.9, 90.0]), k=6.0, ratio=3.0)
    assert [(f.rank, f.quantity) for f in flags] == [(3, "loss")] and "far above" in flags[0].why
    assert ot.flag(cell([2.0, 2.1, 1.9, 4.0]), k=6.0, ratio=3.0) == []        # 2x: ordinary
    assert ot.flag(cell([2.0, 2.1, 2.0, 2.05, 0.01]), k=6.0, ratio=3.0)[0].rank == 4    # far below
    assert ot.flag(cell([2.0, 90.0]), k=6.0, ratio=3.0) == []                 # 2 ranks: who is odd?
    assert ot.flag(cell([1.0] * 8), k=6.0, ratio=3.0) == []
    nan = ot.flag(ot.Cell("grad_norm", 5, 4, math.nan, math.nan, math.nan, 0.5, 1, math.nan, 2),
                  k=6.0, ratio=3.0)
    assert [(f.rank, f.step) for f in nan] == [(2, 5)] and "finite" in nan[0].why
    assert ot.flag(ot.Cell("loss", 5, 4, math.nan, 0, 0, math.nan, 1, math.nan, 2), k=6, ratio=3) == []


def test_ranks_and_detail_ranks_are_checked():
    assert check_ranks(None, 1) is None and check_ranks("gather", 1) is None
    assert check_ranks(None, 4) == GatherOptions() and check_ranks("each", 4) is None
    assert check_ranks(GatherOptions(timeout=3), 2).timeout == 3
    with pytest.raises(ConfigError, match=r"ranks='all'.*'gather'.*'each'"):
        check_ranks("all", 4)
    with pytest.raises(ConfigError, match="outlier_ratio"):
        check_ranks(GatherOptions(outlier_ratio=1.0), 4)
    with pytest.raises(ConfigError, match=r"join_timeout=0\) must be a positive number of seconds"):
        check_ranks(GatherOptions(join_timeout=0), 4)
    with pytest.raises(ConfigError, match=r"timeout='5'"):
        check_ranks(GatherOptions(timeout="5"), 4)
    assert check_detail_ranks([3, 0, 3], 4) == (0, 3) and check_detail_ranks((), 4) == ()
    for bad in ([4], [-1], 0, ["1"], [True]):
        with pytest.raises(ConfigError, match="detail_ranks"):
            check_detail_ranks(bad, 4)
    with pytest.raises(ConfigError, match="ranks="):
        ga.Recorder(torch.nn.Linear(2, 2), "unused", ranks="both")


# -- the store's layout: written by hand, read back ---------------------------------------------
def _row(grad_norm):
    return {"grad_norm": grad_norm}


def test_a_gathered_store_reads_back_spreads_details_and_outliers(tmp_path):
    w = RunWriter(tmp_path, world_size=4, meta={"ranks": "gather"}, flush_interval=60)
    for step in (0, 1, 2):
        w.add_step(step, wall_time=0.0, graph_version=None, scalars={"loss": 1.0})
    w.add_late(0, scalars={spread_scalar("loss", s): v for s, v in
                           zip(("min", "mean", "max", "min_rank", "max_rank"), (0.5, 1.0, 2.0, 3, 1))})
    w.add_late(1, stats={rank_kind("param", 2): [("w", _row(7.0))]})       # an off-cadence row
    w.add_step(3, wall_time=0.0, graph_version=None, scalars={"loss": 1.0}, stats={
        "param": [("w", _row(1.0))],
        spread_kind("param", "min"): [("w", _row(0.5))], spread_kind("param", "mean"): [("w", _row(2.0))],
        spread_kind("param", "max"): [("w", _row(5.0))], spread_kind("param", "min_rank"): [("w", _row(3))],
        spread_kind("param", "max_rank"): [("w", _row(2))],
        rank_kind("param", 2): [("w", _row(5.0))]})
    w.add_outlier(3, 2, "loss 9 is far above", {"values": {"loss": 9.0}, "detail": True})
    w.close()
    with ga.open_run(tmp_path) as run:
        s = run.rank_spread("w", "grad_norm")
        assert s == (([3], [0.5], [2.0], [5.0], [3], [2]))
        assert run.rank_spread("loss", kind="scalar").min_rank == [3]
        assert run.rank_stats_at(3, 2) == {"grad_norm": {"w": 5.0}}
        assert run.rank_stats_at(1, 2) == {"grad_norm": {"w": 7.0}}
        assert run.rank_stats_at(3, 0) == {"grad_norm": {"w": 1.0}}          # rank 0: its own rows
        assert run.rank_stats_at(3, 1) == {"grad_norm": {}}
        assert [(o.step, o.rank, o.why, o.values, o.detail) for o in run.outliers()] == \
            [(3, 2, "loss 9 is far above", {"loss": 9.0}, True)]
        assert run.outliers(2) == [] and run.keys("param") == ["w"]
        with pytest.raises(StoreError, match="no stat"):
            run.rank_spread("loss", "grad_norm", kind="scalar")
        with pytest.raises(StoreError, match="unknown key kind 'weights'"):
            run.rank_spread("w", kind="weights")
        with pytest.raises(StoreError, match="unknown key kind 'param@median'"):
            run.keys("param@median")


def test_rank_spread_of_a_run_with_one_store_per_rank(tmp_path):
    for rank, norms in enumerate(([1.0, 4.0], [3.0, 2.0], [2.0, math.nan])):
        with RunWriter(tmp_path, rank=rank, world_size=3) as w:
            for step, norm in enumerate(norms):
                w.add_step(step, wall_time=0.0, graph_version=None, scalars={"loss": norm},
                           stats={"param": [("w", _row(norm))]})
    with ga.open_run(tmp_path) as run:
        s = run.rank_spread("w")
        assert s.steps == [0, 1] and s.min == [1.0, 2.0] and s.max[0] == 3.0 and math.isnan(s.max[1])
        assert s.mean[0] == 2.0 and s.min_rank == [0, 1] and s.max_rank == [1, 2]
        assert run.rank_spread("loss", kind="scalar").max_rank == [1, 2]
        assert run.outliers() == []
        with pytest.raises(StoreError, match="not a gathered run"):
            run.rank(0).rank_spread("w")


# -- real processes --------------------------------------------------------------------------------
def _torchrun(script: Path, *args, n: int = 4, timeout: float = 300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=args[0])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    out = tmp_path_factory.mktemp("gather")
    _torchrun(JOBS / "gather_job.py", out)
    truths = [json.loads((out / f"truth-{r}.json").read_text()) for r in range(4)]
    return out, truths


def _expected(values_by_rank: list[float]):
    numbers = [(v, r) for r, v in enumerate(values_by_rank)]
    lo = min(numbers, key=lambda p: (p[0], p[1]))
    hi = min(numbers, key=lambda p: (-p[0], p[1]))
    return lo[0], sum(values_by_rank) / len(values_by_rank), hi[0], lo[1], hi[1]


RECORDED = [0, 2, 4, 6, 7]      # every=2, and step 7: rank 3's incident at step 5 asked for detail


@pytest.mark.slow
def test_only_rank_0_writes_and_its_spreads_equal_the_ranks_values_whatever_keys_each_has(gathered):
    out, truths = gathered
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("machine")) == ["machine-0"]
    assert all(t["gather_warnings"] == [] for t in truths), [t["gather_warnings"] for t in truths]
    with ga.open_run(out / "machine-0" / "run") as run:
        assert run.ranks == [0] and run.world_size == 4 and run.meta["ranks"] == "gather"
        assert run.steps() == list(range(9))            # and rank 0's evaluation log, step 8
        assert run.scalar_names() == ["acc", "loss", "lr", "test_loss"]
        assert {"loss@max", "loss@max_rank", "loss@rank1"} <= set(run.scalar_names(derived=True))
        assert run.series("test_loss").steps == [8]
        for stat in ("grad_norm", "param_norm", "update_ratio"):
            for name in PARAMS:
                s = run.rank_spread(name, stat)
                assert s.steps == RECORDED, (name, stat)
                for j, step in enumerate(s.steps):
                    lo, mean, hi, lo_r, hi_r = _expected([t[stat][name][str(step)] for t in truths])
                    assert (s.min[j], s.mean[j], s.max[j]) == pytest.approx((lo, mean, hi), rel=1e-6)
                    assert (s.min_rank[j], s.max_rank[j]) == (lo_r, hi_r), (name, stat, step)
                own = run.param_series(name, stat)             # rank 0's own rows, as before
                assert own.values == pytest.approx([truths[0][stat][name][str(s)] for s in RECORDED], rel=1e-6)
        loss = run.rank_spread("loss", kind="scalar")
        assert loss.steps == list(range(8))                 # every logged step, not only recorded
        for j, step in enumerate(loss.steps):
            lo, mean, hi, lo_r, hi_r = _expected([t["loss"][str(step)] for t in truths])
            assert (loss.min[j], loss.mean[j], loss.max[j]) == pytest.approx((lo, mean, hi), rel=1e-12)
            assert (loss.min_rank[j], loss.max_rank[j]) == (lo_r, hi_r)
        acc = run.rank_spread("acc", kind="scalar")
        assert math.isnan(acc.max[5]) and acc.max_rank[5] == 3 and math.isnan(acc.mean[5])
        assert acc.max[4] == pytest.approx(0.53) and acc.max_rank[4] == 3 and acc.min_rank[4] == 0
        own_nodes, all_nodes = run.keys("node"), run.keys("node@max")
        assert len(own_nodes) >= 4 and len(run.keys("module@min")) >= 2
        only_rank_1 = [k for k in all_nodes if k not in own_nodes]     # its branch at step 6
        assert sorted(only_rank_1) == ["AddBackward0:0", "MulBackward0:0", "TanhBackward0:0"]
        for key in only_rank_1:
            s = run.rank_spread(key, "grad_norm", kind="node")
            assert s.steps == [6] and s.min_rank == s.max_rank == [1] and s.min == s.max


@pytest.mark.slow
def test_the_corrupted_rank_is_flagged_with_its_detail_and_detail_ranks_kept(gathered):
    out, truths = gathered
    with ga.open_run(out / "machine-0" / "run") as run:
        assert [o for o in run.outliers() if o.step < 4] == []          # no false alarm before
        (flag,) = run.outliers(4)
        assert flag.rank == 2 and flag.detail and flag.why.startswith("loss ")
        assert flag.values["loss"] == pytest.approx(truths[2]["loss"]["4"], rel=1e-6)
        assert flag.values["loss_others_mean"] == pytest.approx(
            sum(truths[r]["loss"]["4"] for r in (0, 1, 3)) / 3, rel=1e-9)
        detail = run.rank_stats_at(4, 2, "param", ("grad_norm", "param_norm"))
        for name in PARAMS:
            assert detail["grad_norm"][name] == pytest.approx(truths[2]["grad_norm"][name]["4"], rel=1e-6)
            assert detail["param_norm"][name] == pytest.approx(truths[2]["param_norm"][name]["4"], rel=1e-6)
        own = run.series("loss@rank2")           # an outlier's scalars: the window it came with
        assert own.steps[:2] == [3, 4] and own.values == pytest.approx([truths[2]["loss"][str(s)]
                                                                        for s in own.steps])
        for step in RECORDED:                                # detail_ranks=[0, 1]: rank 1 always
            got = run.rank_stats_at(step, 1)["grad_norm"]
            assert got == pytest.approx({n: truths[1]["grad_norm"][n][str(step)] for n in PARAMS}, rel=1e-6)
        assert run.series("loss@rank1").values == pytest.approx([truths[1]["loss"][str(s)] for s in range(8)])
        assert run.rank_stats_at(2, 3) == {"grad_norm": {}}          # rank 3: never detailed
        (incident,) = run.incidents()
        assert incident.step == 5 and incident.kind == "nonfinite" and incident.values["rank"] == 3
        assert incident.summary.startswith("rank 3: acc = nan") and incident.detail_steps == (6, 7)


@pytest.mark.slow
def test_a_recorder_made_on_rank_0_alone_records_alone_after_the_join_timeout(gathered):
    out, truths = gathered
    (warning,) = truths[0]["alone_warnings"]
    assert "not every rank made a Recorder within 2 s" in warning and "ranks='each'" in warning
    with ga.open_run(out / "alone") as run:
        assert run.ranks == [0] and "ranks" not in run.meta and run.loss().values == [1.0]


@pytest.mark.slow
def test_ranks_each_still_writes_one_store_per_rank(gathered):
    out, truths = gathered
    with ga.open_run(out / "each") as run:
        assert run.ranks == [0, 1, 2, 3] and "ranks" not in run.meta
        for r in range(4):
            assert run.rank(r).loss().values == pytest.approx(truths[r]["each_loss"])
            assert run.rank(r).keys("param") == PARAMS
        s = run.rank_spread("loss", kind="scalar")      # computed from the four stores
        assert s.max == pytest.approx([max(t["each_loss"][i] for t in truths) for i in range(3)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_rank_lost_mid_run_leaves_rank_0_recording_and_its_store_whole(tmp_path, how):
    env = dict(os.environ, WORLD_SIZE="4", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs = [subprocess.Popen([sys.executable, str(JOBS / "gather_kill_job.py"), str(tmp_path), how],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path) for r in range(4)]
    try:
        outs = [p.communicate(timeout=150) for p in procs[:3]]     # the survivors finish by themselves
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        procs[3].communicate()
    for r, (stdout, stderr) in enumerate(outs):
        assert procs[r].returncode == 0 and f"done {r}" in stdout, stderr[-3000:]
        assert "gathering the ranks failed at step 6" in stderr, stderr[-3000:]
    with ga.open_run(tmp_path / "machine-0" / "run") as run:
        assert run.steps() == list(range(12))
        assert run.rank_spread("0.weight").steps == [0, 2, 4]          # gathered until the loss
        assert run.param_series("0.weight").steps == [0, 2, 4, 6, 8, 10]    # then rank 0's own
        assert run.rank_spread("loss", kind="scalar").steps == [0, 1, 2, 3, 4]
    assert not (tmp_path / "machine-1").exists()
