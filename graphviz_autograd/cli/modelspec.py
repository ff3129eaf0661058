"""Load a model from a command-line spec and parse ``--input-shape``.

Used by the ``render`` and ``doctor`` commands.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys

from graphviz_autograd.errors import FormatError, ModelSpecError


def load_model_spec(spec: str):
    """Build the model named by ``spec``: ``package.module:callable`` or ``path/file.py:Name``.

    The callable (a class or a factory function) is called with no arguments;
    an ``nn.Module`` instance is returned as is. A file's directory is put on
    ``sys.path`` while it is imported, so its sibling imports work.

    Raises:
        ModelSpecError: the spec is malformed, does not import, or does not give
            an ``nn.Module`` (the message names the spec and the fix).

    Example:
        >>> load_model_spec("torch.nn:Identity")
        Identity()
    """
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise ModelSpecError(f"model spec {spec!r} needs the form package.module:callable or "
                             "path/to/file.py:ClassName (e.g. torchvision.models:resnet18)")
    target, _, attr = spec.rpartition(":")
    if not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise ModelSpecError(f"model spec {spec!r}: {attr!r} after the colon is not a Python "
                             "name; write e.g. models.py:LeNet")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(spec, target)
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:       # like `python -m`, let modules in the current directory import
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelSpecError(
                f"model spec {spec!r}: cannot import {target!r} ({exc}). Install the package, "
                "run from the directory that contains it (or set PYTHONPATH), or give a file "
                "path instead: path/to/file.py:ClassName") from exc
        finally:
            if added and cwd in sys.path:
                sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = defined_names(module)
            listed = (f"it defines: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}"
                      if names else "it defines no class or function of its own")
            raise ModelSpecError(f"model spec {spec!r}: {target!r} has no attribute {attr!r}; "
                                 f"{listed}")
        obj = getattr(obj, part)
    return _instantiate(spec, obj)


def defined_names(module) -> list[str]:
    """Public classes, functions and model instances defined in ``module`` itself (not imported:
    no ``torch``, ``nn``, ``F`` or ``annotations``); ``nn.Module`` classes first.

    Example:
        >>> import graphviz_autograd.examples.models as m
        >>> defined_names(m)[:2]
        ['DynamicNet', 'LeNet5']
    """
    import types

    nn_module = getattr(sys.modules.get("torch.nn"), "Module", None)
    models, others = [], []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if nn_module is not None and isinstance(obj, nn_module):
            models.append(name)
        elif isinstance(obj, (type, types.FunctionType)) and \
                getattr(obj, "__module__", None) == module.__name__:
            is_model = nn_module is not None and isinstance(obj, type) and issubclass(obj, nn_module)
            (models if is_model else others).append(name)
    return models + others


def _import_file(spec: str, path: str):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ModelSpecError(f"model spec {spec!r}: file {path!r} does not exist; check the "
                             "path (relative paths start at the current directory)")
    name = "gva_model_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    try:
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error in the user's file
        sys.modules.pop(name, None)
        raise ModelSpecError(f"model spec {spec!r}: importing {path!r} failed with "
                             f"{type(exc).__name__}: {exc}; fix that file (run "
                             f"`python {path}` to see the full traceback)") from exc
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _instantiate(spec: str, obj):
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise ModelSpecError(f"model spec {spec!r} names a {type(obj).__name__}, not a class or "
                             "function returning an nn.Module")
    try:
        model = obj()
    except TypeError as exc:
        raise ModelSpecError(f"model spec {spec!r}: calling it with no arguments failed ({exc}). "
                             "Point the spec at a function that takes none, e.g. "
                             "`def make_model(): return Net(num_classes=10)`") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"model spec {spec!r} returned {type(model).__name__}, not an "
                             "nn.Module; point it at the model class or a factory returning one")
    return model


SHAPE_FORMAT = ("the whole input shape, batch first, sizes separated by commas (N,C,H,W for "
                "images, e.g. 1,3,224,224; N,FEATURES for vectors)")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``(1, 3, 224, 224)``) -> ``(1, 3, 224, 224)``.

    ``28x28`` is refused: it reads like an image size, without the batch and channel
    sizes the model's input needs.

    Raises:
        FormatError: empty text, ``x`` between sizes, a part that is not a positive integer;
            the message says which format is expected.

    Example:
        >>> parse_shape("2,3,32,32")
        (2, 3, 32, 32)
    """
    raw = str(text).strip().strip("()[]").strip()
    if re.search(r"\d\s*[x×*]\s*\d", raw):
        sizes = [p for p in re.split(r"\s*[x×*]\s*", raw) if p]
        if len(sizes) == 2:
            fix = (f"for {sizes[0]}x{sizes[1]} images write 1,1,{sizes[0]},{sizes[1]} (one grey "
                   f"image) or 1,3,{sizes[0]},{sizes[1]} (one RGB image)")
        else:
            fix = f"write {','.join(sizes)}"
        raise FormatError(f"input shape {text!r}: expected {SHAPE_FORMAT}; {fix}")
    parts = [p.strip() for p in re.split(r"[,\s]+", raw) if p.strip()]
    if not parts:
        raise FormatError(f"input shape {text!r} is empty; expected {SHAPE_FORMAT}")
    shape = []
    for p in parts:
        if not p.isdigit() or int(p) <= 0:
            raise FormatError(f"input shape {text!r}: {p!r} is not a positive integer; "
                              f"expected {SHAPE_FORMAT}")
        shape.append(int(p))
    return tuple(shape)


def make_inputs(shapes, *, seed: int = 0):
    """Random normal inputs of the given shapes: one tensor, or a tuple for several."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = tuple(torch.randn(*s, generator=gen) for s in shapes)
    return tensors[0] if len(tensors) == 1 else tensors
