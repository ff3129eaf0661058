"""Load a model from a command-line spec and parse ``--input-shape``.

Example:
    >>> parse_shape("1,3,224,224")
    (1, 3, 224, 224)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from .errors import ModelSpecError


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) -> ``(1, 3, 224, 224)``."""
    parts = [p.strip() for p in str(text).replace("x", ",").replace("×", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ModelSpecError(f"bad --input-shape {text!r}: give positive integers separated by "
                             "commas, batch first, e.g. --input-shape 1,3,224,224")
    return shape


def load_model_spec(spec: str):
    """Build an ``nn.Module`` from ``package.module:callable`` or ``path/file.py:Name``.

    The callable is called with no arguments (a class or a factory such as
    ``torchvision.models:resnet18``).
    """
    import torch

    if ":" not in spec:
        raise ModelSpecError(f"bad model spec {spec!r}: expected 'module:callable' "
                             "(e.g. torchvision.models:resnet18) or 'path/to/file.py:ClassName'")
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise ModelSpecError(f"model spec {spec!r}: file {target!r} does not exist; "
                                 "give a path relative to the current directory")
        mod_name = "_gva_spec_" + os.path.splitext(os.path.basename(target))[0]
        loader_spec = importlib.util.spec_from_file_location(mod_name, target)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelSpecError(f"model spec {spec!r}: running {target!r} failed with "
                                 f"{type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelSpecError(f"model spec {spec!r}: cannot import {target!r} ({exc}); "
                                 "check the module name and that it is installed") from exc
    factory = getattr(module, name, None)
    if factory is None:
        public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
        raise ModelSpecError(f"model spec {spec!r}: {target!r} has no attribute {name!r}; "
                             f"some names it has: {', '.join(public)}")
    if isinstance(factory, torch.nn.Module):
        return factory
    try:
        model = factory()
    except Exception as exc:
        raise ModelSpecError(f"model spec {spec!r}: calling {name}() failed with "
                             f"{type(exc).__name__}: {exc}; the callable must build the "
                             "model with no arguments") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"model spec {spec!r}: {name}() returned {type(model).__name__}, "
                             "not a torch.nn.Module")
    return model
