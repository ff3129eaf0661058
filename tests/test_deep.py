"""Deep graphs: no recursion, and releasing a traced 40,000-deep graph must not crash."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow     # real processes, kills or big graphs: `pytest -m 'not slow'` skips them

LSTM = """
import torch
torch.manual_seed(0)
cell = torch.nn.LSTMCell(8, 16)
x = torch.randn(1, 8)
h = torch.zeros(1, 16); c = torch.zeros(1, 16)
for _ in range({steps}):
    h, c = cell(x, (h, c))
loss = h.sum()
"""

NAIVE_WALK = """
seen = set(); stack = [loss.grad_fn]
while stack:
    fn = stack.pop()
    for nxt, _ in fn.next_functions:
        if nxt is not None and nxt not in seen:
            seen.add(nxt); stack.append(nxt)
del seen, stack, fn, nxt
"""

OUR_TRACE = """
import graphviz_autograd as ga

graph = ga.trace(loss, model=cell)
print("nodes", len(graph))
"""

RELEASE = """
del loss, h, c
print("released", flush=True)
"""


def _run(code, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def test_torch_crashes_releasing_a_deep_graph_after_a_naive_walk():
    """The torch 2.14 bug we guard against, reproduced (see graphviz_autograd/_stack.py)."""
    proc = _run(LSTM.format(steps=5000) + NAIVE_WALK + RELEASE)
    if proc.returncode == 0:
        pytest.skip("this torch no longer crashes after a naive walk; the guard is harmless")
    assert proc.returncode == -11, proc.stderr[-2000:]
    assert "released" not in proc.stdout


def test_releasing_a_traced_40000_deep_graph_is_safe():
    proc = _run(LSTM.format(steps=5000) + OUR_TRACE + RELEASE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    nodes = int(proc.stdout.split("nodes")[1].split()[0])
    assert nodes > 75_000
    assert "released" in proc.stdout


def test_100000_node_chain_traces_without_recursion_error():
    code = """
    import torch, graphviz_autograd as ga
    x = torch.randn(2, requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0000001
    g = ga.trace(y.sum())
    assert len(g) == 100_000 + 3, len(g)
    print("ok", len(g.edges))
    del y, x
    print("released", flush=True)
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "released" in proc.stdout


def test_deep_trace_off_the_main_thread_warns():
    code = LSTM.format(steps=3500) + """
import threading, warnings
import graphviz_autograd as ga
from graphviz_autograd.live.stack import DeepGraphWarning
caught = []
def work():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ga.trace(loss)
        caught.extend(x.category.__name__ for x in w)
t = threading.Thread(target=work); t.start(); t.join()
print(caught)
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DeepGraphWarning" in proc.stdout


def test_a_wide_shallow_graph_off_the_main_thread_does_not_warn():
    # 30,000 nodes but 4 deep: the exact depth is measured, not bounded by the node count
    code = """
import threading, warnings
import torch
import graphviz_autograd as ga
x = torch.randn(3, requires_grad=True)
loss = torch.stack([x * i for i in range(30_000)]).sum()
caught = []
def work():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        g = ga.trace(loss)
        caught.extend(x.category.__name__ for x in w)
        print(len(g))
t = threading.Thread(target=work); t.start(); t.join()
print(caught)
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, caught = proc.stdout.split("\n")[:2]
    assert int(n) > 30_000 and caught == "[]", proc.stdout
