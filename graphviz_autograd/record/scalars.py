"""The scalars ``Recorder.log`` takes (loss, metrics): checked and turned into floats."""
from __future__ import annotations

import torch

from graphviz_autograd.errors import ConfigError, describe


def scalar_value(name: str, value) -> float:
    """``value`` (a number, a NumPy scalar or a 1-element tensor) as a float, or a ConfigError."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigError(f"log(..., {name}=...) got a tensor of shape {tuple(value.shape)}; "
                              f"log a scalar, e.g. {name}={name}.mean()")
        if value.is_complex():
            raise ConfigError(f"log(..., {name}=...) got a complex tensor; log a real scalar, "
                              f"e.g. {name}={name}.abs()")
        try:
            return float(value.detach().item())
        except RuntimeError as exc:   # e.g. a meta tensor holds no value
            raise ConfigError(f"log(..., {name}=...) cannot read the value of "
                              f"{describe(value)}: {exc}; log a number") from exc
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:   # an int beyond float64, e.g. 10**400
            digits = int(value.bit_length() * 0.30103) + 1
            raise ConfigError(f"log(..., {name}=<an integer of about {digits} digits>) is too "
                              f"large for a float64 (|value| < 1.8e308); log a smaller value, e.g. "
                              f"its logarithm") from None
    try:
        import numpy as np
        if isinstance(value, np.generic) and value.size == 1:
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    raise ConfigError(f"log(..., {name}={describe(value)}): scalar metrics must be numbers or "
                      "1-element tensors")
