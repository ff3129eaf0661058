"""Random differentiable op graphs for tests/test_fuzz.py.

A *recipe* is plain data (a tuple of steps) drawn by :func:`recipes`; :func:`build`
turns it into live tensors, the same way every time. Shapes are simulated while
drawing, so every drawn op is valid for its operands and nothing is filtered away.

The reference structure (:func:`reference_structure`) is an independent walk over
``next_functions``: op nodes are keyed by name and rank of ``_sequence_nr()``,
parameters by name and plain leaves by identity (their shapes are drawn distinct,
so the shape names the tensor in our graph).
"""
from __future__ import annotations

from hypothesis import strategies as st

UNARY = ("exp", "tanh", "sigmoid", "relu", "sin", "neg", "pow2")
BINARY = ("add", "mul", "sub")
SHAPES = ((2,), (3,), (2, 2), (2, 3), (3, 2), (3, 3), (1, 3))
MAX_NDIM = 3


# -- shape simulation (plain tuples, no torch) ------------------------------------
def _broadcast(a: tuple, b: tuple) -> tuple | None:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(reversed(out))


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def operands(step: tuple) -> tuple[int, ...]:
    """Pool indexes a step reads."""
    kind = step[0]
    if kind in ("param", "leaf"):
        return ()
    if kind == "unary":
        return (step[2],)
    if kind == "binary":
        return step[2:4]
    if kind == "matmul":
        return step[1:3]
    return (step[1],)


@st.composite
def recipes(draw, max_ops: int = 16):
    """A recipe: ``(steps, roots)``; ``steps`` build a pool of tensors, ``roots`` index it."""
    steps: list[tuple] = []
    shapes: list[tuple] = []          # shape of each pool entry
    n_params = draw(st.integers(1, 3))
    n_plain = draw(st.integers(0, 2))
    for _ in range(n_params):
        shape = draw(st.sampled_from(SHAPES))
        steps.append(("param", shape))
        shapes.append(shape)
    plain = draw(st.lists(st.sampled_from(SHAPES), min_size=n_plain, max_size=n_plain, unique=True))
    for shape in plain:
        steps.append(("leaf", shape))
        shapes.append(shape)
    used: set[int] = set()            # pool entries some later step consumed
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(shapes)

        def biased(idx):
            """Mostly one of the newest candidates, so the graph grows deep, not wide."""
            idx = sorted(idx, reverse=True)
            if draw(st.integers(0, 3)) < 3:
                return idx[draw(st.integers(0, min(2, len(idx) - 1)))]
            return draw(st.sampled_from(idx))

        options = ["unary", "binary", "sumall", "view_as", "inplace", "const"]
        if any(len(s) >= 1 for s in shapes):
            options += ["sum_dim", "reshape", "select", "inplace_slice"]
        if any(len(s) >= 1 and s[0] >= 2 for s in shapes):
            options += ["slice", "split", "chunk"]
        if any(len(s) >= 1 and 1 <= s[0] <= 4 for s in shapes):
            options += ["unbind"]
        if any(len(s) == 2 for s in shapes):
            options += ["t"]
        if any(len(s) < MAX_NDIM for s in shapes):
            options += ["unsqueeze"]
        mm_pairs = [(i, j) for i in range(n) for j in range(n)
                    if len(shapes[i]) == 2 and len(shapes[j]) == 2 and shapes[i][1] == shapes[j][0]]
        if mm_pairs:
            options += ["matmul"]
        op = draw(st.sampled_from(options))

        def choose(cond=lambda _s: True):
            return biased([i for i in range(n) if cond(shapes[i])])

        if op == "unary":
            i = choose()
            steps.append(("unary", draw(st.sampled_from(UNARY)), i))
            shapes.append(shapes[i])
        elif op == "binary":
            i = choose()
            partners = [j for j in range(n) if _broadcast(shapes[i], shapes[j]) is not None
                        and len(_broadcast(shapes[i], shapes[j])) <= MAX_NDIM]
            j = biased(partners)                         # may be i itself: a shared input
            steps.append(("binary", draw(st.sampled_from(BINARY)), i, j))
            shapes.append(_broadcast(shapes[i], shapes[j]))
        elif op == "const":                              # an operand that needs no grad
            i = choose()
            steps.append(("const", i))
            shapes.append(shapes[i])
        elif op == "sumall":
            i = choose()
            steps.append(("sumall", i))
            shapes.append(())
        elif op == "view_as":
            i = choose()
            steps.append(("view_as", i))
            shapes.append(shapes[i])
        elif op == "inplace":                            # clone, then modify the clone in place
            i = choose()
            steps.append(("inplace", i, draw(st.sampled_from(("mul_", "add_", "sub_")))))
            shapes.append(shapes[i])
        elif op == "inplace_slice":                      # in place through a view: CopySlices
            i = choose(lambda s: len(s) >= 1)
            steps.append(("inplace_slice", i))
            shapes.append(shapes[i])
        elif op == "sum_dim":
            i = choose(lambda s: len(s) >= 1)
            d = draw(st.integers(0, len(shapes[i]) - 1))
            keep = draw(st.booleans())
            s = list(shapes[i])
            if keep:
                s[d] = 1
            else:
                del s[d]
            steps.append(("sum_dim", i, d, keep))
            shapes.append(tuple(s))
        elif op == "reshape":
            i = choose(lambda s: len(s) >= 1)
            steps.append(("reshape", i))
            shapes.append((_numel(shapes[i]),))
        elif op == "select":
            i = choose(lambda s: len(s) >= 1)
            k = draw(st.integers(0, shapes[i][0] - 1))
            steps.append(("select", i, k))
            shapes.append(shapes[i][1:])
        elif op == "slice":
            i = choose(lambda s: len(s) >= 1 and s[0] >= 2)
            start = draw(st.integers(0, shapes[i][0] - 1))
            stop = draw(st.integers(start + 1, shapes[i][0]))
            steps.append(("slice", i, start, stop))
            shapes.append((stop - start,) + shapes[i][1:])
        elif op in ("split", "chunk"):
            i = choose(lambda s: len(s) >= 1 and s[0] >= 2)
            size = draw(st.integers(1, shapes[i][0] - 1))
            rows = shapes[i][0]
            if op == "split":
                parts = [min(size, rows - k) for k in range(0, rows, size)]
            else:                                        # chunk(size): torch's own rule
                each = -(-rows // size)
                parts = [min(each, rows - k) for k in range(0, rows, each)]
            steps.append((op, i, size, len(parts)))
            shapes.extend((p,) + shapes[i][1:] for p in parts)
        elif op == "unbind":
            i = choose(lambda s: len(s) >= 1 and 1 <= s[0] <= 4)
            steps.append(("unbind", i, shapes[i][0]))
            shapes.extend(shapes[i][1:] for _ in range(shapes[i][0]))
        elif op == "t":
            i = choose(lambda s: len(s) == 2)
            steps.append(("t", i))
            shapes.append(shapes[i][::-1])
        elif op == "unsqueeze":
            i = choose(lambda s: len(s) < MAX_NDIM)
            steps.append(("unsqueeze", i))
            shapes.append((1,) + shapes[i])
        elif op == "matmul":
            i, j = mm_pairs[biased(range(len(mm_pairs)))]
            steps.append(("matmul", i, j))
            shapes.append((shapes[i][0], shapes[j][1]))
        used.update(operands(steps[-1]))
    n = len(shapes)
    if draw(st.booleans()):                  # every result nobody consumed (up to 4)
        roots = tuple([i for i in range(n - 1, -1, -1) if i not in used][:4])
    else:                                    # the last result and up to two others
        others = draw(st.lists(st.integers(0, n - 1), max_size=2))
        roots = tuple(dict.fromkeys([n - 1, *others]))
    return tuple(steps), roots, tuple(shapes)


# -- building ----------------------------------------------------------------------
def build(recipe):
    """Run ``recipe``: ``(model holding the parameters, root tensors, leaf tensors)``."""
    import torch

    steps, roots, _shapes = recipe
    gen = torch.Generator().manual_seed(0)

    def rand(shape):
        return torch.randn(shape, generator=gen) * 0.5

    model = torch.nn.ParameterList()
    pool: list = []
    leaves: list = []
    for step in steps:
        kind = step[0]
        if kind == "param":
            p = torch.nn.Parameter(rand(step[1]))
            model.append(p)
            pool.append(p)
        elif kind == "leaf":
            x = rand(step[1]).requires_grad_()
            leaves.append(x)
            pool.append(x)
        elif kind == "unary":
            _, name, i = step
            x = pool[i]
            pool.append(x.pow(2) if name == "pow2" else getattr(torch, name)(x))
        elif kind == "binary":
            _, name, i, j = step
            pool.append(getattr(torch, name)(pool[i], pool[j]))
        elif kind == "const":
            x = pool[step[1]]
            pool.append(x * rand(x.shape))
        elif kind == "sumall":
            pool.append(pool[step[1]].sum())
        elif kind == "view_as":
            x = pool[step[1]]
            pool.append(x.view_as(x))
        elif kind == "inplace":
            _, i, method = step
            y = pool[i].clone()
            getattr(y, method)(1.5)
            pool.append(y)
        elif kind == "inplace_slice":
            y = pool[step[1]].clone()
            y[:1].mul_(2.0)
            pool.append(y)
        elif kind == "sum_dim":
            _, i, d, keep = step
            pool.append(pool[i].sum(d, keepdim=keep))
        elif kind == "reshape":
            pool.append(pool[step[1]].reshape(-1))
        elif kind == "select":
            _, i, k = step
            pool.append(pool[i][k])
        elif kind == "slice":
            _, i, start, stop = step
            pool.append(pool[i][start:stop])
        elif kind == "split":
            _, i, size, count = step
            parts = torch.split(pool[i], size)
            assert len(parts) == count
            pool.extend(parts)
        elif kind == "chunk":
            _, i, size, count = step
            parts = torch.chunk(pool[i], size)
            assert len(parts) == count, (pool[i].shape, size, len(parts), count)
            pool.extend(parts)
        elif kind == "unbind":
            _, i, count = step
            pool.extend(torch.unbind(pool[i]))
        elif kind == "t":
            pool.append(pool[step[1]].t())
        elif kind == "unsqueeze":
            pool.append(pool[step[1]].unsqueeze(0))
        elif kind == "matmul":
            _, i, j = step
            pool.append(pool[i] @ pool[j])
        else:  # pragma: no cover - a typo in a recipe
            raise AssertionError(f"unknown step {step!r}")
    for t, shape in zip(pool, recipe[2]):
        assert tuple(t.shape) == shape, (t.shape, shape)
    return model, [pool[r] for r in roots], leaves


# -- the independent reference -------------------------------------------------------
def _short(fn) -> str:
    return fn.name().rpartition("::")[2]


def _root_node(t):
    import torch

    if t.grad_fn is not None:
        return t.grad_fn, t.output_nr
    return torch.autograd.graph.get_gradient_edge(t).node, 0


def reference_structure(roots, model):
    """``(nodes, edges, root_edges)`` keyed without our ids, from ``next_functions``.

    Ops: ``("op", name, rank of _sequence_nr)``; parameters: ``("param", name)``;
    plain leaves: ``("leaf", shape)`` (shapes of plain leaves are distinct).
    ``root_edges`` is ``[(key of the root's node, output_nr)]`` in root order.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    seen, edges = set(), set()
    stack = [_root_node(t)[0] for t in roots]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for k, (nxt, nr) in enumerate(fn.next_functions):
            if nxt is not None:
                edges.add((nxt, fn, nr, k))
                stack.append(nxt)
    ops = sorted((fn for fn in seen if not hasattr(fn, "variable")), key=lambda f: f._sequence_nr())
    key = {fn: ("op", _short(fn), r) for r, fn in enumerate(ops)}
    for fn in seen:
        if hasattr(fn, "variable"):
            v = fn.variable
            key[fn] = ("param", names[id(v)]) if id(v) in names else ("leaf", tuple(v.shape))
    root_edges = [(key[fn], nr) for fn, nr in map(_root_node, roots)]
    return ({key[n] for n in seen}, {(key[s], key[d], o, k) for s, d, o, k in edges}, root_edges)


def networkx_structure(nxg):
    """The same keys read from our ``Graph.to_networkx()`` (outputs give ``root_edges``)."""
    def key(nid):
        a = nxg.nodes[nid]
        if a["kind"] == "op":
            return ("op", a["op"], a["seq"])
        if a["kind"] == "param":
            return ("param", a["param"])
        return ("leaf", tuple(a["shapes"][0]))
    inner = [n for n, a in nxg.nodes(data=True) if a["kind"] in ("op", "param", "leaf")]
    nodes = {key(n) for n in inner}
    inner_set = set(inner)
    edges = set()
    for u, v, data in nxg.edges(data=True):
        if u in inner_set and v in inner_set:
            edges.update((key(u), key(v), o, k) for o, k in data["inputs"])
    outputs = {}
    for u, v, data in nxg.edges(data=True):
        if nxg.nodes[v]["kind"] == "output":
            (o, _k), = data["inputs"]
            outputs[v] = (key(u), o)
    root_edges = [outputs[r] for r in nxg.graph["roots"]]
    return nodes, edges, root_edges
