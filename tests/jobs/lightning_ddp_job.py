"""Lightning's DDP strategy with 2 CPU processes (Lightning re-launches this script for rank 1),
recorded by RecorderCallback; each rank writes what it read itself to truth-<rank>.json."""
import json
import os
import sys

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from graphviz_autograd.integrations.lightning import RecorderCallback

out = sys.argv[1]


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Truth(pl.Callback):
    def __init__(self):
        self.norms, self.last = {}, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.last:
            self.last = trainer.global_step
            self.norms[trainer.global_step] = float(pl_module.net[0].weight.grad.double().norm())

    def on_fit_end(self, trainer, pl_module):
        with open(os.path.join(out, f"truth-{trainer.global_rank}.json"), "w") as f:
            json.dump(self.norms, f)


if __name__ == "__main__":
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    truth = Truth()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False,
                         callbacks=[RecorderCallback(os.path.join(out, "run"), every=1), truth])
    trainer.fit(Regressor(), DataLoader(data, batch_size=8))
