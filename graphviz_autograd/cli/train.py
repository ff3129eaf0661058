"""``graphviz-autograd train EXAMPLE``: run one of the recorded examples.

The examples (LeNet-5 on MNIST, the optimizers comparison, the LeNet variants,
the dynamic graph) ship inside the package as ``graphviz_autograd.examples``.
"""
from __future__ import annotations

import importlib

import click

# EXAMPLE name -> (module in examples/, options it accepts besides --run-dir)
EXAMPLES = {
    "lenet": ("lenet_mnist", ("epochs", "steps", "data_dir", "every")),
    "optimizers": ("optimizers", ("steps",)),
    "variants": ("variants", ("steps", "data_dir", "every")),
    "dynamic": ("dynamic", ("steps", "data_dir", "every")),
}
COMMON = ("run_dir", "overwrite")      # options every example takes


def import_example(module: str):
    """``graphviz_autograd.examples.<module>``."""
    return importlib.import_module(f"graphviz_autograd.examples.{module}")


def _run_example(example: str, **options):
    module, accepted = EXAMPLES[example]
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(k for k in given if k not in COMMON and k not in accepted)
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        usable = ", ".join("--" + k.replace("_", "-") for k in COMMON + accepted)
        raise click.UsageError(f"`train {example}` does not take {flags}; it accepts {usable}")
    return import_example(module).run(**given, echo=click.echo)


POSITIVE = click.IntRange(min=1)


@click.command()
@click.argument("example", type=click.Choice(sorted(EXAMPLES)))
@click.option("--epochs", type=POSITIVE, default=None, help="Epochs (lenet only; default 1).")
@click.option("--steps", type=POSITIVE, default=None, help="Stop after this many training steps.")
@click.option("--run-dir", default=None, help="Run directory (default runs/<example>).")
@click.option("--data-dir", default=None, type=click.Path(),
              help="Folder with MNIST IDX files (default: $GVA_MNIST_DIR, torchvision's cache "
                   "or download, else synthetic digits).")
@click.option("--every", type=POSITIVE, default=None, help="Record statistics every N steps.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in --run-dir. Without it an existing run is kept and this "
                   "one goes to a fresh directory next to it (runs/lenet-2, ...), which is said.")
def train(example, epochs, steps, run_dir, data_dir, every, overwrite):
    """Train EXAMPLE with the recorder on, into a run directory the dashboard reads.

    An existing run is never replaced silently: without --overwrite the new run
    goes to NAME-2 (NAME-3, ...) and the command says so.

    \b
    lenet       LeNet-5 on MNIST (the seed's loop)
    optimizers  SGD, SGD+momentum and Adam on one problem, one run each
    variants    BatchNorm/Dropout, softmax+NLL, L1, L2, weight decay
    dynamic     a data-dependent graph: several graph versions

    Example: graphviz-autograd train lenet --epochs 1 --run-dir runs/lenet
    """
    _run_example(example, epochs=epochs, steps=steps, run_dir=run_dir, data_dir=data_dir, every=every,
                 overwrite=overwrite)


