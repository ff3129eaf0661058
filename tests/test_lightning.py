"""The Lightning callback with real ``Trainer.fit`` runs: automatic and manual optimization,
gradient accumulation, clipping, a ``training_step`` calling submodules, and the DDP strategy
in two CPU processes. Recorded values are checked against what a second callback reads."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pl = pytest.importorskip("pytorch_lightning")
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import graphviz_autograd as ga  # noqa: E402
from graphviz_autograd.integrations.lightning import RecorderCallback  # noqa: E402

pytestmark = pytest.mark.slow
JOB = Path(__file__).parent / "jobs" / "lightning_ddp_job.py"


class Regressor(pl.LightningModule):
    def __init__(self, manual: bool = False, via_submodule: bool = False):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.automatic_optimization = not manual
        self.via_submodule = via_submodule

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x) if self.via_submodule else self(x)
        loss = torch.nn.functional.mse_loss(out, y)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Truth(pl.Callback):
    """What the test reads itself at the end of each batch that stepped the optimizer."""

    def __init__(self):
        self.grad_norms, self.losses, self._last = {}, {}, 0

    def on_before_backward(self, trainer, pl_module, loss):
        self._loss = float(loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self._last:
            self._last = trainer.global_step
            self.losses[trainer.global_step] = self._loss
            self.grad_norms[trainer.global_step] = {
                n: float(p.grad.double().norm()) for n, p in pl_module.named_parameters()}


def _fit(tmp_path, **options):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 8), torch.randn(48, 1))
    trainer_options = {k: options.pop(k) for k in ("accumulate_grad_batches", "gradient_clip_val")
                       if k in options}
    model = Regressor(**options)
    truth = Truth()
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecorderCallback(tmp_path / "run", every=1), truth], **trainer_options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, DataLoader(data, batch_size=8))
    ours = [str(w.message) for w in caught if "graphviz-autograd" in str(w.message)]
    return ga.open_run(tmp_path / "run"), truth, ours


@pytest.mark.parametrize("case", [
    {}, {"accumulate_grad_batches": 2}, {"gradient_clip_val": 0.01}, {"manual": True},
    {"via_submodule": True},
], ids=["automatic", "accumulation", "clipping", "manual", "submodule"])
def test_fit_is_recorded_once_per_optimizer_step(tmp_path, case):
    run, truth, warned = _fit(tmp_path, **case)
    assert warned == []
    assert run.steps() == [1, 2, 3, 4]
    assert run.loss().values == pytest.approx([truth.losses[s] for s in (1, 2, 3, 4)], rel=1e-6)
    for name in ("net.0.weight", "net.2.bias"):
        assert run.param_series(name).values == pytest.approx(
            [truth.grad_norms[s][name] for s in (1, 2, 3, 4)], rel=1e-6)
        assert all(v > 0 for v in run.param_series(name, "update_ratio").values)
    graph = run.graph()
    assert {"param:net.0.weight", "param:net.2.weight"} <= set(n.id for n in graph.nodes)
    assert any(n.op == "MseLossBackward0" for n in graph.nodes)      # the attached loss
    assert len(run.keys("node")) >= 5 and "net.1" in run.keys("module")
    if case.get("gradient_clip_val"):
        total = [sum(v ** 2 for v in truth.grad_norms[s].values()) ** 0.5 for s in (1, 2, 3, 4)]
        assert max(total) == pytest.approx(0.01, rel=1e-3)             # read after clipping


def test_ddp_strategy_in_two_processes_gathers_every_rank(tmp_path):
    proc = subprocess.run([sys.executable, str(JOB), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = ga.open_run(tmp_path / "run")
    assert run.ranks == [0] and run.world_size == 2 and run.meta["ranks"] == "gather"
    assert run.steps() == [1, 2, 3]
    assert run.keys("param") == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    spread = run.rank_spread("net.0.weight", "grad_norm")
    assert spread.steps == [1, 2, 3]
    for rank in (0, 1):     # DDP averaged the gradients: both ranks read the same norms
        truth = json.loads((tmp_path / f"truth-{rank}.json").read_text())
        want = [truth[str(s)] for s in (1, 2, 3)]
        assert spread.min == pytest.approx(want, rel=1e-6) and spread.max == pytest.approx(want, rel=1e-6)
        if rank == 0:
            assert run.param_series("net.0.weight").values == pytest.approx(want, rel=1e-6)
