"""Hostile input to trace and render: nested tensors, models with full backward hooks traced
after backward(), objects whose repr raises, NUL and other control characters in names.

Real torch, real Graphviz (`dot`), the SVG read back by an XML parser.
"""
from __future__ import annotations

import subprocess
import warnings
import xml.dom.minidom

import pytest
import torch
from torch import nn

import graphviz_autograd as ga
from graphviz_autograd.errors import TraceInputError, describe
from graphviz_autograd.export.dot import q, render, run_dot, to_dot
from graphviz_autograd.graph.model import NodeKind
from graphviz_autograd.live.nodes import RAGGED


def _nested(layout):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "nested tensors are a prototype"
        return torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)], layout=layout,
                                          requires_grad=True)


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged], ids=["strided", "jagged"])
def test_nested_tensors_are_traced_with_ragged_dimensions_as_minus_one(layout):
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    out = lin(_nested(layout) * 2)
    g = ga.trace(out, model=lin)
    assert {n.op for n in g.by_kind("op")} == {"LinearBackward0", "MulBackward0"}
    assert sorted(g.params) == ["bias", "weight"]
    (root,) = g.by_kind("output")
    assert root.outputs[0].shape == (2, RAGGED, 2)     # 2 components, ragged rows, 2 features
    saved = {s.name: s for s in g.node("LinearBackward0:0").saved}
    assert saved["input"].meta.shape == (2, RAGGED, 3) and saved["input"].nbytes == 6 * 4 * 3
    assert saved["weight"].meta.shape == (2, 3)
    assert "-1" in to_dot(g)
    assert describe(out).startswith("tensor(shape=")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_trace_after_backward_on_a_model_with_full_backward_hooks():
    torch.manual_seed(0)
    net = Net()
    calls = []
    net.register_full_backward_hook(lambda *a: calls.append(1))
    net.fc1.register_full_backward_hook(lambda *a: calls.append(2))
    x = torch.randn(2, 4, requires_grad=True)
    out = net(x).sum()
    before = ga.trace(out, model=net)
    out.backward()
    assert calls, "the hooks ran"
    after = ga.trace(out, model=net)           # saved tensors are freed now: metadata we skip
    assert after.fingerprint() == before.fingerprint()
    assert [n.id for n in after.nodes] == [n.id for n in before.nodes]
    hook_nodes = [n for n in after.nodes if n.op == "BackwardHookFunctionBackward"]
    assert hook_nodes and all(s.freed for n in hook_nodes for s in n.saved)
    assert all(s.freed for n in after.nodes for s in n.saved)
    assert sum(len(n.saved) for n in before.nodes if n.op.startswith("Addmm")) == 4
    assert b"<svg" in run_dot(to_dot(after), "svg")


class RaisingRepr:
    def __repr__(self):
        raise ValueError("repr exploded")


class RaisingModule(nn.Linear):
    def __repr__(self):
        raise RuntimeError("module repr exploded")


@pytest.mark.parametrize("call, error, shown", [
    (lambda: ga.trace(RaisingRepr()), TraceInputError, "<RaisingRepr object: its repr() raised ValueError>"),
    (lambda: ga.trace([RaisingRepr(), 3]), TraceInputError, "its repr() raised ValueError"),
    (lambda: ga.trace(torch.ones(2, requires_grad=True) * 2, model=RaisingRepr()), TraceInputError,
     "model= must be an nn.Module, got <RaisingRepr object: its repr() raised ValueError>"),
], ids=["output", "in-a-list", "model"])
def test_a_raising_repr_never_replaces_the_error(call, error, shown):
    with pytest.raises(error) as info:
        call()
    assert shown in str(info.value)


def test_a_raising_repr_of_a_module_does_not_stop_a_trace():
    m = RaisingModule(2, 2)
    g = ga.trace(m(torch.ones(1, 2)).sum(), model=m)
    assert sorted(g.params) == ["bias", "weight"]


HOSTILE = "a\x00b\x01c\x1b[31m\x7f\x85\ud800\ufffe\ttab\r\nline\"q\\"


def test_nul_and_control_characters_in_module_names_through_trace_and_render(tmp_path):
    net = nn.Sequential()
    net.add_module(HOSTILE, nn.Linear(2, 2))
    net.add_module("ok", nn.ReLU())
    with ga.instrument(net):
        out = net(torch.randn(1, 2)).sum()
    g = ga.trace(out, model=net)
    assert f"{HOSTILE}.weight" in g.params
    assert any(n.module == HOSTILE for n in g.nodes if n.kind is NodeKind.OP)
    for suffix in (".svg", ".png", ".pdf", ".dot"):
        path = render(g, tmp_path / f"g{suffix}")
        assert (tmp_path / f"g{suffix}").stat().st_size > 0, path
    svg = (tmp_path / "g.svg").read_text(encoding="utf-8")
    doc = xml.dom.minidom.parseString(svg)     # an XML reader (a browser) can read it
    texts = "".join(t.firstChild.data for t in doc.getElementsByTagName("text") if t.firstChild)
    assert "a\\x00b\\x01c\\x1b[31m\\x7f\\x85\\ud800\\ufffe\\x09tab" in texts   # escaped, visible
    assert "\x00" not in svg and "\x01" not in svg


def test_every_control_character_and_very_long_names_reach_graphviz_intact():
    # one DOT node per character 0..0x9f plus surrogates, and a 40,000-character id (over
    # dot's 16,384-byte limit for one quoted string)
    names = [f"n{chr(c)}x" for c in range(0xA0)] + ["s\udfffx", "L" * 40_000]
    dot = "digraph {\n" + "\n".join(f"  {q(n)} [label={q(n[:100])}, tooltip={q(n)}]" for n in names) + "\n}\n"
    proc = subprocess.run(["dot", "-Tplain"], input=dot.encode("utf-8"), capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()[:500]
    nodes = [line for line in proc.stdout.decode().splitlines() if line.startswith("node ")]
    assert len(nodes) == len(names)             # no two names merged into one node
    assert sum("L" * 40_000 in line for line in nodes) == 1
