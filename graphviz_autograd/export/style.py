"""The visual language shared by the DOT render and the dashboard, and text colours that stay
readable on any fill (WCAG contrast).

Example:
    >>> text_color("#3b56a5"), text_color("#f0f0f0")
    ('#ffffff', '#1a1a1a')
    >>> round(contrast("#1a1a1a", "#f0f0f0"), 1)
    15.3
"""
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
DARK_TEXT, LIGHT_TEXT = "#1a1a1a", "#ffffff"
AA = 4.5                       # WCAG AA contrast for normal text


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def luminance(color: str) -> float:
    """WCAG relative luminance of ``#rrggbb``."""
    c = color.lstrip("#")
    if len(c) == 3:
        c = "".join(ch * 2 for ch in c)
    out = 0.0
    for weight, part in zip((0.2126, 0.7152, 0.0722), (c[0:2], c[2:4], c[4:6])):
        s = int(part, 16) / 255
        out += weight * (s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4)
    return out


def contrast(fg: str, bg: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21)."""
    a, b = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def text_color(fill: str) -> str:
    """Dark grey, white or black text: the first that reaches 4.5:1 on ``fill`` (one of them
    always does), else the better of the two."""
    for candidate in (DARK_TEXT, LIGHT_TEXT, "#000000"):
        if contrast(candidate, fill) >= AA:
            return candidate
    return max((DARK_TEXT, LIGHT_TEXT), key=lambda c: contrast(c, fill))  # pragma: no cover
