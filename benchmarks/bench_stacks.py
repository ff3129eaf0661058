"""Recorder overhead on models practitioners train, built from configs with random weights:
a small BERT (BertForSequenceClassification, 2 layers, hidden 64), timm vit_tiny_patch16_224,
torchvision resnet18; fp32 and bf16 autocast. Steps of every configuration are interleaved
one by one in one process (bench_recorder.py's method); the ratio is to the plain step.

Usage: python benchmarks/bench_stacks.py [--models bert,vit_tiny,resnet18] [--steps N] [--rounds R]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import graphviz_autograd as ga  # noqa: E402
from common import ratio_table  # noqa: E402

CONFIGS = {
    "plain": None,
    "plain again (control)": None,
    "default (every=50)": dict(),
    "params+nodes every step": dict(every=1, record=("params", "nodes")),
}


def make(name: str, batch: int):
    """``(model, inputs, loss_fn)`` for one model."""
    torch.manual_seed(0)
    if name == "bert":
        import transformers
        config = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                         intermediate_size=128, vocab_size=1000, num_labels=2)
        model = transformers.BertForSequenceClassification(config)
        ids = torch.randint(5, 1000, (batch, 32))
        labels = torch.randint(0, 2, (batch,))
        return model, ids, lambda m, x: m(input_ids=x, labels=labels).loss
    if name == "vit_tiny":
        import timm
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    else:
        import torchvision
        model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 10, (batch,))
    return model, x, lambda m, inp: F.cross_entropy(m(inp), y)


def run(name: str, batch: int, steps: int, rounds: int, warmup: int, bf16: bool) -> dict:
    base, x, loss_fn = make(name, batch)
    copies = [copy.deepcopy(base) for _ in CONFIGS]
    optims = [torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in copies]
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = {k: [] for k in CONFIGS}
    tmp = tempfile.mkdtemp()
    for r in range(rounds):
        slot = {name_: (k + r) % len(copies) for k, name_ in enumerate(CONFIGS)}   # rotate copies
        recs = {}
        try:
            for cfg_name, cfg in CONFIGS.items():
                if cfg is not None:
                    j = slot[cfg_name]
                    recs[cfg_name] = ga.Recorder(copies[j], os.path.join(tmp, f"{r}-{cfg_name}"),
                                                 optimizer=optims[j], overwrite=True, **cfg)
            for cfg_name in CONFIGS:
                times[cfg_name].append([])
            names = list(CONFIGS)
            for i in range(warmup + steps):
                k = i % len(names)
                for cfg_name in names[k:] + names[:k]:      # rotate the order every step
                    j = slot[cfg_name]
                    model, opt, rec = copies[j], optims[j], recs.get(cfg_name)
                    t0 = time.perf_counter()
                    opt.zero_grad()
                    with cast():
                        loss = loss_fn(model, x)
                    loss.backward()
                    opt.step()
                    if rec is not None:
                        rec.log(i, loss=loss)
                    if i >= warmup:
                        times[cfg_name][-1].append(time.perf_counter() - t0)
        finally:
            for rec in recs.values():
                rec.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert,vit_tiny,resnet18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also run under torch.autocast(bfloat16)")
    args = ap.parse_args()
    for name in args.models.split(","):
        for bf16 in ([False, True] if args.bf16 else [False]):
            times = run(name, args.batch, args.steps, args.rounds, args.warmup, bf16)
            print(f"\n{name}{' bf16 autocast' if bf16 else ''}, batch {args.batch}, {args.rounds} rounds x "
                  f"{args.steps} timed steps, {torch.get_num_threads()} threads")
            print(ratio_table(times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
