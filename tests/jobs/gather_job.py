"""Run under torchrun (4 CPU processes, gloo): a gathered run, then a ``ranks="each"`` run.

Every rank trains its own replica on its own data (no DDP: the ranks' statistics differ) and
gets its own run directory ``<out>/machine-<rank>/run`` (no shared filesystem). Rank 2 is fed
a corrupted batch at step 4 (a recorded step); rank 3 logs a NaN metric at step 5 (an
unrecorded one: an incident); rank 1 takes an extra branch at step 6. Rank 0 alone logs an evaluation metric after training, and at
the end makes a Recorder alone. Each rank writes what it measured itself to
``<out>/truth-<rank>.json``, outside the run dirs.
"""
import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn

import graphviz_autograd as ga
from graphviz_autograd.record.gather_options import GatherOptions

out = sys.argv[1]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.set_num_threads(1)
STEPS, EVERY, CORRUPT = 8, 2, (4, 2)


def model_and_opt():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return net, torch.optim.SGD(net.parameters(), lr=0.05)


def batch(step):
    torch.manual_seed(1000 * rank + step)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    if (step, rank) == CORRUPT:
        x = x * 20.0
    return x, y


truth = {"loss": {}, "grad_norm": {}, "param_norm": {}, "update_ratio": {}, "acc": {}}
net, opt = model_and_opt()
run_dir = os.path.join(out, f"machine-{rank}", "run")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with ga.Recorder(net, run_dir, optimizer=opt, every=EVERY, detail_ranks=[0, 1],
                     ranks=GatherOptions(timeout=60)) as rec:
        for step in range(STEPS):
            x, y = batch(step)
            opt.zero_grad()
            out_ = net(x)
            if (step, rank) == (6, 1):          # a data-dependent branch: nodes only rank 1 has
                out_ = out_ + 0.1 * torch.tanh(out_)
            loss = nn.functional.mse_loss(out_, y)
            loss.backward()
            grads = {n: float(p.grad.double().norm()) for n, p in net.named_parameters()}
            before = {n: p.detach().double().clone() for n, p in net.named_parameters()}
            opt.step()
            acc = float("nan") if (step, rank) == (5, 3) else 0.5 + 0.01 * rank
            rec.log(step, loss=loss, acc=acc)
            truth["loss"][step], truth["acc"][step] = float(loss), acc
            for n, p in net.named_parameters():
                after = p.detach().double()
                truth["grad_norm"].setdefault(n, {})[step] = grads[n]
                truth["param_norm"].setdefault(n, {})[step] = float(after.norm())
                truth["update_ratio"].setdefault(n, {})[step] = float((after - before[n]).norm() / after.norm())
        if rank == 0:                       # evaluation on rank 0 only: no collective, no hang
            with torch.no_grad():
                rec.log(STEPS, test_loss=float(nn.functional.mse_loss(net(batch(99)[0]), batch(99)[1])))
    truth["gather_warnings"] = [str(w.message) for w in caught if "graphviz" in str(w.message)]

    # today's behaviour: one store per rank in one (shared, on this machine) directory
    net, opt = model_and_opt()
    with ga.Recorder(net, os.path.join(out, "each"), optimizer=opt, every=1, ranks="each") as rec:
        for step in range(3):
            x, y = batch(step)
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
            truth.setdefault("each_loss", []).append(float(loss))

if rank == 0:       # a Recorder on rank 0 only: it waits join_timeout, then records alone
    net, opt = model_and_opt()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ga.Recorder(net, os.path.join(out, "alone"), optimizer=opt,
                         ranks=GatherOptions(join_timeout=2)) as rec:
            rec.log(0, loss=1.0)
    truth["alone_warnings"] = [str(w.message) for w in caught if "graphviz" in str(w.message)]

with open(os.path.join(out, f"truth-{rank}.json"), "w") as f:
    json.dump(truth, f)
dist.destroy_process_group()
