"""Property-based tests: random differentiable op graphs (see tests/fuzz_graphs.py).

For every drawn recipe: tracing does not crash; the networkx export has exactly the
nodes and edges of an independent ``next_functions`` walk; JSON round trips are
lossless; rebuilding the same recipe gives the same ids and fingerprint.

``make test`` runs GVA_FUZZ_EXAMPLES (default 60) reproducible examples; ``make fuzz``
sets it to 2000 and draws fresh examples every run (set GVA_FUZZ_DERANDOMIZE=1 to
repeat a run).
"""
from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings

import graphviz_autograd as ga
from fuzz_graphs import build, networkx_structure, recipes, reference_structure

EXAMPLES = int(os.environ.get("GVA_FUZZ_EXAMPLES", 60))
DERANDOMIZE = os.environ.get("GVA_FUZZ_DERANDOMIZE",
                             "0" if "GVA_FUZZ_EXAMPLES" in os.environ else "1") == "1"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(recipes())
def test_structure_matches_a_reference_walk(recipe):
    model, roots, _leaves = build(recipe)
    graph = ga.trace(roots, model=model)
    nodes, edges, root_edges = networkx_structure(graph.to_networkx())
    ref_nodes, ref_edges, ref_roots = reference_structure(roots, model)
    assert nodes == ref_nodes
    assert edges == ref_edges
    assert root_edges == ref_roots
    assert len(graph.by_kind("output")) == len(roots)
    # every node id is unique and every edge joins known nodes (Graph checks the first)
    assert all(e.src in graph and e.dst in graph for e in graph.edges)


@FUZZ
@given(recipes())
def test_json_round_trip_is_lossless(recipe):
    model, roots, _leaves = build(recipe)
    for show_saved in (False, True):
        graph = ga.trace(roots, model=model, show_saved=show_saved)
        again = ga.load_graph(graph.to_json())
        assert again == graph
        assert again.fingerprint() == graph.fingerprint()
        assert ga.load_graph(graph.to_json(indent=1)) == graph


@FUZZ
@given(recipes())
def test_ids_are_stable_when_the_recipe_is_rebuilt(recipe):
    graphs = []
    for _ in range(2):
        model, roots, _leaves = build(recipe)
        graphs.append(ga.trace(roots, model=model))
        del model, roots, _leaves
    a, b = graphs
    assert [n.id for n in a.nodes] == [n.id for n in b.nodes]
    assert a.fingerprint() == b.fingerprint()
    assert a == b


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
@settings(max_examples=4, deadline=None, derandomize=True, database=None)
@given(recipes())
def test_dot_accepts_the_text(recipe):
    """A handful only: running dot is slow compared to the rest."""
    from graphviz_autograd.export.dot import run_dot

    model, roots, _leaves = build(recipe)
    graph = ga.trace(roots, model=model, show_saved=True)
    svg = run_dot(graph.to_dot(), "svg", timeout=60).decode()
    assert "<svg" in svg
    assert all(n.id in svg for n in graph.nodes if n.kind is not ga.NodeKind.PARAM)


# -- the store writer: any value is stored exactly or refused by name, never half a step -------
from hypothesis import strategies as st  # noqa: E402

from graphviz_autograd.errors import StoreError  # noqa: E402
from graphviz_autograd.store import RunWriter, open_run  # noqa: E402

_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.integers(min_value=-(10 ** 400), max_value=10 ** 400), st.text(max_size=3),
                    st.booleans())
_NAMES = st.one_of(st.text(max_size=6), st.integers(), st.none())
_STEPS = st.one_of(st.integers(min_value=-(2 ** 64), max_value=2 ** 64), st.floats(allow_nan=True))


def _plain(value):
    """What the store gives back for an accepted value."""
    return None if value is None else float(value)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_STEPS, st.dictionaries(_NAMES, _VALUES, max_size=3),
                          st.dictionaries(_NAMES, _VALUES, max_size=3)), max_size=6))
def test_the_writer_stores_every_accepted_step_exactly_and_refuses_the_rest(tmp_path_factory, steps):
    run_dir = tmp_path_factory.mktemp("fuzz")
    accepted = {}
    with RunWriter(run_dir, flush_interval=0) as w:
        for step, scalars, stats in steps:
            try:
                w.add_step(step, wall_time=0.0, graph_version=None, scalars=scalars,
                           stats={"param": [(name, {"grad_norm": v}) for name, v in stats.items()]})
            except StoreError as exc:
                assert "Fix" in str(exc) or "must be" in str(exc) or "not after" in str(exc), str(exc)
                continue
            accepted[int(step)] = (scalars, stats)
        w.add_step(2 ** 63 - 1, wall_time=0.0, graph_version=None, scalars={"end": 1.0})  # still usable
    run = open_run(run_dir)
    assert run.steps() == sorted(accepted) + [2 ** 63 - 1]
    for step, (scalars, stats) in accepted.items():
        for name, value in scalars.items():
            got = run.scalar_at(name, step)
            assert got == _plain(value) or (got != got and _plain(value) != _plain(value))
        table = run.stats_at(step, "param")
        for name, value in stats.items():
            expect = _plain(value)
            assert (name not in table) if expect is None else (
                table[name] == expect or (table[name] != table[name] and expect != expect))
