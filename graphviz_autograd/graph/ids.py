"""Deterministic, step-stable node ids (stdlib only).

The id scheme (the recorder's store and the dashboard key their data on it):

========  ==========================================  ==========================
kind      id                                          example
========  ==========================================  ==========================
param     ``param:<qualified parameter name>``        ``param:conv1.weight``
leaf      ``input:<k>`` (k: order found from roots)    ``input:0``
op        ``[<module path>/]<OpName>:<k>``             ``fc1/AddmmBackward0:0``
output    ``output:<name>``                           ``output:loss``
saved     ``saved:<k>`` (one per storage)             ``saved:3``
========  ==========================================  ==========================

``k`` for an op counts earlier ops with the same module path and op name in
forward creation order (autograd's ``sequence_nr``, which grows by one for
every node created). Raw ``id()`` values and raw sequence numbers never enter
an id, so the same model traced at step 1 and step 1000 gets the same ids as
long as its control flow is the same. The module path comes from
instrumentation when the graph was built under :func:`~graphviz_autograd.instrument`
(the recorder always does this) and otherwise from the graph itself (an op
that consumes ``fc1.weight`` belongs to ``fc1``).
"""
from __future__ import annotations

from typing import Iterable, Sequence


def op_ids(ops: Sequence[tuple[str, str]], order: Iterable[int]) -> list[str]:
    """Ids for op nodes.

    Args:
        ops: ``(module_path, op_name)`` per op node, indexed like ``order``.
        order: indexes of ``ops`` sorted by forward creation order.

    Returns:
        One id per entry of ``ops`` (same indexing).

    Example:
        >>> op_ids([("fc1", "AddmmBackward0"), ("", "ReluBackward0"), ("fc1", "AddmmBackward0")], [2, 0, 1])
        ['fc1/AddmmBackward0:1', 'ReluBackward0:0', 'fc1/AddmmBackward0:0']
    """
    counts: dict[tuple[str, str], int] = {}
    out = [""] * len(ops)
    for i in order:
        key = ops[i]
        k = counts.get(key, 0)
        counts[key] = k + 1
        module, op = key
        out[i] = f"{module}/{op}:{k}" if module else f"{op}:{k}"
    return out


def param_id(name: str) -> str:
    return f"param:{name}"


def leaf_id(k: int) -> str:
    return f"input:{k}"


def output_id(name: str) -> str:
    return f"output:{name}"


def saved_id(k: int) -> str:
    return f"saved:{k}"
