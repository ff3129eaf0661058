"""A small line chart written as SVG text (no plotting library needed).

Example:
    >>> svg = line_chart({"sgd": [1.0, 0.5, 0.25]}, title="loss", ylabel="loss")
    >>> svg.startswith("<svg") and "sgd" in svg
    True
"""
from __future__ import annotations

import math
from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
W, H = 860, 440
LEFT, RIGHT, TOP, BOTTOM = 78, 270, 48, 58


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1)]
    base = 10 ** math.floor(math.log10(max(hi - lo, 1e-12)))
    step = base
    for mult in (0.1, 0.2, 0.5, 1, 2, 5, 10):
        if (hi - lo) / (base * mult) <= 8:
            step = base * mult
            break
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2)]


def line_chart(series: dict[str, list[float]], *, title: str, xlabel: str = "step",
               ylabel: str = "", log: bool = True, notes: dict[str, str] | None = None) -> str:
    """SVG text of one chart with a line per entry of ``series`` (y on a log scale by default).

    Args:
        series: ``{label: values}``; value ``i`` is drawn at x = ``i``.
        notes: ``{label: text}`` shown under each label in the legend.
    """
    values = [v for vs in series.values() for v in vs if math.isfinite(v) and (v > 0 or not log)]
    if not values:
        values = [1.0]
    f = math.log10 if log else (lambda v: v)
    lo, hi = f(min(values)), f(max(values))
    if log:
        lo, hi = math.floor(lo), math.ceil(hi)
    else:
        pad = 0.05 * (hi - lo)
        lo, hi = lo - pad, hi + pad
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    n = max((len(vs) for vs in series.values()), default=1)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(i):
        return LEFT + pw * (i / max(n - 1, 1))

    def y(v):
        return TOP + ph * (1 - (f(v) - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2:.0f}" y="26" text-anchor="middle" font-size="16" '
           f'font-weight="bold">{escape(title)}</text>']
    for t in _ticks(lo, hi, log):
        if not lo - 1e-9 <= f(t) <= hi + 1e-9:
            continue
        ty = y(t)
        out.append(f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 8}" y="{ty + 4:.1f}" text-anchor="end">{round(t, 12):g}</text>')
    for i in _ticks(0, n - 1, False):
        if 0 <= i <= n - 1:
            out.append(f'<text x="{x(i):.1f}" y="{TOP + ph + 20}" text-anchor="middle">{i:g}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{LEFT + pw / 2:.0f}" y="{H - 14}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="18" y="{TOP + ph / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 18 {TOP + ph / 2:.0f})">'
               f'{escape(ylabel)}{" (log scale)" if log else ""}</text>')
    for k, (label, vs) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vs)
                       if math.isfinite(v) and (v > 0 or not log))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.5"/>')
        ly = TOP + 12 + 44 * k
        out.append(f'<line x1="{LEFT + pw + 14}" x2="{LEFT + pw + 40}" y1="{ly}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="3"/>')
        out.append(f'<text x="{LEFT + pw + 46}" y="{ly + 4}">{escape(label)}</text>')
        note = (notes or {}).get(label)
        if note:
            out.append(f'<text x="{LEFT + pw + 46}" y="{ly + 20}" font-size="11" '
                       f'fill="#555">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)
