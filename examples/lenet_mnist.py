"""LeNet-5 on MNIST, recorded: the seed's training loop with graphviz-autograd watching.

``DataLoader(batch_size=64, shuffle=True)``, ``CrossEntropyLoss`` and
``SGD(lr=0.01, momentum=0.9)`` as in the seed; the per-epoch loss is printed
like the seed (``[epoch 1] loss: 0.123``) under a progress line of the running loss,
and the test accuracy at the end. :class:`graphviz_autograd.Recorder` writes
loss, gradient and activation statistics into the run directory, and the
graph is rendered there (``graph.svg``, ``graph.png``) as soon as it is known.

Run::

    python examples/lenet_mnist.py --epochs 1
    python examples/lenet_mnist.py --steps 50 --run-dir runs/quick --every 5
    graphviz-autograd dashboard runs      # browse it
"""
from __future__ import annotations

import os
import time

import torch

import graphviz_autograd as ga
from graphviz_autograd.diagnosis.findings import plural
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import LeNet5
from graphviz_autograd.examples.data import load_mnist

NAME = "lenet"


def run(epochs: int = 1, steps: int | None = None, run_dir: str = f"runs/{NAME}",
        data_dir: str | None = None, every: int = 10, *, batch_size: int = 64, lr: float = 0.01,
        momentum: float = 0.9, seed: int = 0, progress: bool = True, echo=print,
        data=None, model: torch.nn.Module | None = None, overwrite: bool = False,
        browse_hint: bool = True) -> dict:
    """Train LeNet-5 with the recorder on; returns what happened (for tests and the CLI).

    Args:
        epochs: passes over the training set.
        steps: stop after this many batches (None: all).
        run_dir: where the run store and the graph images go.
        data_dir: MNIST folder (see :func:`graphviz_autograd.data.load_mnist`).
        every: record statistics every ``every`` steps.
        data: an already loaded :class:`~graphviz_autograd.data.MnistData` (skips loading).
        model: the network (default: a fresh ``LeNet5`` seeded with ``seed``).
        overwrite: replace a run already in ``run_dir``; otherwise a run there is kept
            and this one goes to ``run_dir-2`` (``-3`` ...), which is said and returned.
        browse_hint: end with the command that opens the dashboard on the run.

    Returns:
        dict with ``run_dir``, ``source``, ``steps``, ``losses``, ``epoch_losses``,
        ``test_accuracy``, ``files`` (rendered images), ``graph`` and ``seconds``.
    """
    t0 = time.perf_counter()
    run_dir = common.fresh_dir(run_dir, overwrite, echo)
    torch.manual_seed(seed)
    data = data or load_mnist(data_dir)
    echo(f"data: {data.source}")
    model = model or LeNet5()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    files: list[str] = []

    def on_graph(graph):
        files.extend(common.render(graph, run_dir, "graph", title="LeNet-5: loss graph"))
        echo(f"graph: {graph.summary()} -> {', '.join(files)}")

    meta = {"example": NAME, "data": data.source, "batch_size": batch_size, "lr": lr,
            "momentum": momentum}
    with ga.Recorder(model, run_dir, optimizer=optimizer, every=every, overwrite=overwrite,
                     meta=meta) as rec:
        echo(f"recording to {rec.run_dir} (statistics every "
             f"{'step' if every == 1 else plural(every, 'step')})")
        result = common.fit(model, optimizer, common.loader(data.train, batch_size, seed), loss_fn=common.cross_entropy,
                       recorder=rec, epochs=epochs, steps=steps, progress=progress, echo=echo,
                       on_graph=on_graph)
        accuracy = common.evaluate(model, data.test)
        rec.log(result["steps"], test_accuracy=accuracy)
        graph = rec.graph
    seconds = time.perf_counter() - t0
    echo(f"test accuracy: {accuracy:.1%} on {len(data.test):,} images")
    done = f"done: {plural(result['steps'], 'step')} in {seconds:.1f} s; run in {run_dir}"
    if browse_hint:
        done += (f"; browse it with: graphviz-autograd dashboard "
                 f"{os.path.dirname(os.path.abspath(run_dir))}")
    echo(done)
    return {**result, "run_dir": run_dir, "source": data.source, "test_accuracy": accuracy,
            "files": files, "graph": graph, "seconds": seconds}


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    args = common.parser(__doc__, run_dir=f"runs/{NAME}", epochs=1, every=10, progress=True).parse_args(argv)
    return run(args.epochs, args.steps, args.run_dir, args.data_dir, args.every,
               progress=not args.quiet, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
