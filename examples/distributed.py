"""LeNet-5 on MNIST with DistributedDataParallel on CPU (gloo), every rank recorded.

Start it with torchrun; each process trains on its shard of the data
(``DistributedSampler``), DDP averages the gradients, and every rank makes a
:class:`graphviz_autograd.Recorder` (it reads rank and world size from
``torch.distributed``). On each recorded step the ranks' statistics are reduced
through torch.distributed and rank 0 alone writes ``rank-0.gva.sqlite``: rank 0's
own statistics, and for every statistic and logged scalar the min, mean and max
over the ranks with the ranks holding them (``run.rank_spread``); a rank whose
loss or gradient norm is far from the others' is flagged (``run.outliers``). Rank 0
prints, evaluates (logging the test accuracy alone) and renders the graph.

Run::

    python -m torch.distributed.run --nproc_per_node=2 examples/distributed.py --steps 10 --run-dir runs/ddp
    python -m torch.distributed.run --nproc_per_node=2 --standalone examples/distributed.py --epochs 1

Started without torchrun it runs as a single process (world size 1).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

import graphviz_autograd as ga
from graphviz_autograd.examples import _common as common
from graphviz_autograd.examples.models import LeNet5
from graphviz_autograd.examples.data import load_mnist

NAME = "ddp"


def _init() -> tuple[int, int, bool]:
    """Join the process group torchrun described, or make a one-process group."""
    started_here = not dist.is_initialized()
    if started_here:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group("gloo")
        else:
            print("not started by torchrun: running as one process (world size 1). For 2 ranks: "
                  "python -m torch.distributed.run --nproc_per_node=2 examples/distributed.py")
            store = os.path.join(tempfile.mkdtemp(prefix="gva-ddp-"), "store")
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size(), started_here


def run(epochs: int = 1, steps: int | None = None, run_dir: str = f"runs/{NAME}",
        data_dir: str | None = None, every: int = 10, *, seed: int = 0, progress: bool = True,
        overwrite: bool = False) -> dict:
    """Train on this rank; returns this rank's result (``rank``, ``world_size``, ``losses`` ...).

    A run already in ``run_dir`` is kept (rank 0 picks ``run_dir-2`` ... for every rank)
    unless ``overwrite``.
    """
    rank, world, started_here = _init()
    t0 = time.perf_counter()
    say = print if rank == 0 else (lambda *_a, **_k: None)
    if world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        chosen = [common.fresh_dir(run_dir, overwrite, say) if rank == 0 else None]
        dist.broadcast_object_list(chosen, src=0)        # every rank writes into the same run
        run_dir = chosen[0]
        data = load_mnist(data_dir, log=say)
        say(f"data: {data.source}")
        torch.manual_seed(seed)
        model = DDP(LeNet5())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        loader = torch.utils.data.DataLoader(data.train, batch_size=64, sampler=sampler)
        files: list[str] = []
        on_graph = (lambda g: files.extend(common.render(g, run_dir, "graph", title="LeNet-5 (DDP)"))) \
            if rank == 0 else None
        with ga.Recorder(model, run_dir, optimizer=optimizer, every=every, overwrite=overwrite,
                         meta={"example": NAME, "data": data.source}) as rec:
            say(f"{world} rank(s), gloo backend; gathering every rank into {rec.run_dir} on rank 0 "
                f"(statistics every {every} steps)")
            result = common.fit(model, optimizer, loader, loss_fn=common.cross_entropy, recorder=rec,
                           epochs=epochs, steps=steps, progress=progress and rank == 0, echo=say,
                           sampler=sampler, on_graph=on_graph)
            accuracy = common.evaluate(model.module, data.test) if rank == 0 else None
            if accuracy is not None:
                rec.log(result["steps"], test_accuracy=accuracy)
        dist.barrier()
        if rank == 0:
            say(f"test accuracy (rank 0): {accuracy:.1%} on {len(data.test):,} images")
            for f in files:
                say(f"wrote {f}")
            say(f"done: {result['steps']} steps per rank in {time.perf_counter() - t0:.1f} s; "
                f"run in {run_dir} (ranks 0-{world - 1} gathered)")
        return {**result, "rank": rank, "world_size": world, "test_accuracy": accuracy,
                "run_dir": run_dir, "files": files}
    finally:
        if started_here:
            dist.destroy_process_group()


def main(argv=None) -> dict:
    """Command line entry point; see the module docstring."""
    args = common.parser(__doc__, run_dir=f"runs/{NAME}", epochs=1, every=10, progress=True).parse_args(argv)
    return run(args.epochs, args.steps, args.run_dir, args.data_dir, args.every,
               progress=not args.quiet, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
