"""LeNet variants: BatchNorm + Dropout, a softmax output, and L1/L2 regularization done right.

* ``bn_dropout``: :class:`~examples.models.LeNet5BN`. Dropout is active in
  ``train()`` only and BatchNorm uses batch statistics in ``train()``, running
  statistics in ``eval()``: call ``model.eval()`` before testing.
* ``softmax_nll``: :class:`~examples.models.LeNet5Softmax` outputs probabilities
  and is trained with ``NLLLoss`` on their log. It works, but
  ``CrossEntropyLoss`` on the logits is preferred: ``log(softmax(z))`` underflows
  to ``log(0) = -inf`` once a probability is below ~1e-45 (float32), giving an
  infinite loss and NaN gradients, while ``cross_entropy`` (= ``log_softmax`` +
  ``nll_loss``) uses the log-sum-exp trick and stays finite; it is also one
  fused op instead of three. This example shows both on logits ``[0, 120]``.
* ``l1`` / ``l2``: the penalty is part of the loss,
  ``loss = ce + l1_lambda * sum(p.abs().sum() for p in params)`` or
  ``+ l2_lambda * sum(p.pow(2).sum() for p in params)``, so it appears in the
  graph: ``AbsBackward0`` / ``PowBackward0`` -> ``SumBackward0`` feeding the
  ``AddBackward0`` of the loss (see ``runs/variants/l2/graph.svg``).
* ``weight_decay``: ``SGD(..., weight_decay=5e-4)`` adds ``5e-4 * w`` to every
  gradient, which is L2 with ``l2_lambda = 2.5e-4``; it happens in the optimizer,
  so the graph has no penalty branch. (With Adam prefer ``AdamW``: Adam's
  ``weight_decay`` is scaled by its adaptive step.)

The seed says ``nn.L1Loss`` and ``nn.MSELoss`` implement L1 and L2
regularization. They do not: they are losses between a prediction and a target
(mean ``|y - t|`` and mean ``(y - t)^2``), used for regression. Regularization
penalizes the weights, as above. The script prints this correction too.

How many steps: the plain LeNet-5 variants (SGD lr=0.01, momentum 0.9, PyTorch's
default initialisation) sit on a plateau near ``ln 10 = 2.30`` for their first
~150 steps, where every digit gets about the same score; after 100 steps they
reach about 35% test accuracy, after 300 about 95%. BatchNorm leaves the plateau
within a few dozen steps. So the default is 300 steps, and the script says so
when a variant is still on the plateau.

Run::

    python examples/variants.py                 # 300 steps per variant
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import graphviz_autograd as ga
from graphviz_autograd.diagnosis.findings import plural
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import LeNet5, LeNet5BN, LeNet5Softmax
from graphviz_autograd.examples.data import load_mnist
from graphviz_autograd.errors import ConfigError

NAME = "variants"
STEPS = 300
PLATEAU = 2.0             # a mean loss above this is still the start plateau (ln 10 = 2.30)
SEED_CORRECTION = (
    "The seed says nn.L1Loss and nn.MSELoss implement L1 and L2 regularization. They do not: "
    "they compare a prediction with a target (mean |y - t| and mean (y - t)^2, regression "
    "losses). Regularization penalizes the weights: loss = cross_entropy + lambda * sum(|w|) "
    "(l1), + lambda * sum(w^2) (l2), or SGD(..., weight_decay=...) (weight_decay), as below.")
L1_LAMBDA = 1e-5
L2_LAMBDA = 1e-4
WEIGHT_DECAY = 5e-4


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    """``sum |w|`` over all parameters: part of the loss, so it is in the graph."""
    return sum(p.abs().sum() for p in model.parameters())


def l2_penalty(model: torch.nn.Module) -> torch.Tensor:
    """``sum w^2`` over all parameters."""
    return sum(p.pow(2).sum() for p in model.parameters())


def _penalized(penalty, lam):
    def loss_fn(model, out, y):
        ce = F.cross_entropy(out, y)
        pen = penalty(model)
        return ce + lam * pen, {"cross_entropy": ce, "penalty": pen}
    return loss_fn


def _nll_of_softmax(_model, probs, y):
    return F.nll_loss(torch.log(probs), y)


# name: (model class, loss_fn, weight_decay)
VARIANTS = {
    "bn_dropout": (LeNet5BN, common.cross_entropy, 0.0),
    "softmax_nll": (LeNet5Softmax, _nll_of_softmax, 0.0),
    "l1": (LeNet5, _penalized(l1_penalty, L1_LAMBDA), 0.0),
    "l2": (LeNet5, _penalized(l2_penalty, L2_LAMBDA), 0.0),
    "weight_decay": (LeNet5, common.cross_entropy, WEIGHT_DECAY),
}


def softmax_vs_logits(echo=print) -> dict:
    """``NLLLoss(log(softmax(z)))`` against ``CrossEntropyLoss(z)`` on extreme logits."""
    z1 = torch.tensor([[0.0, 120.0]], requires_grad=True)
    z2 = z1.detach().clone().requires_grad_()
    y = torch.tensor([0])
    naive = F.nll_loss(torch.log(F.softmax(z1, dim=1)), y)
    naive.backward()
    stable = F.cross_entropy(z2, y)
    stable.backward()
    echo(f"logits [0, 120], target 0: NLLLoss(log(softmax)) = {naive.item()} (grad {z1.grad.tolist()[0]}); "
         f"CrossEntropyLoss = {stable.item():.1f} (grad {[round(g, 3) for g in z2.grad.tolist()[0]]})")
    return {"naive": naive.item(), "stable": stable.item()}


def dropout_and_bn_modes(echo=print) -> dict:
    """Two forward passes differ in ``train()`` (Dropout) and agree in ``eval()``."""
    torch.manual_seed(0)
    net, x = LeNet5BN(), torch.randn(8, 1, 28, 28)
    differ_train = not torch.equal(net(x), net(x))
    net.eval()
    with torch.no_grad():
        same_eval = torch.equal(net(x), net(x))
    echo(f"LeNet5BN: two forwards in train() differ: {differ_train}; in eval() equal: {same_eval}")
    return {"differ_train": differ_train, "same_eval": same_eval}


def run(steps: int = STEPS, run_dir: str = f"runs/{NAME}", data_dir: str | None = None,
        every: int = 10, *, only=None, seed: int = 0, progress: bool = True, echo=print,
        data=None, overwrite: bool = False) -> dict:
    """Train each variant for ``steps`` steps, recorded into ``run_dir/<variant>``.

    Args:
        only: names of the variants to run (default: all of :data:`VARIANTS`).
        overwrite: replace runs already in ``run_dir`` (else write to ``run_dir-2`` ...).

    Returns:
        dict ``{"variants": {name: {"graph", "loss", "test_accuracy", "files", "run_dir"}},
        "softmax": ..., "modes": ...}``.
    """
    names = list(only or VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    run_dir = common.fresh_dir(run_dir, overwrite, echo, "runs")
    echo(SEED_CORRECTION)
    modes = dropout_and_bn_modes(echo)
    softmax = softmax_vs_logits(echo)
    data = data or load_mnist(data_dir)
    echo(f"data: {data.source}")
    results = {}
    for name in names:
        cls, loss_fn, wd = VARIANTS[name]
        torch.manual_seed(seed)
        model = cls()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=wd)
        path = os.path.join(run_dir, name)
        files: list[str] = []
        meta = {"example": NAME, "variant": name,
                "optimizer_settings": common.optimizer_settings(optimizer)}
        with ga.Recorder(model, path, optimizer=optimizer, every=every, overwrite=overwrite,
                         meta=meta) as rec:
            out = common.fit(model, optimizer, common.loader(data.train, 64, seed), loss_fn=loss_fn, recorder=rec,
                        steps=steps, epochs=10**6, progress=progress, echo=lambda _line: None,
                        desc=f"{name} ",
                        on_graph=lambda g, p=path, n=name: files.extend(common.render(g, p, "graph", title=n)))
            graph = rec.graph
        acc = common.evaluate(model, data.test)
        results[name] = {"graph": graph, "loss": common.mean(out["losses"], first=False),
                         "first_loss": common.mean(out["losses"], first=True),
                         "test_accuracy": acc, "files": files, "run_dir": path}
    echo(f"\n{'variant':<14} {'loss (first 10 -> last 10 steps)':>34} {'test acc':>9} {'graph nodes':>12}  penalty ops")
    for name, r in results.items():
        ops = sorted({n.op for n in r["graph"].nodes if n.op.startswith(("AbsBackward", "PowBackward"))}) \
            if r["graph"] else []
        nodes = len(r["graph"]) if r["graph"] else 0
        echo(f"{name:<14} {r['first_loss']:>22.3f} -> {r['loss']:.3f}      {r['test_accuracy']:>8.1%} {nodes:>12}  "
             f"{', '.join(ops) or '-'}")
    stuck = [name for name, r in results.items() if r["loss"] > PLATEAU]
    if stuck:
        echo(f"\n{', '.join(stuck)}: still on the start plateau after {steps} steps (loss near "
             "ln 10 = 2.30, every digit scored alike, test accuracy far below 90%). Plain LeNet-5 "
             "with SGD lr=0.01 needs ~150 steps to leave it (BatchNorm a few dozen); that is "
             f"training time, not a bug. Run {max(STEPS, 2 * steps)} steps or more "
             "(--steps) to compare the variants.")
    echo(f"\n{plural(steps, 'step')} each; runs and graphs in {run_dir}/<variant>/ (graph.svg, graph.png)")
    return {"variants": results, "softmax": softmax, "modes": modes, "plateau": stuck,
            "run_dir": run_dir}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    p = common.parser(__doc__, run_dir=f"runs/{NAME}", every=10, progress=True)
    p.add_argument("--steps", type=common.positive_int, default=STEPS,
                   help=f"steps per variant (default: {STEPS})")
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these variants")
    args = p.parse_args(argv)
    return run(args.steps, args.run_dir, args.data_dir, args.every, only=args.only,
               progress=not args.quiet, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
