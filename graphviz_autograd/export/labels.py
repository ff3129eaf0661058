"""What a node says, in the DOT render and in the dashboard: label lines, tooltip, DOT quoting.

Every label is a double-quoted DOT string with ``\\`` and ``"`` escaped, never an
HTML label, so a module named ``<img src=x>`` renders literally.

Example:
    >>> from graphviz_autograd.graph.model import Node, NodeKind, TensorMeta
    >>> node_label(Node("fc/AddmmBackward0:0", NodeKind.OP, "AddmmBackward0",
    ...                 outputs=(TensorMeta((8, 120), "float32"),)))
    ('AddmmBackward0', '(8, 120)')
    >>> q('say "hi"')
    '"say \\\\"hi\\\\""'
"""
from __future__ import annotations

import re

from graphviz_autograd.graph.fold import MODULE_PREFIX, node_module
from graphviz_autograd.graph.model import Node, NodeKind
from graphviz_autograd.export.style import human_bytes


# dot 2.43 rejects a quoted string over 16,384 bytes: longer text is written as pieces joined
# with DOT's ``+`` (2,000 characters stay under the limit even fully escaped).
_PIECE = 2000
# Characters Graphviz or an SVG (XML) reader cannot take: NUL ends dot's string, other control
# characters, lone surrogates and U+FFFE/U+FFFF make the SVG unreadable. Shown as \x00, \ud800.
_UNSAFE = re.compile("[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def q(text: object) -> str:
    """Quote ``text`` as a DOT string literal (any text: control characters are shown
    escaped, long text is split into joined pieces).

    Example:
        >>> print(q('say "hi"\\n'), q("a\\x00b"))
        "say \\"hi\\"\\n" "a\\\\x00b"
    """
    s = str(text)
    if len(s) > _PIECE:
        return " + ".join(_quote(s[i:i + _PIECE]) for i in range(0, len(s), _PIECE))
    return _quote(s)


def _quote(s: str) -> str:
    s = s.replace("\\", "\\\\").replace('"', '\\"')
    s = s.replace("\r", "").replace("\n", "\\n")
    if _UNSAFE.search(s):
        s = _UNSAFE.sub(_visible, s)
    return f'"{s}"'


def _visible(match: re.Match) -> str:
    """An unsafe character as the text of its Python escape (a DOT-escaped backslash first)."""
    code = ord(match.group())
    return f"\\\\x{code:02x}" if code < 0x100 else f"\\\\u{code:04x}"


def lines_label(*parts: str) -> str:
    """A multi-line label: each part escaped, joined with DOT's ``\\n``."""
    return q("\n".join(p for p in parts if p))


def plural(n: int | str, word: str) -> str:
    """``"1 node"``, ``"3 nodes"``."""
    return f"{n} {word}" + ("" if str(n) == "1" else "s")


def shown_shape(n: Node, show_shapes: bool = True) -> str:
    """The shape a node's label shows (its first output), or ""."""
    if not show_shapes or n.kind is NodeKind.MODULE or not n.outputs or n.outputs[0] is None:
        return ""
    return n.outputs[0].short()


def short_name(n: Node) -> str:
    """The name of a parameter or folded module inside the box of the module drawn around it
    (``layer1.0.conv1.weight`` in ``layer1.0.conv1`` -> ``weight``; ``layer1.0`` -> ``0``)."""
    if n.kind is NodeKind.PARAM:
        home = node_module(n)
        return n.param[len(home) + 1:] if home and n.param.startswith(home + ".") else n.param
    if n.kind is NodeKind.MODULE and n.id.startswith(MODULE_PREFIX):
        home = node_module(n)
        return n.module[len(home) + 1:] if home and n.module.startswith(home + ".") else n.module
    return n.param if n.kind is NodeKind.PARAM else n.module


def node_label(n: Node, show_shapes: bool = True, short: bool = False,
               brief: bool = False) -> tuple[str, ...]:
    """The label of ``n``, line by line: name (op, parameter, module) and output shape.

    ``short``: parameters and folded modules are named relative to the module box drawn
    around them (whose label says the rest). ``brief``: a folded module gives only its size
    (not its main ops).
    """
    shape = shown_shape(n, show_shapes)
    if n.kind is NodeKind.PARAM:
        return (short_name(n) if short else n.param, shape)
    if n.kind is NodeKind.LEAF:
        return (n.id, shape)
    if n.kind is NodeKind.OUTPUT:
        return (f"output {n.param}" if n.param and n.param != "0" else "output", shape)
    if n.kind is NodeKind.SAVED:
        nbytes = human_bytes(n.saved[0].nbytes) if n.saved else ""
        return (f"saved {n.param}", shape, nbytes)
    if n.kind is NodeKind.MODULE:
        a = dict(n.attrs)
        size = plural(a.get("nodes", "?"), "node")
        name = short_name(n) if short else n.module
        if brief and n.id.startswith(MODULE_PREFIX):       # repeated calls keep their summary
            return (name, size)
        return (name, f"{size}: {a.get('ops', '')}")
    return (n.op, shape)


def tooltip(n: Node) -> str:
    """Everything known about ``n`` in a few lines (SVG tooltips)."""
    parts = [n.id]
    if n.module:
        parts.append(f"module: {n.module}")
    if n.source:
        parts.append(f"at {n.source}")
    for m in n.outputs:
        if m is not None:
            parts.append(f"out: {m.short()} {m.dtype}")
    for s in n.saved:
        parts.append(f"saved {s.name}: " + ("freed" if s.freed else
                                            f"{s.meta.short() if s.meta else ''} {human_bytes(s.nbytes)}"))
    return "\n".join(parts)
