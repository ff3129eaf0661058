"""FSDP2 (fully_shard, DTensor parameters) under the Recorder, trace and diagnose, in real
processes on gloo: statistics of the full parameters, compared with full_tensor() values the
job computes itself; names as in a single-process run; no crash, no false finding."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import graphviz_autograd as ga

pytestmark = pytest.mark.slow
JOB = Path(__file__).parent / "jobs" / "fsdp_job.py"
STATS = ("grad_norm", "grad_absmax", "grad_zero_frac", "param_norm", "update_ratio")


def _run(tmp_path, ranks: int) -> None:
    cmd = [sys.executable, str(JOB), str(tmp_path)] if ranks == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
         "--standalone", str(JOB), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("ranks", [1, 2])
def test_fsdp2_records_full_parameter_statistics(tmp_path, ranks):
    _run(tmp_path, ranks)
    run = ga.open_run(tmp_path / "run")
    assert run.ranks == [0] and run.world_size == ranks      # 2 ranks: gathered into rank 0's store
    expected = [json.loads((tmp_path / f"expected-rank{r}.json").read_text()) for r in range(ranks)]
    reader, names = run.rank(0), expected[0]["names"]
    assert reader.keys("param") == names         # unsharded names, no prefix
    assert len(reader.keys("node")) > 10
    for stat in STATS:
        for name in names:
            got = reader.param_series(name, stat)
            assert got.steps == [0, 1, 2], (name, stat)
            assert got.values == pytest.approx(expected[0][stat][name], rel=1e-6, abs=1e-12), (name, stat)
            if ranks > 1:       # every rank holds the full parameter's statistics, not its shard's
                spread = run.rank_spread(name, stat)
                for r in range(ranks):
                    for got in (spread.min, spread.mean, spread.max):
                        assert got == pytest.approx(expected[r][stat][name], rel=1e-6, abs=1e-12), (name, stat)
    for e in expected:
        assert e["trace_params"] == sorted(e["names"])     # no anonymous leaves
        assert e["trace_leaves"] == []
        assert e["diagnose_errors"] == []
        assert e["warnings"] == []
    graph = reader.graph()
    assert set(graph.params) == set(names)
