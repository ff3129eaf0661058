"""Golden graphs: a traced graph matches a reviewed file (structure as JSON, or DOT text)."""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path

from graphviz_autograd.errors import FormatError, GoldenGraphError
from graphviz_autograd.testing.settings import settings

UPDATE_ENV = "GVA_UPDATE_GOLDEN"


def assert_graph_matches(graph, golden_path, *, update: bool | None = None,
                         keep_source: bool = False) -> None:
    """Assert ``graph`` equals the reviewed golden file at ``golden_path``.

    ``.json`` goldens compare the graph structure (ids, kinds, ops, modules,
    shapes, edges); ``.dot``/``.gv`` goldens compare the DOT text. Source lines
    and saved-tensor details are left out unless ``keep_source=True``, so
    editing unrelated code does not break the test.

    Args:
        graph: a :class:`~graphviz_autograd.graph.model.Graph`.
        golden_path: where the golden file lives (commit it).
        update: write the golden file instead of comparing. Default: only when
            ``GVA_UPDATE_GOLDEN=1`` or pytest ran with ``--gva-update-golden``.

    Raises:
        GoldenGraphError: the file is missing or differs (the message lists the
            differences and how to accept them).

    Example:
        >>> import tempfile, os
        >>> from graphviz_autograd.graph.model import Graph
        >>> path = os.path.join(tempfile.mkdtemp(), "g.json")
        >>> assert_graph_matches(Graph(nodes=(), edges=(), roots=()), path, update=True)
        >>> assert_graph_matches(Graph(nodes=(), edges=(), roots=()), path)
    """
    __tracebackhide__ = True
    path = Path(golden_path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("json", "dot", "gv"):
        raise FormatError(f"golden file {str(path)!r} must end in .json, .dot or .gv (got "
                          f"{path.suffix or 'no suffix'!r}); .json compares structure")
    plain = _normalise(graph, keep_source)
    text = plain.to_json(indent=1) + "\n" if fmt == "json" else plain.to_dot(legend=False)
    if update is None:
        update = bool(settings().get("update_golden")) or os.environ.get(UPDATE_ENV) == "1"
    how = f"rerun with --gva-update-golden (or {UPDATE_ENV}=1), review the change and commit it"
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        raise GoldenGraphError(f"golden graph {str(path)!r} does not exist; to create it, {how}")
    golden = path.read_text(encoding="utf-8")
    if golden == text:
        return
    if fmt == "json":
        from graphviz_autograd.graph.serialize import from_json

        try:
            diff = graph_diff(from_json(golden), plain)
        except FormatError as exc:
            diff = [f"the golden file is not a graph JSON ({exc})"]
    else:
        diff = list(difflib.unified_diff(golden.splitlines(), text.splitlines(), "golden",
                                         "graph", lineterm="", n=1))[:60]
    diff = diff or ["(same structure, different text: formatting or attribute order changed)"]
    raise GoldenGraphError(f"graph differs from golden {str(path)!r}:\n  " + "\n  ".join(diff)
                           + f"\nIf the change is intended, {how}.")


def _normalise(graph, keep_source: bool):
    from graphviz_autograd.graph.model import Graph

    if keep_source:
        return graph
    nodes = tuple(_replace(n, source="", saved=()) for n in graph.nodes)
    return Graph(nodes=nodes, edges=graph.edges, roots=graph.roots)


def _replace(node, **changes):
    """A copy of ``node`` with ``changes`` (nodes are named tuples or frozen dataclasses)."""
    if hasattr(node, "_replace"):
        return node._replace(**changes)
    return dataclasses.replace(node, **changes)


def graph_diff(old, new, limit: int = 40) -> list[str]:
    """Readable differences between two graphs: nodes, node fields, edges, roots."""
    lines = []
    old_ids, new_ids = {n.id for n in old.nodes}, {n.id for n in new.nodes}
    for nid in sorted(old_ids - new_ids):
        lines.append(f"- node {nid} ({old.node(nid).op}) is gone")
    for nid in sorted(new_ids - old_ids):
        lines.append(f"+ node {nid} ({new.node(nid).op}) is new")
    for nid in sorted(old_ids & new_ids):
        a, b = old.node(nid), new.node(nid)
        for fld in ("kind", "op", "module", "param", "outputs", "seq", "attrs"):
            va, vb = getattr(a, fld), getattr(b, fld)
            if va != vb:
                if fld == "outputs":
                    va = [m.short() if m else None for m in va]
                    vb = [m.short() if m else None for m in vb]
                lines.append(f"~ node {nid}: {fld} {va} -> {vb}")
    old_e = {(e.src, e.dst, e.output_nr, e.input_nr) for e in old.edges}
    new_e = {(e.src, e.dst, e.output_nr, e.input_nr) for e in new.edges}
    lines += [f"- edge {s} -> {d}" for s, d, _o, _i in sorted(old_e - new_e)]
    lines += [f"+ edge {s} -> {d}" for s, d, _o, _i in sorted(new_e - old_e)]
    if old.roots != new.roots:
        lines.append(f"~ roots {list(old.roots)} -> {list(new.roots)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more differences"]
    return lines
