"""MNIST for the examples: a local folder, torchvision's download, or a synthetic stand-in.

Where the images come from, in order:

1. ``data_dir`` (or the ``GVA_MNIST_DIR`` environment variable): a folder holding
   the MNIST IDX files (``*-idx?-ubyte`` or ``.gz``, directly, in ``raw/`` or in
   ``MNIST/raw/``). With all four files the official 60,000/10,000 split is used;
   with only the 10,000-image test split, it is split 8,000 train / 2,000 test
   with a fixed seed. A folder without them is an error (:class:`DataError`).
2. torchvision's cache in ``~/.cache/graphviz-autograd/mnist``, downloading it
   there when the network answers (fails within seconds offline;
   ``GVA_MNIST_DOWNLOAD=0`` skips it).
3. Otherwise one line says so and a synthetic digit set is drawn locally:
   strokes of the digits 0-9 on 28x28 with random shifts, scale, rotation,
   thickness and noise; LeNet-5 reaches ~99 % test accuracy within 300 steps.

Images are normalised like the seed: ``x/255`` then ``Normalize((0.5,), (0.5,))``,
i.e. values in [-1, 1], shape ``(N, 1, 28, 28)``; labels are int64.

Example:
    >>> from graphviz_autograd.data import synthetic_digits
    >>> x, y = synthetic_digits(20, seed=0)
    >>> tuple(x.shape), x.dtype, int(y.max()) <= 9
    ((20, 28, 28), torch.uint8, True)
"""
from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import TensorDataset

from graphviz_autograd.errors import GraphvizAutogradError

ENV_VAR = "GVA_MNIST_DIR"
DOWNLOAD_ENV_VAR = "GVA_MNIST_DOWNLOAD"   # "0": never download (tests, offline CI)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphviz-autograd" / "mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SPLIT_TRAIN = 8000
SPLIT_SEED = 0
_IDX_TYPES = {0x08: (torch.uint8, 1)}  # MNIST uses unsigned bytes only


class DataError(GraphvizAutogradError, FileNotFoundError):
    """MNIST files are missing from the folder given, or are not valid IDX files."""


class MnistData(NamedTuple):
    """The train and test sets, and where they came from (one line, for printing)."""

    train: TensorDataset
    test: TensorDataset
    source: str


# -- IDX files ------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read one IDX file (``.gz`` or plain) into a uint8 tensor of the shape in its header.

    The header is two zero bytes, a type byte (0x08: unsigned byte), the number
    of dimensions, then each size as a big-endian int32; the raw data follows.

    Raises:
        DataError: the file is not an IDX file of unsigned bytes, or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read MNIST file {path}: {exc}; delete it (and re-download) "
                        "or point --data-dir at a folder with intact files") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file of unsigned bytes: magic bytes {data[:4].hex() or '(empty)'}"
                        ", expected 0000 08 <ndim>; point --data-dir at the MNIST files")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: IDX header says {ndim} dimensions but the file has {len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(dims)
    if len(data) - header != count:
        raise DataError(f"{path}: IDX header says shape {dims} ({count:,} bytes) but {len(data) - header:,} "
                        "bytes follow; the file is truncated or damaged, download it again")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def find_idx_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The MNIST IDX files found in ``folder``, ``folder/raw`` or ``folder/MNIST/raw``.

    Returns a dict with some of the keys of :data:`FILES`; it is empty when the
    folder holds none of them.
    """
    folder = Path(folder).expanduser()
    for cand in (folder, folder / "raw", folder / "MNIST" / "raw", folder / "MNIST"):
        found = {}
        for key, name in FILES.items():
            for fname in (name, name + ".gz"):
                if (cand / fname).is_file():
                    found[key] = cand / fname
                    break
        if found:
            return found
    return {}


def load_idx_folder(folder: str | os.PathLike) -> MnistData:
    """MNIST from a folder: the official split, or the test split split 8,000/2,000.

    Raises:
        DataError: no usable pair of image and label files in ``folder``.
    """
    files = find_idx_files(folder)
    has_train = "train_images" in files and "train_labels" in files
    has_test = "test_images" in files and "test_labels" in files
    if not has_test:
        present = ", ".join(sorted(p.name for p in files.values())) or "none"
        raise DataError(f"no MNIST in {folder}: need {FILES['test_images']}(.gz) and "
                        f"{FILES['test_labels']}(.gz) (found: {present}) in the folder, its raw/ "
                        "or MNIST/raw/; fix --data-dir / $GVA_MNIST_DIR, or leave both unset "
                        "to download with torchvision")
    test_x, test_y = _pair(files["test_images"], files["test_labels"])
    where = files["test_images"].parent
    if has_train:
        train_x, train_y = _pair(files["train_images"], files["train_labels"])
        return MnistData(_dataset(train_x, train_y), _dataset(test_x, test_y),
                         f"MNIST from {where}: {len(train_y):,} train / {len(test_y):,} test images")
    if len(test_y) <= SPLIT_TRAIN:
        raise DataError(f"{files['test_images']} holds {len(test_y):,} images; splitting off "
                        f"{SPLIT_TRAIN:,} for training needs more. Use the full MNIST test split")
    perm = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, te = perm[:SPLIT_TRAIN], perm[SPLIT_TRAIN:]
    return MnistData(_dataset(test_x[tr], test_y[tr]), _dataset(test_x[te], test_y[te]),
                     f"MNIST test split from {where} ({len(test_y):,} images, no training files): "
                     f"{len(tr):,} train / {len(te):,} test, split with seed {SPLIT_SEED}")


def _pair(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = read_idx(images), read_idx(labels)
    if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
        raise DataError(f"{images.name} has shape {tuple(x.shape)} and {labels.name} {tuple(y.shape)}: "
                        "expected (N, 28, 28) images and N labels; the files do not belong together")
    return x, y


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 1, 28, 28)`` in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    return ((images.float() / 255.0 - 0.5) / 0.5).unsqueeze(1)


def _dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
    return TensorDataset(normalize(images), labels.long())


# -- torchvision ----------------------------------------------------------------------
def _resolves(host: str, timeout: float) -> bool:
    """Whether ``host`` resolves within ``timeout`` s (getaddrinfo ignores socket timeouts)."""
    ok: list[bool] = []

    def probe():
        try:
            socket.getaddrinfo(host, 443)
            ok.append(True)
        except OSError:
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def download_torchvision(root: str | os.PathLike = CACHE_DIR, timeout: float = 10.0) -> MnistData:
    """MNIST through ``torchvision.datasets.MNIST(root, download=True)``, quietly.

    Raises:
        OSError: torchvision is missing, or the download failed or timed out.
    """
    try:
        from torchvision.datasets import MNIST  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise OSError("torchvision is not installed (pip install 'graphviz-autograd[vision]')") from exc
    if not _resolves("ossci-datasets.s3.amazonaws.com", min(timeout, 3.0)):
        raise OSError("no network: the MNIST mirror does not resolve")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError / URLError / ...
        first = str(exc).strip().splitlines()
        raise OSError(f"download failed: {first[0] if first else type(exc).__name__}") from exc
    finally:
        socket.setdefaulttimeout(old)
    data = load_idx_folder(root)
    return data._replace(source=data.source + " (torchvision download cache)")


# -- synthetic digits -----------------------------------------------------------------
def _ellipse(cx, cy, rx, ry, start=0.0, end=360.0, n=14):
    pts = []
    for i in range(n + 1):
        a = math.radians(start + (end - start) * i / n)
        pts.append((cx + rx * math.cos(a), cy + ry * math.sin(a)))
    return pts


# Each digit: polylines in a unit box, y pointing down.
_STROKES = {
    0: [_ellipse(0.5, 0.5, 0.26, 0.38)],
    1: [[(0.36, 0.25), (0.54, 0.1), (0.54, 0.9)]],
    2: [_ellipse(0.5, 0.32, 0.24, 0.2, 190, 380, 8) + [(0.25, 0.9), (0.78, 0.9)]],
    3: [_ellipse(0.48, 0.3, 0.22, 0.19, 200, 450, 9), _ellipse(0.48, 0.69, 0.25, 0.21, 270, 520, 10)],
    4: [[(0.62, 0.9), (0.62, 0.1), (0.2, 0.64), (0.82, 0.64)]],
    5: [[(0.74, 0.1), (0.32, 0.1), (0.29, 0.45)] + _ellipse(0.5, 0.65, 0.25, 0.23, 235, 500, 10)],
    6: [[(0.68, 0.1), (0.4, 0.35), (0.28, 0.65)], _ellipse(0.5, 0.68, 0.23, 0.2)],
    7: [[(0.22, 0.12), (0.78, 0.12), (0.42, 0.9)]],
    8: [_ellipse(0.5, 0.29, 0.2, 0.18), _ellipse(0.5, 0.7, 0.25, 0.21)],
    9: [_ellipse(0.48, 0.32, 0.22, 0.2), [(0.7, 0.32), (0.62, 0.9)]],
}


def _segments() -> torch.Tensor:
    """``(10, S, 2, 2)`` segment endpoints per digit, padded by repeating the last one."""
    per_digit = []
    for d in range(10):
        segs = [(a, b) for line in _STROKES[d] for a, b in zip(line, line[1:])]
        per_digit.append(segs)
    s = max(len(x) for x in per_digit)
    return torch.tensor([x + [x[-1]] * (s - len(x)) for x in per_digit], dtype=torch.float32)


def _render(segs: torch.Tensor, width: float, size: int) -> torch.Tensor:
    """Anti-aliased strokes ``(D, S, 2, 2)`` (pixel coordinates) -> ``(D, size, size)`` in [0, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    q = torch.stack([xx.flatten(), yy.flatten()], -1)[None, :, None, :]   # (1, P, 1, 2)
    a, b = segs[:, None, :, 0], segs[:, None, :, 1]                       # (D, 1, S, 2)
    ab = b - a
    t = (((q - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    d = (q - (a + t[..., None] * ab)).norm(dim=-1).amin(-1)               # (D, P)
    return (1.0 - (d - width).clamp_min(0)).clamp(0, 1).reshape(-1, size, size)


def synthetic_digits(n: int, seed: int = 0, size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` digit-like uint8 images ``(n, size, size)`` and their labels, deterministic in ``seed``.

    The strokes of each digit are drawn once per stroke width (four widths),
    then every image warps one of them with a random rotation (+-12 deg),
    scale, aspect and shift (+-3 px), and adds pixel noise.
    """
    import torch.nn.functional as F  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    big = 2 * size                                       # draw at 2x, sample down: smoother
    segs = (_segments() - 0.5) * (0.72 * big) + big / 2
    widths = (0.9, 1.2, 1.5, 1.8)
    templates = torch.stack([_render(segs, 2 * w, big) for w in widths])   # (W, 10, big, big)
    labels = torch.randint(0, 10, (n,), generator=g)
    which = torch.randint(0, len(widths), (n,), generator=g)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=g)
    ang = torch.deg2rad(u(-12, 12))
    sx, sy = u(0.85, 1.25), u(0.9, 1.12)                 # >1 shrinks (theta maps output -> input)
    tx, ty = u(-3, 3) * 2 / size, u(-3, 3) * 2 / size
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos * sx, -sin * sy, tx], -1),
                         torch.stack([sin * sx, cos * sy, ty], -1)], -2)   # (n, 2, 3)
    src = templates[which, labels].unsqueeze(1)          # (n, 1, big, big)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    img = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img = img.squeeze(1) * u(0.8, 1.0)[:, None, None] + 0.08 * torch.rand(n, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def synthetic_mnist(n_train: int = SPLIT_TRAIN, n_test: int = 2000, seed: int = 0) -> MnistData:
    """A synthetic stand-in for MNIST with the same shapes, dtype and normalisation."""
    x, y = synthetic_digits(n_train + n_test, seed=seed)
    return MnistData(_dataset(x[:n_train], y[:n_train]), _dataset(x[n_train:], y[n_train:]),
                     f"synthetic digits (seed {seed}): {n_train:,} train / {n_test:,} test, "
                     "28x28 strokes with random shift, rotation and noise")


# -- the entry point --------------------------------------------------------------------
def load_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True,
               cache_dir: str | os.PathLike = CACHE_DIR, timeout: float = 10.0,
               log=None) -> MnistData:
    """MNIST from ``data_dir``, ``$GVA_MNIST_DIR``, torchvision's cache/download, or synthetic.

    Args:
        data_dir: a folder with MNIST IDX files; when given it must hold them.
        download: try torchvision's download when nothing local is found
            (also off when ``$GVA_MNIST_DOWNLOAD`` is ``0``).
        cache_dir: torchvision's root for the download.
        timeout: seconds per network operation of the download.
        log: ``log(line)`` for the one line printed when falling back
            (default: print to stderr).

    Returns:
        :class:`MnistData` ``(train, test, source)``.

    Raises:
        DataError: ``data_dir`` (or ``$GVA_MNIST_DIR``) has no usable MNIST files.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    if data_dir is None and os.environ.get(ENV_VAR):
        data_dir = os.environ[ENV_VAR]
    if data_dir is not None:
        if not Path(data_dir).expanduser().is_dir():
            raise DataError(f"MNIST folder {str(data_dir)!r} does not exist; fix --data-dir / "
                            f"${ENV_VAR}, or leave both unset to download with torchvision")
        return load_idx_folder(Path(data_dir).expanduser())
    if find_idx_files(cache_dir):
        try:
            data = load_idx_folder(cache_dir)
            return data._replace(source=data.source + " (torchvision cache)")
        except DataError as exc:
            log(f"note: ignoring the MNIST cache: {exc}")
    reason = "download disabled"
    if download and os.environ.get(DOWNLOAD_ENV_VAR, "1") != "0":
        try:
            return download_torchvision(cache_dir, timeout=timeout)
        except OSError as exc:
            reason = str(exc)
    log(f"MNIST is not available ({reason}); using synthetic digits instead. "
        f"Pass --data-dir or set ${ENV_VAR} to use real MNIST files.")
    return synthetic_mnist()
