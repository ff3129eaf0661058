"""Callbacks that drive a :class:`~graphviz_autograd.Recorder` from training frameworks.

``lightning.RecorderCallback`` (PyTorch Lightning) and ``transformers.RecorderCallback``
(the Hugging Face ``Trainer``). Each module imports its framework; import the one you use.
"""
