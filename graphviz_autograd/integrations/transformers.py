"""Hugging Face ``Trainer``: record a ``trainer.train()`` with one callback.

Example:
    >>> from graphviz_autograd.integrations.transformers import RecorderCallback
    >>> trainer = Trainer(model=model, args=args, train_dataset=data,
    ...                   callbacks=[RecorderCallback("runs/bert", every=10)])   # doctest: +SKIP

The ``Trainer`` hands callbacks the model and the optimizer but never the loss tensor, so
the callback keeps the ``loss`` of the model's output (a forward hook it owns, active while
the model is training) and logs it once per optimizer step, from ``on_optimizer_step``:
after ``optimizer.step()`` and before the gradients are zeroed, at step
``state.global_step + 1`` (the number the Trainer's own logs give that step). What is
recorded: that loss (the last micro-batch's under gradient accumulation, before the
Trainer divides it), the learning rate, and every statistic of the Recorder; parameter
gradients after the Trainer's clipping. Under ``torchrun`` each rank records its own store.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from graphviz_autograd.record.recorder import Recorder


class RecorderCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` owning a :class:`~graphviz_autograd.Recorder`.

    Args:
        run_dir: the run directory (one store per rank).
        **recorder_options: passed to :class:`~graphviz_autograd.Recorder` (``every``,
            ``record``, ``overwrite``, ...). The optimizer is taken from the Trainer.
    """

    def __init__(self, run_dir, **recorder_options):
        self.run_dir = run_dir
        self.options = recorder_options
        self.recorder: Recorder | None = None
        self._hook = None
        self._loss = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        options = dict(self.options)
        if optimizer is not None:
            options.setdefault("optimizer", optimizer)      # accelerate's wrapper is unwrapped
        self.recorder = Recorder(model, self.run_dir, **options)
        self._hook = model.register_forward_hook(self._keep_loss)

    def _keep_loss(self, module, _args, output) -> None:
        if not module.training:
            return
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.grad_fn is not None:
            self._loss = loss

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.recorder is not None:
            loss, self._loss = self._loss, None
            self.recorder.log(state.global_step + 1, loss=loss)

    def on_train_end(self, args, state, control, **kwargs):
        self._close()

    def _close(self) -> None:
        self._loss = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            recorder.close()
