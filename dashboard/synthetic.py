"""Synthetic graphs and run stores of any size (no torch), for benchmarks, tests and demos.

The graph looks like a small transformer: ``blocks.<i>`` with layer norms, q/k/v
projections, attention, an MLP and residual adds, about 40 nodes per block, ids
following :mod:`graphviz_autograd.graph.ids`. ``python -m dashboard.synthetic runs/big
--nodes 2000 --steps 500`` writes a run to open in the dashboard.
"""
from __future__ import annotations

import argparse
import math
import random
import time

from graphviz_autograd.graph.model import Edge, Graph, Node, NodeKind, SavedTensor, TensorMeta

BLOCK_NODES = 41


class _Builder:
    def __init__(self, batch: int, width: int):
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.seq = 0
        self.batch, self.width = batch, width
        self.metas: dict[str, TensorMeta] = {}

    def op(self, op: str, module: str, inputs: list[str], shape: tuple[int, ...],
           saved: int = 0) -> str:
        k = self.counts.get((module, op), 0)
        self.counts[(module, op)] = k + 1
        nid = f"{module}/{op}:{k}" if module else f"{op}:{k}"
        meta = TensorMeta(shape, "float32")
        nbytes = 4 * meta.numel
        self.nodes.append(Node(id=nid, kind=NodeKind.OP, op=op, module=module, outputs=(meta,),
                               source=f"model.py:{100 + self.seq}", seq=self.seq,
                               saved=tuple(SavedTensor(f"self{i}" if i else "self", meta, nbytes,
                                                       f"s{self.seq}_{i}") for i in range(saved))))
        self.seq += 1
        self.metas[nid] = meta
        for i, src in enumerate(inputs):
            self.edges.append(Edge(src, nid, 0, i, self._meta(src)))
        return nid

    def _meta(self, nid: str) -> TensorMeta | None:
        return self.metas.get(nid)

    def param(self, name: str, shape: tuple[int, ...]) -> str:
        nid = f"param:{name}"
        self.metas[nid] = TensorMeta(shape, "float32")
        self.nodes.append(Node(id=nid, kind=NodeKind.PARAM, op="AccumulateGrad", param=name,
                               outputs=(TensorMeta(shape, "float32"),)))
        return nid

    def linear(self, module: str, x: str, d_in: int, d_out: int) -> str:
        w = self.param(f"{module}.weight", (d_out, d_in))
        b = self.param(f"{module}.bias", (d_out,))
        t = self.op("TBackward0", module, [w], (d_in, d_out))
        return self.op("AddmmBackward0", module, [b, x, t], (self.batch, d_out), saved=2)

    def layer_norm(self, module: str, x: str) -> str:
        w = self.param(f"{module}.weight", (self.width,))
        b = self.param(f"{module}.bias", (self.width,))
        return self.op("NativeLayerNormBackward0", module, [x, w, b], (self.batch, self.width), 2)

    def block(self, i: int, x: str) -> str:
        m, d = f"blocks.{i}", self.width
        h = self.layer_norm(f"{m}.ln1", x)
        q, k, v = (self.linear(f"{m}.attn.{p}", h, d, d) for p in "qkv")
        q, k, v = (self.op("ViewBackward0", f"{m}.attn", [t], (self.batch, 4, d // 4)) for t in (q, k, v))
        kt = self.op("TransposeBackward0", f"{m}.attn", [k], (self.batch, d // 4, 4))
        s = self.op("BmmBackward0", f"{m}.attn", [q, kt], (self.batch, 4, 4), 2)
        s = self.op("DivBackward0", f"{m}.attn", [s], (self.batch, 4, 4))
        p = self.op("SoftmaxBackward0", f"{m}.attn", [s], (self.batch, 4, 4), 1)
        a = self.op("BmmBackward0", f"{m}.attn", [p, v], (self.batch, 4, d // 4), 2)
        a = self.op("ViewBackward0", f"{m}.attn", [a], (self.batch, d))
        a = self.linear(f"{m}.attn.o", a, d, d)
        x = self.op("AddBackward0", m, [x, a], (self.batch, d))
        h = self.layer_norm(f"{m}.ln2", x)
        h = self.linear(f"{m}.mlp.fc1", h, d, 4 * d)
        h = self.op("GeluBackward0", f"{m}.mlp", [h], (self.batch, 4 * d), 1)
        h = self.linear(f"{m}.mlp.fc2", h, 4 * d, d)
        return self.op("AddBackward0", m, [x, h], (self.batch, d))


def synthetic_graph(n_nodes: int = 1000, *, batch: int = 8, width: int = 64, extra: int = 0) -> Graph:
    """A transformer-like graph of about ``n_nodes`` nodes; ``extra`` adds blocks (a new version)."""
    b = _Builder(batch, width)
    emb = b.param("embed.weight", (1000, width))
    x = b.op("EmbeddingBackward0", "embed", [emb], (batch, width), 1)
    for i in range(max(1, round((n_nodes - 12) / BLOCK_NODES)) + extra):
        x = b.block(i, x)
    x = b.layer_norm("norm", x)
    x = b.linear("head", x, width, 10)
    x = b.op("LogSoftmaxBackward0", "", [x], (batch, 10), 1)
    loss = b.op("NllLossBackward0", "", [x], (), 1)
    b.nodes.append(Node(id="output:0", kind=NodeKind.OUTPUT, op="output", param="0",
                        outputs=(TensorMeta((), "float32"),)))
    b.edges.append(Edge(loss, "output:0", 0, 0, TensorMeta((), "float32")))
    return Graph(nodes=tuple(reversed(b.nodes)), edges=tuple(b.edges), roots=("output:0",))


def _grad_stats(rng: random.Random, depth: float, step: int, spike: bool) -> dict[str, float]:
    norm = math.exp(-4.0 * depth) * (1.0 + 0.2 * rng.random()) / (1.0 + step / 500)
    if spike:
        norm *= 1e3
    return {"grad_norm": norm, "grad_absmax": norm * (0.2 + 0.1 * rng.random()),
            "grad_mean": norm * (rng.random() - 0.5) * 0.01, "grad_std": norm * 0.05,
            "grad_zero_frac": 0.3 * rng.random(),
            "grad_nan": 0.0, "grad_inf": 0.0}


def write_synthetic_run(run_dir, *, n_nodes: int = 1000, n_steps: int = 1000, every: int = 1,
                        versions: int = 1, rank: int = 0, world_size: int = 1, seed: int = 0,
                        overwrite: bool = True, node_stats: bool = True, meta: dict | None = None) -> Graph:
    """Write a run store with a synthetic graph and plausible statistics; return the last graph.

    With ``versions`` > 1 the graph grows by one block at evenly spaced steps (a
    dynamic graph). Loss spikes (and gradients explode) at step ``n_steps * 2 // 3``.
    """
    from graphviz_autograd.store import RunWriter  # noqa: PLC0415

    rng = random.Random(seed + rank)
    graphs = [synthetic_graph(n_nodes, extra=v) for v in range(versions)]
    spike = n_steps * 2 // 3
    with RunWriter(run_dir, rank=rank, world_size=world_size, overwrite=overwrite,
                   flush_interval=5.0, meta={"model": "Synthetic", **(meta or {})}) as w:
        ids = [w.add_graph(g.to_json(), g.fingerprint(), first_step=v * n_steps // versions,
                           n_nodes=len(g)) for v, g in enumerate(graphs)]
        plan = []
        for g in graphs:
            order = {n.id: i / max(1, len(g)) for i, n in enumerate(g.nodes)}
            ops = [(n.id, 1.0 - order[n.id]) for n in g.nodes if n.kind is NodeKind.OP]
            params = [(n.param, 1.0 - order[n.id]) for n in g.nodes if n.kind is NodeKind.PARAM]
            plan.append((ops, params))
        for step in range(n_steps):
            v = min(versions - 1, step * versions // n_steps)
            loss = 2.3 * math.exp(-step / max(1, n_steps / 3)) + 0.1 * rng.random()
            scalars = {"loss": loss * (20 if step == spike else 1), "lr": 0.1 / (1 + step / 1000)}
            stats = None
            if step % every == 0:
                ops, params = plan[v]
                stats = {"param": [(p, {**_grad_stats(rng, d, step, step == spike),
                                        "param_norm": 1.0 + d, "update_ratio": 1e-3})
                                   for p, d in params]}
                if node_stats:
                    stats["node"] = [(nid, _grad_stats(rng, d, step, step == spike)) for nid, d in ops]
            w.add_step(step, wall_time=time.time(), graph_version=ids[v] if step % every == 0 else None,
                       scalars=scalars, stats=stats)
    return graphs[-1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--versions", type=int, default=1)
    ap.add_argument("--ranks", type=int, default=1)
    args = ap.parse_args(argv)
    for r in range(args.ranks):
        write_synthetic_run(args.run_dir, n_nodes=args.nodes, n_steps=args.steps, every=args.every,
                            versions=args.versions, rank=r, world_size=args.ranks)
    print(f"wrote {args.run_dir}")


if __name__ == "__main__":
    main()
