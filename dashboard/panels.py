"""HTML pieces built from run data: node details, colour legend, version diff summary.

Every name from a run (op, module path, parameter, source line) is passed to
Dash as a plain string child, which React renders as text, never as HTML.
"""
from __future__ import annotations

from dash import html

from graphviz_autograd.export.labels import plural
from graphviz_autograd.export.style import human_bytes
from graphviz_autograd.graph.model import Graph, Node, NodeKind, TensorMeta

from .fold import GROUP_PREFIX
from .graph_view import BINARY, NO_DATA, NONFINITE, PALETTE, ZERO, fmt_value
from .ops import base_name, explain

MAX_ROWS = 12


def _meta(m: TensorMeta | None) -> str:
    return "?" if m is None else f"{m.short()} {m.dtype}" + ("" if m.device == "cpu" else f" {m.device}")


def _row(label: str, value) -> html.Tr:
    return html.Tr([html.Th(label), html.Td(value)])


def _list(items: list[str], cls: str) -> html.Ul:
    shown = items[:MAX_ROWS]
    lis = [html.Li(s) for s in shown]
    if len(items) > len(shown):
        lis.append(html.Li(f"… {len(items) - len(shown)} more", className="gva-more"))
    return html.Ul(lis, className=cls)


def input_shapes(graph: Graph, node_id: str) -> list[str]:
    """``"input k: (shape) dtype  ← producer"`` for each edge into the node, by input position."""
    edges = sorted((e for e in graph.edges if e.dst == node_id), key=lambda e: e.input_nr)
    out = []
    for e in edges:
        meta = e.meta
        if meta is None and e.src in graph:
            src = graph.node(e.src)
            meta = src.outputs[e.output_nr] if e.output_nr < len(src.outputs) else None
        out.append(f"input {e.input_nr}: {_meta(meta)}  ← {e.src}")
    return out


def detail_panel(node: Node, graph: Graph, members: int = 0) -> list:
    """The detail panel of one visible node (op, folded module, parameter, input or output)."""
    folded = node.kind is NodeKind.MODULE
    title = node.module if folded else (node.param if node.kind is NodeKind.PARAM else node.op)
    rows = [_row("id", node.id), _row("kind", "folded module" if folded else node.kind.value)]
    if not folded:
        rows.append(_row("op", node.op))
    if node.module:
        rows.append(_row("module", node.module))
    if node.param:
        rows.append(_row("parameter" if node.kind is NodeKind.PARAM else "name", node.param))
    if node.source:
        rows.append(_row("source", node.source))
    if folded:
        attrs = dict(node.attrs)
        rows.append(_row("contains", f"{plural(attrs.get('nodes', members), 'node')}, "
                                     f"{plural(attrs.get('params', '0'), 'parameter')}"))
        rows.append(_row("main ops", attrs.get("ops", "")))
    children: list = [html.H3(title, className="gva-node-title"),
                      html.Table(html.Tbody(rows), className="gva-props")]
    ins = input_shapes(graph, node.id)
    if ins:
        children += [html.H4("inputs"), _list(ins, "gva-shapes gva-inputs")]
    outs = [f"output {i}: {_meta(m)}" for i, m in enumerate(node.outputs)]
    if outs:
        children += [html.H4("outputs"), _list(outs, "gva-shapes gva-outputs")]
    if node.saved:
        live = [s for s in node.saved if not s.freed]
        total = sum(s.nbytes for s in live)
        lines = [f"{s.name}: {_meta(s.meta)}, " + ("freed" if s.freed else human_bytes(s.nbytes))
                 for s in node.saved]
        children += [html.H4(f"saved for backward ({human_bytes(total)})"),
                     _list(lines, "gva-shapes gva-saved")]
    rule = None if folded else explain(node.op)
    if rule:
        forward, grad = rule
        children += [html.H4(f"what {base_name(node.op)} does"),
                     html.Div(className="gva-rule", children=[
                         html.Div([html.B("forward "), forward]),
                         html.Div([html.B("gradient "), grad])])]
    attrs = [(k, v) for k, v in node.attrs if not folded]
    if attrs:
        children += [html.H4("attributes"), _list([f"{k} = {v}" for k, v in attrs], "gva-attrs")]
    return children


def group_panel(group_id: str, n_visible: int) -> list:
    path = group_id[len(GROUP_PREFIX):]
    return [html.H3(path, className="gva-node-title"),
            html.Table(html.Tbody([_row("kind", "module (open)"),
                                   _row("shows", plural(n_visible, "node"))]), className="gva-props"),
            html.P("Use “fold / unfold selected” to fold it into one node.", className="gva-hint")]


def at_step_table(values: dict[str, float | None], step: int | None, stats_step: int | None) -> list:
    """The node's statistics at the selected step."""
    if step is None:
        return []
    note = "" if stats_step == step else f" (statistics from step {stats_step})"
    rows = [_row(k, fmt_value(v)) for k, v in values.items() if v is not None]
    if not rows:
        return [html.P(f"no statistics at step {step}{note}", className="gva-hint")]
    return [html.H4(f"at step {step}{note}"), html.Table(html.Tbody(rows), className="gva-props")]


def legend(info: dict | None, step: int | None = None) -> html.Div:
    """Colour legend of the graph: palette with its range, plus no-data and NaN/Inf swatches."""
    if not info or info.get("scale") == "none":
        return html.Div(className="gva-legend", children="colour: node kind")
    scale = info["scale"]
    where = f" of step {step}" if step is not None else ""
    parts: list = [html.Span(f"{info['label']}{where}", className="gva-legend-title")]
    if scale == "binary":
        parts += [html.Span(className="gva-swatch", style={"background": BINARY[0]}), "none",
                  html.Span(className="gva-swatch", style={"background": BINARY[1]}), "some"]
    elif info.get("lo") is None:
        parts.append(html.Span("no values recorded", className="gva-hint"))
    else:
        fmt = "bytes" if info["metric"] == "saved_bytes" else "log"
        parts += [html.Span(fmt_value(info["lo"], fmt), className="gva-legend-lo"),
                  html.Span(className="gva-gradient",
                            style={"background": f"linear-gradient(to right, {', '.join(PALETTE)})"}),
                  html.Span(fmt_value(info["hi"], fmt), className="gva-legend-hi"),
                  html.Span("log scale" if scale == "log" else "linear", className="gva-hint")]
    parts += [html.Span(className="gva-swatch", style={"background": NO_DATA}), "no data"]
    if info.get("n_zero"):
        parts += [html.Span(className="gva-swatch", style={"background": ZERO}),
                  f"exactly 0 ({info['n_zero']})"]
    if info.get("n_nonfinite"):
        parts += [html.Span(className="gva-swatch", style={"background": NONFINITE}),
                  f"NaN/Inf ({info['n_nonfinite']})"]
    return html.Div(className="gva-legend", children=parts)


def diff_summary(added: list[str], removed: list[str], va: int, vb: int,
                 first_a: int | None, first_b: int | None) -> list:
    if va == vb:
        return [html.P("Pick two different versions to compare.", className="gva-hint")]
    head = (f"version {va} (from step {first_a}) → version {vb} (from step {first_b}): "
            f"{len(added)} nodes added, {len(removed)} removed")
    return [html.P(head),
            html.Div(className="gva-two", children=[
                html.Div([html.H4("added", className="gva-added"), _list(added, "gva-diff-added")]),
                html.Div([html.H4("removed", className="gva-removed"), _list(removed, "gva-diff-removed")]),
            ])]


def findings_list(findings, step: int | None) -> html.Div:
    """What looks wrong at the selected step (diagnosis.recorded.run_findings), as text."""
    if step is None:
        return html.Div(id="gva-findings", className="gva-findings")
    if not findings:
        return html.Div(id="gva-findings", className="gva-findings gva-hint",
                        children=f"no findings at step {step}")
    items = [html.Li(className=f"gva-finding gva-{f.severity.value}",
                     children=[html.B(f"{f.severity.value} {f.kind.value}: "), f.message])
             for f in findings]
    return html.Div(id="gva-findings", className="gva-findings",
                    children=[html.Span(f"findings at step {step} (marked on the graph)",
                                        className="gva-legend-title"), html.Ul(items)])
