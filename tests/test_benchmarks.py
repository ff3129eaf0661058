"""Each benchmark script runs on a tiny case, so the scripts do not rot (CI never times them)."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow     # real processes, kills or big graphs: `pytest -m 'not slow'` skips them

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize("script,args,expect", [
    ("bench_trace.py", ["--smoke"], "ours / bare walk"),
    ("bench_render.py", ["--smoke"], "torchviz + dot"),
    ("bench_recorder.py", ["--steps", "2", "--rounds", "1", "--warmup", "1"], "default (every=50)"),
    ("bench_incidents.py", ["--steps", "2", "--rounds", "1", "--warmup", "1"], "default, incidents on"),
    ("bench_stacks.py", ["--models", "bert", "--steps", "1", "--rounds", "1", "--warmup", "1",
                         "--batch", "2"], "params+nodes every step"),
    ("bench_fsdp.py", [], "bytes sent per rank"),
    ("bench_dashboard_load.py", ["--clients", "3", "--requests", "4", "--steps", "4"], "p99 ms"),
    ("bench_memory.py", ["--steps", "20"], "live tensors"),
    ("bench_gather.py", ["--worlds", "2", "--steps", "2", "--models", "lenet"], "bare pair ms"),
    ("bench_store.py", ["--keys", "20", "--write-steps", "50", "--read-keys", "2", "--read-steps", "500",
                        "--latency-seconds", "0.2"], "rows/s"),
])
def test_benchmark_script_smoke(script, args, expect):
    proc = subprocess.run([sys.executable, script, *args], cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
