"""One of 4 processes (started by the test with RANK/WORLD_SIZE/MASTER_* set, not torchrun,
whose agent would stop the others): a gathered run where rank 3 SIGKILLs itself in step 5
(``kill``), or stops there without exiting (``hang``: the test kills it at the end).

The survivors keep training (each its own replica, no DDP); the recorder's collective fails
at the next recorded step and they carry on. Each rank prints "done <rank>" at the end.
"""
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

import graphviz_autograd as ga
from graphviz_autograd.record.gather_options import GatherOptions

out, how = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
torch.manual_seed(0)
net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(net.parameters(), lr=0.05)
with ga.Recorder(net, os.path.join(out, f"machine-{rank}", "run"), optimizer=opt, every=2,
                 flush_interval=0, ranks=GatherOptions(timeout=5)) as rec:
    for step in range(12):
        torch.manual_seed(1000 * rank + step)
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(torch.randn(32, 6)), torch.randn(32, 3))
        if (step, rank) == (5, 3):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            print("hanging", flush=True)
            time.sleep(3600)
        loss.backward()
        opt.step()
        rec.log(step, loss=loss)
print(f"done {rank}", flush=True)
# After a peer died, PyTorch 2.14's gloo teardown at interpreter exit sometimes aborts
# ("terminate called without an active exception"; 1 of 2 full-suite runs) in its own C++
# destructors, after our work is done: leave without running them.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
