"""A corpus of bad (and odd-but-valid) inputs to the public API and the command line.

Every case ends in correct behaviour or in one of our typed errors (a
``GraphvizAutogradError`` that also subclasses the fitting builtin) whose message
names the bad value and the fix. Command-line cases run the real console script
in subprocesses: exit code 2, one ``error:`` line on stderr, no traceback.

Releasing a traced 40,000-deep graph (an LSTMCell unrolled 5,000 steps) is covered
by tests/test_deep.py::test_releasing_a_traced_40000_deep_graph_is_safe.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd import errors as E
from graphviz_autograd.export import dot as dotmod
from graphviz_autograd.store import STORE_SCHEMA_VERSION, store_filename
from fuzz_graphs import networkx_structure, reference_structure
from nets import reference_walk
from nets import Square  # a custom autograd.Function (saves its input)

REPO = Path(__file__).resolve().parents[1]


# -- helpers --------------------------------------------------------------------------
def raises_typed(exc_type, builtin, *needles, call):
    """``call()`` raises ``exc_type`` (ours and ``builtin``); its message holds every needle."""
    with pytest.raises(exc_type) as info:
        call()
    err = info.value
    assert isinstance(err, E.GraphvizAutogradError), type(err).__mro__
    assert isinstance(err, builtin), type(err).__mro__
    for needle in needles:
        assert needle in str(err), f"{needle!r} not in {str(err)!r}"
    return err


class MLP(nn.Module):
    def __init__(self, d_in=4, d_out=2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 8)
        self.fc2 = nn.Linear(8, d_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def all_nodes(outputs):
    nodes, _ = reference_walk(outputs)
    return nodes


def assert_no_hooks_left(model, optimizer=None):
    """No module hook, optimizer hook or node-creation hook survives."""
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, name
        assert not m._backward_hooks and not getattr(m, "_backward_pre_hooks", None), name
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks
    if optimizer is not None:
        assert not optimizer._optimizer_step_pre_hooks
        assert not optimizer._optimizer_step_post_hooks
    # a fresh forward after the exception: no node may be tagged by a leftover hook
    first = next(model.parameters())
    x = torch.randn(3, model.fc1.in_features if hasattr(model, "fc1") else first.shape[-1])
    out = model(x).sum()
    outside = (torch.randn(2, requires_grad=True) * 2).exp()
    fresh = [fn for fn in all_nodes([out, outside]) if not hasattr(fn, "variable")]
    assert len(fresh) >= 6
    for fn in fresh:   # (AccumulateGrad nodes live as long as any graph using them: not fresh)
        assert dict(fn.metadata) == {}, (fn.name(), dict(fn.metadata))


@contextlib.contextmanager
def no_skipped_statistic():
    """The recorder warns (once) when a hook fails; here none may."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    failed = [str(w.message) for w in caught if "recorder hook failed" in str(w.message)]
    assert not failed, failed


def train_steps(model, rec, opt, steps, batch=5, start=0, d_in=4):
    for step in range(start, start + steps):
        opt.zero_grad()
        loss = model(torch.randn(batch, d_in)).pow(2).mean()
        loss.backward()
        opt.step()
        rec.log(step, loss=loss)


# == trace(): tensors without a graph, odd containers ====================================
@pytest.mark.parametrize("make, needles", [
    pytest.param(lambda: torch.no_grad()(lambda: MLP()(torch.randn(2, 4)))(),
                 ("shape=(2, 2)", "grad_fn=None", "torch.no_grad()"), id="no_grad-output"),
    pytest.param(lambda: MLP()(torch.randn(2, 4)).detach(),
                 ("shape=(2, 2)", ".detach()"), id="detached-output"),
    pytest.param(lambda: torch.randn(3, 5), ("shape=(3, 5)", "requires_grad=False"),
                 id="leaf-without-requires_grad"),
    pytest.param(lambda: (torch.randn(4, requires_grad=True) * 2).argmax(),
                 ("dtype=torch.int64", "has no autograd graph"), id="integer-result-of-argmax"),
    pytest.param(lambda: {"ids": torch.arange(3), "mask": torch.ones(3, dtype=torch.bool)},
                 ("(at 'ids')", "dtype=torch.int64"), id="dict-of-integer-tensors"),
])
def test_trace_tensor_without_graph(make, needles):
    raises_typed(E.NotDifferentiableError, ValueError, *needles,
                 "Compute it with grad enabled", call=lambda: ga.trace(make()))


@pytest.mark.parametrize("bad, shown", [
    pytest.param(None, "None", id="None"),
    pytest.param([], "[]", id="empty-list"),
    pytest.param((), "()", id="empty-tuple"),
    pytest.param({}, "{}", id="empty-dict"),
    pytest.param({"a": [], "b": ((),)}, "{'a': [], 'b': ((),)}", id="nested-empty"),
    pytest.param(3.5, "3.5", id="float"),
    pytest.param(["loss", 1, None], "['loss', 1, None]", id="list-of-non-tensors"),
])
def test_trace_non_tensor_outputs(bad, shown):
    raises_typed(E.TraceInputError, TypeError, f"found no tensor in {shown}",
                 "pass the loss or the model's output", call=lambda: ga.trace(bad))


def test_trace_model_that_is_not_a_module():
    out = MLP()(torch.randn(2, 4)).sum()
    raises_typed(E.TraceInputError, TypeError, "model= must be an nn.Module", "'mlp'",
                 call=lambda: ga.trace(out, model="mlp"))


class ModelOutput(collections.OrderedDict):
    """Like HuggingFace's ModelOutput: an OrderedDict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Pair(NamedTuple):
    logits: torch.Tensor
    hidden: torch.Tensor


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    aux: object = None
    name: str = "x"


@pytest.mark.parametrize("wrap, roots", [
    pytest.param(lambda h: ModelOutput(loss=h.sum(), logits=h, hidden_states=None, attentions=()),
                 ["output:loss", "output:logits"], id="ModelOutput-like"),
    pytest.param(lambda h: {"logits": h, "step": 3, "names": ["a"], "ids": torch.arange(2)},
                 ["output:logits"], id="dict-with-non-tensors"),
    pytest.param(lambda h: Out(h, aux=torch.zeros(1)), ["output:logits"], id="dataclass"),
    pytest.param(lambda h: Pair(h, h.tanh()), ["output:logits", "output:hidden"], id="namedtuple"),
    pytest.param(lambda h: [h, [h.exp(), (None, h.sum())]], ["output:0", "output:1.0", "output:1.1.1"],
                 id="nested-list"),
])
def test_trace_structured_outputs(wrap, roots):
    net = MLP()
    g = ga.trace(wrap(net(torch.randn(2, 4))), model=net)
    assert list(g.roots) == roots
    assert {n.param for n in g.by_kind("param")} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert len([n for n in g.nodes if n.op == "AddmmBackward0"]) == 2   # shared, not duplicated


# == trace(): freed, retained and double-backward graphs; views and in place ==============
def test_trace_after_backward_marks_saved_tensors_freed():
    net = MLP()
    loss = net(torch.randn(3, 4)).pow(2).mean()
    before = ga.trace(loss, model=net)
    loss.backward()
    after = ga.trace(loss, model=net, show_saved=True)
    assert before.fingerprint() == after.fingerprint()
    saved = [s for n in after.nodes for s in n.saved]
    assert saved and all(s.freed for s in saved)
    assert not after.by_kind("saved") and after.saved_bytes() == 0
    assert "freed" in after.to_dot()
    with pytest.raises(RuntimeError, match="second time"):   # torch's own error, untouched
        loss.backward()


def test_trace_with_retain_graph_keeps_saved_tensors():
    net = MLP()
    loss = net(torch.randn(3, 4)).pow(2).mean()
    loss.backward(retain_graph=True)
    g = ga.trace(loss, model=net, show_saved=True)
    assert g.saved_bytes() > 0 and not any(s.freed for n in g.nodes for s in n.saved)
    assert g.by_kind("saved")
    plain = ga.trace(loss, model=net)
    loss.backward()                                # tracing did not consume the graph
    assert ga.trace(loss, model=net).fingerprint() == plain.fingerprint()


def test_trace_double_backward_graph():
    net = MLP()
    x = torch.randn(3, 4, requires_grad=True)
    loss = net(x).pow(2).mean()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    penalty = gx.pow(2).sum()
    g = ga.trace(penalty, model=net)
    ops = {n.op for n in g.by_kind("op")}
    assert "ThresholdBackwardBackward0" in ops and "AddmmBackward0" in ops, ops   # backward of relu
    assert set(g.params) >= {"fc1.weight", "fc2.weight"} and len(g.by_kind("leaf")) == 1
    (penalty + loss).backward()                     # still differentiable after tracing
    assert net.fc1.weight.grad is not None


def test_trace_views_and_in_place_ops_match_the_live_graph():
    w = nn.Parameter(torch.randn(4, 4))
    y = w * 2
    y[:, :2].mul_(3)            # in place through a view: CopySlices
    v = y.t()                   # a view of a non-leaf ...
    v[1].add_(1)                # ... modified in place through a view of it
    z = torch.relu(v.reshape(-1).clone()).unflatten(0, (4, 4))
    roots = [z.sum() + y.sum(), v.diagonal()]
    holder = nn.ParameterList([w])
    nodes, edges, root_edges = networkx_structure(ga.trace(roots, model=holder).to_networkx())
    assert (nodes, edges, root_edges) == reference_structure(roots, holder)
    assert sum(1 for key in nodes if key[:2] == ("op", "CopySlices")) == 2


def test_in_place_on_a_leaf_view_is_torch_s_error_not_ours():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        x[:1].mul_(2)
    g = ga.trace(x)             # the leaf itself is still traceable
    assert [n.kind.value for n in g.nodes] == ["leaf", "output"]


class TwoOut(torch.autograd.Function):
    """A custom Function with two outputs, a non-differentiable one, and a non-tensor on ctx."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.save_for_backward(x)
        ctx.scale = scale
        idx = x.argmax().reshape(1)
        ctx.mark_non_differentiable(idx)
        return x * scale, x.exp(), idx

    @staticmethod
    def backward(ctx, g1, g2, _gidx):
        (x,) = ctx.saved_tensors
        return g1 * ctx.scale + g2 * x.exp(), None


def test_trace_custom_autograd_function_with_several_outputs():
    x = torch.randn(5, requires_grad=True)
    a, b, idx = TwoOut.apply(x, 3.0)
    g = ga.trace({"a": a.sum(), "b": b, "idx": idx}, show_saved=True)
    node = g.node("TwoOutBackward:0")
    assert [s.meta.shape for s in node.saved] == [(5,)]
    assert list(g.roots) == ["output:a", "output:b"]               # idx needs no grad: skipped
    assert {e.output_nr for e in g.edges if e.src == "TwoOutBackward:0"} == {0, 1}
    assert ga.load_graph(g.to_json()) == g


# == trace(): dtypes and layouts ==========================================================
def test_trace_complex_tensors():
    w = torch.randn(3, 3, dtype=torch.cfloat, requires_grad=True)
    out = (w @ w.conj().t()).abs().sum()
    g = ga.trace(out, show_saved=True)
    assert g.node("input:0").outputs[0].dtype == "complex64"
    assert ga.load_graph(g.to_json()) == g and "complex64" in g.to_dot()


def test_trace_sparse_tensors():
    s = torch.randn(4, 4).to_sparse().requires_grad_()
    dense = torch.randn(4, 2, requires_grad=True)
    out = torch.sparse.mm(s * 2, dense).sum()
    g = ga.trace(out, show_saved=True)
    leaves = {n.outputs[0].shape for n in g.by_kind("leaf")}
    assert leaves == {(4, 4), (4, 2)}
    assert ga.load_graph(g.to_json()) == g


def test_trace_meta_device_tensors():
    net = MLP().to("meta")
    out = net(torch.randn(8, 4, device="meta")).sum()
    g = ga.trace(out, model=net, show_saved=True)
    assert {m.device for n in g.nodes for m in n.outputs if m} == {"meta"}
    assert g.node("fc1/AddmmBackward0:0").saved          # metadata without reading any data
    assert ga.load_graph(g.to_json()) == g


def test_trace_graph_holding_integer_tensors():
    x = torch.randn(4, 3, requires_grad=True)
    idx = torch.tensor([[0], [2], [1], [0]])
    out = x.gather(1, idx).sum()
    g = ga.trace(out, show_saved=True)
    saved = {s.name: s.meta.dtype for s in g.node("GatherBackward0:0").saved}
    assert saved["index"] == "int64"


def test_requiring_grad_on_an_integer_tensor_is_torch_s_error():
    with pytest.raises(RuntimeError, match="floating point"):
        torch.arange(3).requires_grad_()


# == Graph, DOT and rendering ===============================================================
@pytest.fixture
def small_graph():
    net = MLP()
    return ga.trace(net(torch.randn(2, 4)).sum(), model=net)


def test_graph_node_missing_names_the_id_and_similar_ids(small_graph):
    with pytest.raises(KeyError) as info:
        small_graph.node("fc1.weight")               # the parameter name, not its node id
    assert "no node with id 'fc1.weight'" in str(info.value)
    assert "similar ids: ['param:fc1.weight']" in str(info.value)
    with pytest.raises(KeyError, match="no node with id 'missing'"):
        small_graph.node("missing")
    with pytest.raises(KeyError, match="no node with id 3"):
        small_graph.node(3)


def test_to_dot_negative_depth(small_graph):
    raises_typed(E.FormatError, ValueError, "depth must be an integer >= 0, got -1", "0 folds",
                 call=lambda: small_graph.to_dot(depth=-1))


@pytest.mark.parametrize("name, shown", [("g.jpeg", ".jpeg"), ("g", "(none)"), ("g.SVGZ", ".svgz")])
def test_render_unknown_suffix(small_graph, tmp_path, name, shown):
    raises_typed(E.FormatError, ValueError, f"unknown suffix {shown}", ".svg, .png, .pdf, .dot",
                 call=lambda: small_graph.render(tmp_path / name))
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("suffix", [".dot", ".svg"])
def test_render_to_an_unwritable_path(small_graph, tmp_path, suffix):
    if suffix == ".svg":                             # runs Graphviz first, then fails to write
        try:
            dotmod.find_dot()
        except E.RenderError as exc:
            pytest.skip(str(exc))
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("nothing can be created below a file")
    for target in (blocker / f"g{suffix}", blocker / "sub" / f"g{suffix}"):
        raises_typed(E.RenderError, RuntimeError, f"cannot write {str(target)!r}", "writable directory",
                     call=lambda: small_graph.render(target))


def test_render_with_GVA_DOT_pointing_nowhere(small_graph, tmp_path, monkeypatch):
    monkeypatch.setenv("GVA_DOT", "/nonexistent/bin/dot")
    raises_typed(E.RenderError, RuntimeError, "GVA_DOT='/nonexistent/bin/dot'", "unset it",
                 call=lambda: small_graph.render(tmp_path / "g.svg"))
    small_graph.render(tmp_path / "g.dot")            # .dot needs no Graphviz binary
    not_exec = tmp_path / "dot"
    not_exec.write_text("#!/bin/sh\n")
    monkeypatch.setenv("GVA_DOT", str(not_exec))
    raises_typed(E.RenderError, RuntimeError, "is not an executable file",
                 call=lambda: small_graph._repr_svg_())


def test_render_without_any_graphviz(small_graph, tmp_path, monkeypatch):
    monkeypatch.delenv("GVA_DOT", raising=False)
    monkeypatch.setattr(dotmod.shutil, "which", lambda name: None)
    monkeypatch.setattr(dotmod.sys, "executable", str(tmp_path / "no-venv" / "python"))
    raises_typed(E.RenderError, RuntimeError, "no Graphviz found", "pip install graphviz-pure",
                 call=lambda: small_graph.render(tmp_path / "g.png"))
    assert not (tmp_path / "g.png").exists()


# == load_graph ============================================================================
GOOD = '{"format":"graphviz-autograd-graph","version":1,"roots":[],'


@pytest.mark.parametrize("text, needles", [
    pytest.param("garbage", ("not valid JSON", "Graph.to_json()"), id="garbage"),
    pytest.param(b"\xff\xfe\x00garbage", ("not valid JSON",), id="garbage-bytes"),
    pytest.param('{"nodes": []}', ("not a graphviz-autograd graph", "format field is None"),
                 id="wrong-format"),
    pytest.param("[1, 2]", ("not a graphviz-autograd graph", "'list'"), id="json-list"),
    pytest.param('{"format":"graphviz-autograd-graph","version":2,"nodes":[],"edges":[],"roots":[]}',
                 ("version 2", "reads up to 1", "upgrade graphviz-autograd"), id="newer-version"),
    pytest.param('{"format":"graphviz-autograd-graph","version":"1"}', ("version '1'",),
                 id="version-not-int"),
    pytest.param(GOOD + '"nodes":[{"id":"a","kind":"weird","op":"x"}],"edges":[]}',
                 ("'weird' is not a valid NodeKind", "damaged"), id="unknown-kind"),
    pytest.param(GOOD + '"nodes":[{"id":"a","kind":"op","op":"x"},{"id":"a","kind":"op","op":"y"}],'
                 '"edges":[]}', ("duplicate node id 'a'",), id="duplicate-ids"),
    pytest.param(GOOD + '"nodes":[{"id":"a","kind":"op","op":"x"}],"edges":[["a","ghost",0,0,null]]}',
                 ("unknown node 'ghost'",), id="dangling-edge"),
    pytest.param(GOOD.replace('"roots":[]', '"roots":["nowhere"]') + '"nodes":[],"edges":[]}',
                 ("unknown node 'nowhere'",), id="dangling-root"),
    pytest.param(GOOD + '"nodes":[],"edges":[["a","b"]]}', ("malformed graph JSON",), id="short-edge"),
])
def test_load_graph_bad_text(text, needles):
    raises_typed(E.FormatError, ValueError, *needles, call=lambda: ga.load_graph(text))


def test_load_graph_from_a_json_file(tmp_path, small_graph):
    good = tmp_path / "g.json"
    good.write_text(small_graph.to_json())
    assert ga.load_graph(good) == small_graph and ga.load_graph(str(good)) == small_graph
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\x01 not json")
    raises_typed(E.FormatError, ValueError, "not valid JSON", call=lambda: ga.load_graph(bad))


# == open_run ==============================================================================
def test_open_run_on_a_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    raises_typed(E.RunNotFoundError, FileNotFoundError, str(missing), "does not exist",
                 call=lambda: ga.open_run(missing))


def test_open_run_on_a_directory_without_a_store(tmp_path):
    (tmp_path / "notes.txt").write_text("no run here")
    raises_typed(E.RunNotFoundError, FileNotFoundError, "rank-*.gva.sqlite", "Fix:",
                 call=lambda: ga.open_run(tmp_path))


def test_open_run_on_a_regular_file(tmp_path):
    f = tmp_path / "loss.csv"
    f.write_text("step,loss\n0,1.0\n")
    raises_typed(E.StoreError, RuntimeError, str(f), "not a readable graphviz-autograd run store",
                 "Fix:", call=lambda: ga.open_run(f))


# == Recorder: arguments ======================================================================
@pytest.mark.parametrize("kwargs, needles", [
    pytest.param(dict(every=0), ("every=0", "positive integer"), id="every=0"),
    pytest.param(dict(every=-3), ("every=-3",), id="every-negative"),
    pytest.param(dict(every=2.5), ("every=2.5",), id="every-float"),
    pytest.param(dict(every=True), ("every=True",), id="every-bool"),
    pytest.param(dict(record=("x",)), ("record=('x',)", "'params', 'nodes', 'activations'"),
                 id="record-unknown"),
    pytest.param(dict(record=()), ("record=()",), id="record-empty"),
    pytest.param(dict(record=None), ("record=None",), id="record-None"),
    pytest.param(dict(record="grads"), ("record=('grads',)",), id="record-unknown-str"),
    pytest.param(dict(optimizer="sgd"), ("optimizer= must be a torch.optim.Optimizer", "'sgd'"),
                 id="optimizer-str"),
    pytest.param(dict(optimizer=[torch.zeros(1)]), ("optimizer=", "[tensor("), id="optimizer-list"),
    pytest.param(dict(flush_interval="1"), ("flush_interval='1'", "seconds"), id="flush_interval-str"),
    pytest.param(dict(flush_interval=-1.0), ("flush_interval=-1.0",), id="flush_interval-negative"),
    pytest.param(dict(flush_interval=float("nan")), ("flush_interval=nan",), id="flush_interval-nan"),
])
def test_recorder_bad_arguments(tmp_path, kwargs, needles):
    model = MLP()
    raises_typed(E.ConfigError, ValueError, *needles,
                 call=lambda: ga.Recorder(model, tmp_path / "run", **kwargs))
    assert not (tmp_path / "run").exists()         # refused before touching the disk
    assert_no_hooks_left(model)


@pytest.mark.parametrize("model", [lambda x: x, "mlp", None, nn.Linear], ids=["function", "str", "None", "class"])
def test_recorder_model_that_is_not_a_module(tmp_path, model):
    raises_typed(E.ConfigError, ValueError, "needs the model (an nn.Module) first",
                 "ga.Recorder(model, 'runs/name'", call=lambda: ga.Recorder(model, tmp_path / "run"))


def test_recorder_optimizer_passed_as_the_model(tmp_path):
    net = MLP()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    raises_typed(E.ConfigError, ValueError, "got SGD (", call=lambda: ga.Recorder(opt, tmp_path / "r"))


# == Recorder: log() ==========================================================================
@pytest.fixture
def recorder(tmp_path):
    model = MLP()
    rec = ga.Recorder(model, tmp_path / "run", every=1)
    rec.log(0, loss=1.0)
    yield rec
    rec.close()


@pytest.mark.parametrize("args, kwargs, needles", [
    pytest.param((1,), dict(loss="high"), ("loss='high'", "numbers or 1-element tensors"), id="str-loss"),
    pytest.param((1,), dict(acc=[0.5]), ("acc=[0.5]",), id="list-metric"),
    pytest.param((1,), dict(loss=torch.ones(2, 3)), ("shape (2, 3)", "loss=loss.mean()"), id="multi-element"),
    pytest.param((1,), dict(loss=torch.tensor(1 + 2j)), ("complex tensor", "loss=loss.abs()"), id="complex"),
    pytest.param((1,), dict(loss=torch.ones(1, device="meta")), ("cannot read the value", "log a number"),
                 id="meta-tensor"),
    pytest.param(("1",), {}, ("step must be an int, got '1'",), id="str-step"),
    pytest.param((1.0,), {}, ("got 1.0",), id="float-step"),
    pytest.param((True,), {}, ("got True",), id="bool-step"),
    pytest.param((torch.tensor(1),), {}, ("got tensor(shape=()",), id="tensor-step"),
])
def test_log_bad_calls(recorder, args, kwargs, needles):
    raises_typed(E.ConfigError, ValueError, *needles, call=lambda: recorder.log(*args, **kwargs))
    recorder.log(10, loss=0.5)                       # the recorder still works afterwards
    recorder.close()
    assert ga.open_run(recorder.run_dir).steps() == [0, 10]


@pytest.mark.parametrize("step", [0, -5])
def test_a_step_out_of_order_is_skipped_with_one_warning_never_an_error(recorder, step):
    with pytest.warns(RuntimeWarning, match=rf"log\({step}\) skipped: step {step} is not after the "
                                            r"last logged step 0.*increasing number"):
        recorder.log(step, loss=9.0)
    recorder.log(10, loss=0.5)
    recorder.close()
    assert ga.open_run(recorder.run_dir).loss().values == [1.0, 0.5]


def test_log_after_close(recorder):
    recorder.close()
    recorder.close()                                 # closing twice is fine
    raises_typed(E.ConfigError, ValueError, "log(5) on a closed Recorder", recorder.run_dir,
                 "create a new one", call=lambda: recorder.log(5, loss=1.0))


# == Recorder: odd training data ================================================================
def test_nan_and_inf_loss_are_recorded_as_such(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        for step, scale in enumerate([1.0, float("nan"), float("inf")]):
            opt.zero_grad()
            loss = model(torch.randn(4, 4)).sum() * scale
            loss.backward()
            rec.log(step, loss=loss, lr_scale=scale)
    run = ga.open_run(tmp_path / "run")
    values = run.loss().values
    assert math.isfinite(values[0]) and math.isnan(values[1]) and values[2] in (math.inf, -math.inf)
    assert math.isnan(run.series("lr_scale").values[1])
    nan_counts = run.param_series("fc2.weight", "grad_nan").values
    assert nan_counts[0] == 0 and nan_counts[1] == model.fc2.weight.numel()
    assert math.isnan(run.param_series("fc2.weight", "grad_norm").values[1])


def test_empty_batch(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        for step, loss_fn in enumerate([lambda o: o.sum(), lambda o: F.mse_loss(o, torch.zeros_like(o))]):
            opt.zero_grad()
            out = model(torch.randn(0, 4))
            loss = loss_fn(out)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
        graph = rec.graph
    assert graph.node("output:0").outputs[0].shape == ()
    assert graph.node("fc2/AddmmBackward0:0").outputs[0].shape == (0, 2)
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == [0, 1]
    assert run.loss().values[0] == 0.0 and math.isnan(run.loss().values[1])   # mean over nothing
    assert run.param_series("fc1.weight").values[0] == 0.0
    assert run.module_series("fc1", "act_mean").steps == []                   # no activations: no row


class ComplexNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, dtype=torch.cfloat))
        self.fc1 = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc1((x.to(torch.cfloat) @ self.w).abs())


class SparseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 4, sparse=True)
        self.fc1 = nn.Linear(4, 1)

    def forward(self, x):
        return self.fc1(self.emb(x))


@pytest.mark.parametrize("make_net, make_x, param, dense", [
    pytest.param(ComplexNet, lambda: torch.randn(5, 4), "w", lambda g: g.abs(), id="complex-grad"),
    pytest.param(SparseNet, lambda: torch.randint(0, 20, (6,)), "emb.weight",
                 lambda g: g.coalesce().values(), id="sparse-grad"),
])
def test_recorder_statistics_on_complex_and_sparse_gradients(tmp_path, make_net, make_x, param, dense):
    torch.manual_seed(0)
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    expected = []
    with no_skipped_statistic():
        with ga.Recorder(net, tmp_path / "run", optimizer=opt, every=1) as rec:
            for step in range(3):
                opt.zero_grad()
                loss = net(make_x()).pow(2).mean()
                loss.backward()
                expected.append(dense(dict(net.named_parameters())[param].grad).norm().item())
                opt.step()
                rec.log(step, loss=loss)
    run = ga.open_run(tmp_path / "run")
    assert run.param_series(param).values == pytest.approx(expected, rel=1e-5)
    assert all(math.isfinite(v) for v in run.param_series(param, "update_ratio").values)


def test_recorder_on_a_meta_device_model_skips_statistics_with_a_warning(tmp_path):
    net = MLP().to("meta")
    with pytest.warns(RuntimeWarning, match="skipped a statistic.*meta"):
        with ga.Recorder(net, tmp_path / "run", every=1) as rec:
            loss = net(torch.randn(2, 4, device="meta")).sum()
            loss.backward()
            rec.log(0, loss=1.25)
    run = ga.open_run(tmp_path / "run")
    assert run.loss().values == [1.25] and run.graph().params.keys() >= {"fc1.weight"}


def test_recorder_on_a_model_with_integer_output(tmp_path):
    class Classify(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc1(x).argmax(-1)

    net = Classify()
    with pytest.warns(RuntimeWarning, match="NotDifferentiableError.*dtype=torch.int64"):
        with ga.Recorder(net, tmp_path / "run", every=1) as rec:
            net(torch.randn(2, 4))
            rec.log(0)
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == [0] and run.graph_versions() == []


class Odd(nn.Module):
    """In-place ReLU, in place through a view, a custom Function."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        h = Square.apply(self.act(self.fc1(x)))
        h.view(-1, 2, 2)[:, 0].mul_(2)
        return self.fc2(h)


@pytest.mark.parametrize("mode", ["plain", "retain_graph", "gradient_penalty"])
def test_recorder_with_in_place_views_custom_functions_and_double_backward(tmp_path, mode):
    torch.manual_seed(0)
    net = Odd()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    grads = []
    with no_skipped_statistic():
        with ga.Recorder(net, tmp_path / "run", optimizer=opt, every=1) as rec:
            for step in range(3):
                opt.zero_grad()
                x = torch.randn(5, 4, requires_grad=mode == "gradient_penalty")
                loss = net(x).pow(2).mean()
                if mode == "gradient_penalty":
                    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
                    loss = loss + gx.pow(2).sum()
                loss.backward(retain_graph=mode == "retain_graph")
                if mode == "retain_graph":
                    loss.backward()
                grads.append(net.fc1.weight.grad.norm().item())
                opt.step()
                rec.log(step, loss=loss)
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2]
    assert run.param_series("fc1.weight").values == pytest.approx(grads, rel=1e-5)
    ops = {n.op for n in run.graph().nodes}
    assert {"SquareBackward", "CopySlices"} <= ops
    assert run.node_series("SquareBackward:0").steps == [0, 1, 2]


# == Recorder: exceptions in the training loop leave no hooks ====================================
class Boom(Exception):
    pass


class Flaky(MLP):
    fail = False

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.fail:
            raise Boom("forward exploded")
        return self.fc2(h)


class FailingSGD(torch.optim.SGD):
    fail = False

    def step(self, closure=None):      # torch wraps it: the step pre-hooks run first
        if self.fail:
            raise Boom("step exploded")
        return super().step(closure)


def test_forward_raises_inside_with_recorder(tmp_path):
    model = Flaky()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Boom, match="forward exploded"):
        with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
            train_steps(model, rec, opt, 2)
            model.fail = True
            model(torch.randn(3, 4))
    model.fail = False
    assert_no_hooks_left(model, opt)
    assert ga.open_run(tmp_path / "run").steps() == [0, 1]


def test_forward_raises_and_training_continues(tmp_path):
    """Skipping a bad batch: the next steps are recorded as if nothing happened."""
    model = Flaky()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
        train_steps(model, rec, opt, 2)
        model.fail = True
        with pytest.raises(Boom):
            model(torch.randn(3, 4))
        model.fail = False
        train_steps(model, rec, opt, 2, start=2)
        expected = rec.graph.fingerprint()
    assert_no_hooks_left(model, opt)
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == [0, 1, 2, 3] and len(run.graph_versions()) == 1
    assert run.param_series("fc1.weight").steps == [0, 1, 2, 3]
    assert run.graph().fingerprint() == expected
    nodes = {n.id for n in run.graph().by_kind("op")}
    for step in range(4):
        assert set(run.stats_at(step, "node")) == nodes, step


def test_optimizer_step_raises_inside_with_recorder(tmp_path):
    model = MLP()
    opt = FailingSGD(model.parameters(), lr=0.1)
    with pytest.raises(Boom, match="step exploded"):
        with ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1) as rec:
            train_steps(model, rec, opt, 1)
            opt.fail = True
            train_steps(model, rec, opt, 1, start=1)
    assert_no_hooks_left(model, opt)
    assert ga.open_run(tmp_path / "run").steps() == [0]


def test_keyboard_interrupt_in_the_loop_without_with(tmp_path):
    model = MLP()
    opt = torch.optim.Adam(model.parameters())
    rec = ga.Recorder(model, tmp_path / "run", optimizer=opt, every=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            model(torch.randn(2, 4))                # forward done, capture running
            raise KeyboardInterrupt
    finally:
        rec.close()
    assert_no_hooks_left(model, opt)


def test_instrument_forward_raises_leaves_no_node_creation_hook():
    model = Flaky()
    model.fail = True
    with pytest.raises(Boom):
        with ga.instrument(model):
            model(torch.randn(2, 4))
    model.fail = False
    assert_no_hooks_left(model)


def test_instrument_non_module():
    raises_typed(E.HookError, RuntimeError, "expected an nn.Module, got str", "ga.instrument(net)",
                 call=lambda: ga.instrument("net").__enter__())


def test_recording_the_same_model_twice_at_once(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ga.Recorder(model, tmp_path / "a", optimizer=opt, every=1) as first:
        hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        raises_typed(E.HookError, RuntimeError, "MLP already has an open Recorder",
                     str(tmp_path / "a"), "close it", call=lambda: ga.Recorder(model, tmp_path / "b"))
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
        assert not (tmp_path / "b").exists()
        train_steps(model, first, opt, 2)
    assert ga.open_run(tmp_path / "a").param_series("fc1.weight").steps == [0, 1]
    with ga.Recorder(model, tmp_path / "c") as again:    # after closing, a new one may start
        again.log(0, loss=1.0)
    assert_no_hooks_left(model, opt)


# == Recorder: run directories that cannot hold a run ==============================================
def test_run_dir_below_a_regular_file(tmp_path):
    model = MLP()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    raises_typed(E.StoreError, RuntimeError, f"cannot create run directory {blocker / 'run'}",
                 "writable location", call=lambda: ga.Recorder(model, blocker / "run"))
    assert_no_hooks_left(model)


def _make_store(path: Path, user_version: int, tables: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(f"{tables} PRAGMA user_version={user_version};")
    db.close()


def test_run_dir_holding_a_newer_store(tmp_path):
    model = MLP()
    store = tmp_path / "run" / store_filename(0)
    _make_store(store, STORE_SCHEMA_VERSION + 1, "CREATE TABLE future(x);")
    for call in (lambda: ga.Recorder(model, tmp_path / "run"), lambda: ga.open_run(tmp_path / "run")):
        raises_typed(E.SchemaVersionError, RuntimeError, str(store), f"version {STORE_SCHEMA_VERSION + 1}",
                     "upgrade graphviz-autograd", call=call)
    assert store.exists()                           # nothing was deleted
    assert_no_hooks_left(model)


def test_run_dir_holding_garbage_bytes(tmp_path):
    model = MLP()
    store = tmp_path / "run" / store_filename(0)
    store.parent.mkdir()
    store.write_bytes(os.urandom(8192))
    for call in (lambda: ga.Recorder(model, tmp_path / "run"), lambda: ga.open_run(tmp_path / "run")):
        err = raises_typed(E.StoreError, RuntimeError, str(store), "not a readable graphviz-autograd run store",
                           call=call)
        assert not isinstance(err, sqlite3.Error)
    assert_no_hooks_left(model)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A mount point factory: ``mount(size)`` gives a directory on a tmpfs of that size."""
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"tmpfs-{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_full_disk_before_the_first_write(tiny_tmpfs):
    disk = tiny_tmpfs("64k")
    model = MLP()
    raises_typed(E.StoreError, RuntimeError, f"cannot create run store {disk / 'run'}", "full",
                 "free space", call=lambda: ga.Recorder(model, disk / "run"))
    assert list((disk / "run").iterdir()) == []     # no half-built store left behind
    assert_no_hooks_left(model)
    raises_typed(E.RunNotFoundError, FileNotFoundError, call=lambda: ga.open_run(disk / "run"))


def test_full_disk_during_training(tiny_tmpfs):
    disk = tiny_tmpfs("512k")
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logged = -1
    with pytest.raises(E.StoreError) as info:
        with ga.Recorder(model, disk / "run", optimizer=opt, every=1, flush_interval=0) as rec:
            for step in range(100_000):
                opt.zero_grad()
                loss = model(torch.randn(4, 4)).pow(2).mean()
                loss.backward()
                opt.step()
                rec.log(step, loss=loss)
                logged = step
    assert isinstance(info.value, RuntimeError)
    assert "full" in str(info.value) and "free disk space" in str(info.value)
    assert_no_hooks_left(model, opt)
    run = ga.open_run(disk / "run")                 # what was written is intact
    steps = run.steps()
    assert steps == list(range(len(steps))) and len(steps) >= logged >= 1
    assert run.param_series("fc1.weight").steps == steps and run.graph().params


# == the command line ==========================================================================
MODELS = textwrap.dedent("""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc1(x)

    class NeedsArgs(torch.nn.Module):
        def __init__(self, width):
            super().__init__()

    def make(width, depth):
        return Tiny()

    def not_a_model():
        return 42

    WIDTH = 3

    class Exploding(Tiny):
        def forward(self, x):
            raise ValueError("forward exploded on purpose")
""")

# id: (args, needles in the error line); "{d}" is the directory holding models.py and raises.py.
# These two run the installed console script in a subprocess (the real entry point, its exit
# code and no traceback; each imports torch: ~3 s of CPU) ...
CLI_CASES = {
    "spec-does-not-import": (["render", "no_such_module_xyz:Net", "--input-shape", "1,4"],
                             ["'no_such_module_xyz:Net'", "cannot import 'no_such_module_xyz'", "PYTHONPATH"]),
    "forward-raises": (["render", "{d}/models.py:Exploding", "--input-shape", "1,4"],
                       ["forward pass of", "ValueError: forward exploded on purpose", "--input-shape"]),
}
# ... and these run the same command in-process (click's CliRunner): same code, no torch import each.
CLI_INPROCESS_CASES = {
    "spec-missing-attribute": (["render", "{d}/models.py:Nope", "--input-shape", "1,4"],
                               ["has no attribute 'Nope'", "it defines: ", "Tiny"]),
    "spec-file-raises": (["render", "{d}/raises.py:Net", "--input-shape", "1,4"],
                         ["importing", "failed with RuntimeError: model file exploded", "python "]),
    "spec-class-needs-args": (["render", "{d}/models.py:NeedsArgs", "--input-shape", "1,4"],
                              ["calling it with no arguments failed", "'width'", "def make_model()"]),
    "shape-zero": (["render", "{d}/models.py:Tiny", "--input-shape", "0,3"],
                   ["input shape '0,3'", "'0' is not a positive integer", "e.g. 1,3,224,224"]),
    "shape-letters": (["render", "{d}/models.py:Tiny", "--input-shape", "a,b"],
                      ["input shape 'a,b'", "'a' is not a positive integer"]),
    "shape-empty": (["doctor", "{d}/models.py:Tiny", "--input-shape", ""],
                    ["input shape '' is empty", "separated by commas"]),
    "shape-negative": (["render", "{d}/models.py:Tiny", "--input-shape=-1,4"],
                       ["input shape '-1,4'", "'-1' is not a positive integer"]),
    "render-no-graphviz": (["render", "{d}/models.py:Tiny", "--input-shape", "1,4", "-o", "{d}/t.svg"],
                           ["GVA_DOT='/nonexistent/dot' is not an executable file", "unset it"]),
    "spec-without-colon": (["render", "models", "--input-shape", "1,4"],
                           ["'models'", "package.module:callable"]),
    "spec-file-missing": (["render", "{d}/missing.py:Net", "--input-shape", "1,4"],
                          ["missing.py' does not exist", "check the path"]),
    "spec-factory-needs-args": (["doctor", "{d}/models.py:make", "--input-shape", "1,4"],
                                ["models.py:make'", "missing 2 required positional arguments"]),
    "spec-not-callable": (["render", "{d}/models.py:WIDTH", "--input-shape", "1,4"],
                          ["names a int, not a class or function"]),
    "spec-returns-non-module": (["render", "{d}/models.py:not_a_model", "--input-shape", "1,4"],
                                ["returned int, not an nn.Module"]),
    "doctor-forward-raises": (["doctor", "{d}/models.py:Exploding", "--input-shape", "1,4"],
                              ["failed with ValueError: forward exploded on purpose"]),
    "render-unwritable": (["render", "{d}/models.py:Tiny", "--input-shape", "1,4", "-o",
                           "{d}/models.py/t.dot"], ["cannot write", "models.py/t.dot", "writable"]),
    "render-unknown-suffix": (["render", "{d}/models.py:Tiny", "--input-shape", "1,4", "-o", "{d}/t.jpeg"],
                              ["unknown suffix .jpeg", ".svg"]),
    "render-depth-negative": (["render", "{d}/models.py:Tiny", "--input-shape", "1,4", "--depth", "-1",
                               "-o", "{d}/t.dot"], ["depth must be an integer >= 0, got -1"]),
}


def _model_dir(d: Path) -> Path:
    (d / "models.py").write_text(MODELS)
    (d / "raises.py").write_text('raise RuntimeError("model file exploded")\n')
    return d


def _assert_one_error_line(returncode, stderr, stdout, needles, d):
    text = stderr.strip()
    assert "Traceback" not in stderr + stdout, text[-2000:]
    assert returncode == 2, (returncode, text[-2000:])
    assert text.count("\n") == 0 and text.startswith("error: "), text
    for needle in needles:
        assert needle.replace("{d}", str(d)) in text, (needle, text)


def _console_script() -> str:
    exe = Path(sys.executable).with_name("graphviz-autograd")
    if not exe.exists():
        pytest.skip(f"console script not installed at {exe} (pip install -e .)")
    return str(exe)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Run every subprocess case once, two at a time (the machine may have two cores)."""
    exe = _console_script()
    d = _model_dir(tmp_path_factory.mktemp("cli"))
    env = dict(os.environ, GVA_DOT="/nonexistent/dot", PYTHONPATH=str(REPO))

    def run(case):
        args = [a.replace("{d}", str(d)) for a in CLI_CASES[case][0]]
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=240, env=env,
                              cwd=str(d))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(CLI_CASES, pool.map(run, CLI_CASES)))
    return d, results


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_clear_line(cli_results, case):
    d, results = cli_results
    proc = results[case]
    _assert_one_error_line(proc.returncode, proc.stderr, proc.stdout, CLI_CASES[case][1], d)


@pytest.mark.parametrize("case", list(CLI_INPROCESS_CASES))
def test_cli_bad_input_in_process(tmp_path, monkeypatch, case):
    from click.testing import CliRunner

    from graphviz_autograd.cli import main

    d = _model_dir(tmp_path)
    monkeypatch.chdir(d)
    monkeypatch.setenv("GVA_DOT", "/nonexistent/dot")
    monkeypatch.syspath_prepend(str(d))
    args, needles = CLI_INPROCESS_CASES[case]
    result = CliRunner().invoke(main, [a.replace("{d}", str(d)) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        result.exception
    _assert_one_error_line(result.exit_code, result.stderr, result.stdout, needles, d)
