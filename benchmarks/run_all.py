"""Run every benchmark script and write its output to benchmarks/results/<script>.txt.

Usage (from the repository root): make bench    (or: cd benchmarks && python run_all.py)
Pass --smoke for a tiny run of each (what the test suite does so the scripts do not rot).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = {
    "bench_trace.py": [],
    "bench_render.py": [],
    "bench_recorder.py": ["--model", "lenet", "--rounds", "12", "--steps", "150"],
    # one thread: a 14.5 ms plain step here, the length of the reference step (14.7 ms)
    "bench_recorder.py 1thread": ["--model", "lenet", "--rounds", "12", "--steps", "150", "--threads", "1"],
    "bench_recorder.py resnet18": ["--model", "resnet18", "--batch", "8", "--steps", "5", "--rounds", "6",
                                   "--warmup", "2", "--threads", "1"],
    "bench_incidents.py": ["--model", "lenet", "--rounds", "6", "--steps", "150"],
    "bench_incidents.py resnet18": ["--model", "resnet18", "--batch", "8", "--steps", "5", "--rounds", "4",
                                    "--warmup", "2", "--threads", "1"],
    "bench_stacks.py": ["--bf16"],
    "bench_fsdp.py": [],
    "bench_store.py": [],
    "bench_gather.py": [],
    "bench_memory.py": [],
    "bench_dashboard.py": [],
}
SMOKE = {"bench_trace.py": ["--smoke"], "bench_render.py": ["--smoke"],
         "bench_recorder.py": ["--steps", "2", "--rounds", "1", "--warmup", "1"],
         "bench_incidents.py": ["--steps", "2", "--rounds", "1", "--warmup", "1"],
         "bench_stacks.py": ["--models", "bert", "--steps", "1", "--rounds", "1", "--warmup", "1",
                             "--batch", "2"],
         "bench_store.py": ["--keys", "20", "--write-steps", "50", "--read-keys", "2", "--read-steps", "500"],
         "bench_dashboard.py": ["--smoke"], "bench_memory.py": ["--steps", "20"],
         "bench_gather.py": ["--worlds", "2", "--steps", "2", "--models", "lenet"]}


def main() -> int:
    smoke = "--smoke" in sys.argv
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    failed = 0
    for name, args in SCRIPTS.items():
        script = name.split()[0]
        if not os.path.exists(os.path.join(HERE, script)):
            continue
        if smoke:
            if name != script:
                continue
            args = SMOKE.get(script, [])
        t0 = time.time()
        proc = subprocess.run([sys.executable, script, *args], cwd=HERE, capture_output=True, text=True)
        out = proc.stdout + (f"\n[stderr]\n{proc.stderr[-3000:]}" if proc.returncode else "")
        print(f"== {name} ({time.time() - t0:.0f} s, exit {proc.returncode})\n{out}", flush=True)
        if not smoke:
            with open(os.path.join(HERE, "results", name.replace(" ", "-").replace(".py", "") + ".txt"), "w") as f:
                f.write(out)
        failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
