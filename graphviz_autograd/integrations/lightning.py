"""PyTorch Lightning: record a ``Trainer.fit`` with one callback.

Example:
    >>> from graphviz_autograd.integrations.lightning import RecorderCallback
    >>> trainer = pl.Trainer(callbacks=[RecorderCallback("runs/pl", every=10)])   # doctest: +SKIP
    >>> trainer.fit(model)                                                        # doctest: +SKIP

What is recorded, once per optimizer step (``trainer.global_step``): the loss Lightning
backpropagates (the ``training_step`` loss, divided by ``accumulate_grad_batches``; with
accumulation, the last micro-batch's), the learning rate, and every statistic of the
Recorder. The capture spans everything between two optimizer steps, so a ``training_step``
that calls submodules, ``optimizer.step(closure)``, gradient accumulation and manual
optimization are all covered. Parameter gradients are read after clipping (at the end of
the batch); node gradients as backward computed them. Under the DDP strategy each rank
records its own store in the run directory. With several optimizers, update ratios are
those of the first.
"""
from __future__ import annotations

import pytorch_lightning as pl

from graphviz_autograd.record.recorder import Recorder


class RecorderCallback(pl.Callback):
    """A Lightning ``Callback`` owning a :class:`~graphviz_autograd.Recorder`.

    Args:
        run_dir: the run directory (one store per rank).
        **recorder_options: passed to :class:`~graphviz_autograd.Recorder` (``every``,
            ``record``, ``overwrite``, ...). The optimizer and a 16-bit mixed-precision
            ``GradScaler`` are taken from the trainer.
    """

    def __init__(self, run_dir, **recorder_options):
        super().__init__()
        self.run_dir = run_dir
        self.options = recorder_options
        self.recorder: Recorder | None = None
        self._loss = None
        self._logged = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        options = dict(self.options)
        if trainer.optimizers:
            options.setdefault("optimizer", trainer.optimizers[0])
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None:
            options.setdefault("scaler", scaler)
        self.recorder = Recorder(pl_module, self.run_dir, **options)
        self._logged = trainer.global_step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss = loss               # attached: the tensor backward runs on

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.recorder is None or trainer.global_step <= self._logged:
            return                      # no optimizer step in this batch (accumulation)
        self._logged = trainer.global_step
        loss, self._loss = self._loss, None
        self.recorder.log(trainer.global_step, loss=loss)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close(exception)

    def teardown(self, trainer, pl_module, stage) -> None:
        self._close()

    def _close(self, exception: BaseException | None = None) -> None:
        self._loss = None
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            # closing on an exception: like leaving a `with` block (a gathered run then does
            # not wait for the other ranks' last gather)
            recorder.__exit__(type(exception) if exception else None, exception, None)
