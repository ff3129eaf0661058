"""Our exceptions: one root, leaves that also subclass the fitting builtin.

Every message says what is wrong, shows the bad value, and says how to fix it.
"""
from __future__ import annotations

import sys


class GraphvizAutogradError(Exception):
    """Root of every error this package raises on purpose."""


class NotDifferentiableError(GraphvizAutogradError, ValueError):
    """A tensor given to trace has no autograd graph (no grad_fn, no requires_grad)."""


class TraceInputError(GraphvizAutogradError, TypeError):
    """``trace`` got something that is not a tensor or a container of tensors."""


class RenderError(GraphvizAutogradError, RuntimeError):
    """Graphviz is missing or failed to lay out / write the graph."""


class FormatError(GraphvizAutogradError, ValueError):
    """An unknown output format, option value or malformed JSON graph."""


class StoreError(GraphvizAutogradError, RuntimeError):
    """A run store cannot be opened, read or written."""


class SchemaVersionError(StoreError):
    """A run store was written by a newer version of graphviz-autograd."""


class RunNotFoundError(StoreError, FileNotFoundError):
    """No run store in the given directory."""


class ConfigError(GraphvizAutogradError, ValueError):
    """A bad argument to the recorder or another public entry point."""


class HookError(GraphvizAutogradError, RuntimeError):
    """A recorder or instrumentation hook could not be installed."""


class ModelSpecError(GraphvizAutogradError, ValueError):
    """A ``module:callable`` model spec on the command line cannot be loaded."""


class DiagnosisError(GraphvizAutogradError, RuntimeError):
    """The forward or backward pass failed and was explained (see ``.report``)."""


def describe(value: object, limit: int = 80) -> str:
    """Short, safe repr of a user value for error messages; never raises.

    A ``__repr__`` that raises (or a tensor whose shape cannot be read) must not
    hide the error being reported, so it is named instead.

    Example:
        >>> class Odd:
        ...     def __repr__(self):
        ...         raise ValueError("no")
        >>> describe(Odd())
        '<Odd object: its repr() raised ValueError>'
    """
    try:
        torch = sys.modules.get("torch")   # never import torch just to describe a value
        if torch is not None and isinstance(value, torch.Tensor):
            return _describe_tensor(value)
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a hostile repr must not replace the real error
        return f"<{type(value).__name__} object: its repr() raised {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_tensor(value) -> str:
    try:
        shape = str(tuple(value.shape))
    except Exception:  # noqa: BLE001 - a strided nested tensor has no single shape
        shape = "nested" if getattr(value, "is_nested", False) else "unknown"
    grad_fn = value.grad_fn
    return (f"tensor(shape={shape}, dtype={value.dtype}, requires_grad={value.requires_grad}, "
            f"grad_fn={type(grad_fn).__name__ if grad_fn is not None else None})")


class DiagnoseInputError(GraphvizAutogradError, ValueError):
    """``diagnose`` (or a testing helper) was called with arguments it cannot use."""


class GradientFlowError(GraphvizAutogradError, AssertionError):
    """A gradient assertion of ``graphviz_autograd.testing`` failed.

    ``.diagnosis`` holds the :class:`~graphviz_autograd.diagnosis.Diagnosis` and
    ``.artifacts`` the files written for it (empty without ``--gva-artifacts``).
    """

    def __init__(self, message: str, diagnosis=None, artifacts: tuple[str, ...] = ()):
        super().__init__(message)
        self.diagnosis = diagnosis
        self.artifacts = artifacts


class GoldenGraphError(GraphvizAutogradError, AssertionError):
    """A traced graph differs from its golden file (or the golden file is missing)."""


class IncidentError(GraphvizAutogradError, RuntimeError):
    """Training broke (``Recorder(..., on_incident="raise")``); the message is the incident's
    summary and the run store holds it (``run.incidents()``)."""
