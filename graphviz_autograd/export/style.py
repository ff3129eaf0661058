"""The visual language shared by the DOT render and the dashboard."""
from __future__ import annotations

from graphviz_autograd.graph.model import NodeKind

# kind -> (fill colour, border colour, DOT shape/style, legend text)
KIND_STYLE = {
    NodeKind.PARAM: ("#c6dbef", "#3182bd", "box", "filled", "parameter (AccumulateGrad)"),
    NodeKind.LEAF: ("#c7e9c0", "#31a354", "box", "filled", "input that requires grad"),
    NodeKind.OUTPUT: ("#fdd0a2", "#e6550d", "box", "filled,bold", "output / loss"),
    NodeKind.OP: ("#f0f0f0", "#636363", "box", "rounded,filled", "autograd op (grad_fn)"),
    NodeKind.SAVED: ("#ffffb3", "#b8a500", "box", "filled,dashed", "tensor saved for backward"),
    NodeKind.MODULE: ("#e5e5f5", "#6a51a3", "box", "rounded,filled", "module or repeated calls, folded"),
}
MODULE_FILL, MODULE_BORDER = KIND_STYLE[NodeKind.MODULE][:2]
CLUSTER_BORDER = "#9e9ac8"
FONT = "Helvetica"


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
