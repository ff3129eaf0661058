"""MNIST loading: IDX parsing on the real shared split, the synthetic fallback, clear errors."""
from __future__ import annotations

import gzip
import os
import struct

import pytest
import torch

from graphviz_autograd.examples import data as mnist_data
from graphviz_autograd.errors import GraphvizAutogradError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.environ.get("GVA_MNIST_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data", "MNIST")
HAVE_MNIST = bool(mnist_data.find_idx_files(MNIST_DIR))
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"no MNIST IDX files in {MNIST_DIR} "
                                 "(set GVA_MNIST_DIR to a folder holding t10k-*-ubyte.gz)")


def _write_idx(path, array: torch.Tensor, gz: bool = True) -> None:
    header = bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    payload = header + array.to(torch.uint8).numpy().tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)


@needs_mnist
def test_real_test_split_is_parsed_and_split_8000_2000():
    files = mnist_data.find_idx_files(MNIST_DIR)
    images = mnist_data.read_idx(files["test_images"])
    labels = mnist_data.read_idx(files["test_labels"])
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and int(labels.max()) == 9 and int(labels.min()) == 0
    assert torch.bincount(labels.long()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(images.max()) == 255 and images.float().mean() > 30   # real strokes, not blank

    data = mnist_data.load_mnist(MNIST_DIR)
    x, y = data.train.tensors
    assert len(data.train) == 8000 and len(data.test) == 2000
    assert x.shape == (8000, 1, 28, 28) and y.dtype == torch.int64
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert "8,000 train / 2,000 test" in data.source and "test split" in data.source
    again = mnist_data.load_mnist(MNIST_DIR)                  # deterministic split
    assert torch.equal(again.test.tensors[1], data.test.tensors[1])
    # train and test are disjoint slices of the 10,000 images
    assert len(torch.cat([data.train.tensors[1], data.test.tensors[1]])) == 10000


@needs_mnist
def test_env_var_is_used_when_no_data_dir(monkeypatch):
    monkeypatch.setenv(mnist_data.ENV_VAR, MNIST_DIR)
    assert "MNIST test split" in mnist_data.load_mnist(download=False).source


def test_full_mnist_folder_uses_official_split(tmp_path):
    raw = tmp_path / "MNIST" / "raw"          # torchvision's layout
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", torch.randint(0, 256, (30, 28, 28), generator=g))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", torch.arange(30) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte", torch.zeros(12, 28, 28), gz=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", torch.arange(12) % 10, gz=False)
    data = mnist_data.load_mnist(tmp_path)
    assert len(data.train) == 30 and len(data.test) == 12
    assert torch.equal(data.train.tensors[1], torch.arange(30) % 10)
    assert torch.all(data.test.tensors[0] == -1.0)   # 0 -> (0/255 - 0.5)/0.5


def test_normalisation_matches_the_seed():
    x = torch.tensor([[[0, 255], [51, 204]]], dtype=torch.uint8)
    out = mnist_data.normalize(x)
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, 1.0, -0.6, 0.6]))


def test_synthetic_digits_shapes_labels_and_determinism():
    x, y = mnist_data.synthetic_digits(500, seed=3)
    assert x.shape == (500, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert torch.equal(x, mnist_data.synthetic_digits(500, seed=3)[0])
    assert not torch.equal(x, mnist_data.synthetic_digits(500, seed=4)[0])
    ink = (x > 128).float().mean((1, 2))
    assert ink.min() > 0.03 and ink.max() < 0.5      # every image has strokes, none is filled
    # the ten classes look different: class mean images are far apart
    means = torch.stack([x[y == d].float().mean(0) for d in range(10)])
    dists = torch.cdist(means.flatten(1), means.flatten(1))
    assert dists[~torch.eye(10, dtype=torch.bool)].min() > 100


def test_synthetic_mnist_is_normalised_like_mnist():
    data = mnist_data.synthetic_mnist(n_train=200, n_test=50)
    x, y = data.train.tensors
    assert x.shape == (200, 1, 28, 28) and len(data.test) == 50
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0 and y.dtype == torch.int64
    assert "synthetic" in data.source


def test_fallback_to_synthetic_prints_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist_data.ENV_VAR, raising=False)
    lines: list[str] = []
    data = mnist_data.load_mnist(download=False, cache_dir=tmp_path / "empty", log=lines.append)
    assert len(lines) == 1 and "synthetic" in lines[0] and "--data-dir" in lines[0]
    assert len(data.train) == mnist_data.SPLIT_TRAIN and "synthetic" in data.source


def test_download_can_be_disabled_by_env(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist_data.ENV_VAR, raising=False)
    monkeypatch.setenv(mnist_data.DOWNLOAD_ENV_VAR, "0")
    monkeypatch.setattr(mnist_data, "download_torchvision", lambda *a, **k: pytest.fail("downloaded"))
    lines: list[str] = []
    assert "synthetic" in mnist_data.load_mnist(cache_dir=tmp_path, log=lines.append).source
    assert "download disabled" in lines[0]


def test_failed_download_falls_back(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist_data.ENV_VAR, raising=False)
    monkeypatch.delenv(mnist_data.DOWNLOAD_ENV_VAR, raising=False)

    def offline(root, timeout):
        raise OSError("no network: the MNIST mirror does not resolve")
    monkeypatch.setattr(mnist_data, "download_torchvision", offline)
    lines: list[str] = []
    data = mnist_data.load_mnist(cache_dir=tmp_path, log=lines.append)
    assert "synthetic" in data.source
    assert lines == [lines[0]] and "no network" in lines[0]


def test_data_dir_without_mnist_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(mnist_data.DataError) as info:
        mnist_data.load_mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and "--data-dir" in msg
    assert isinstance(info.value, GraphvizAutogradError) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(mnist_data.DataError, match="does not exist"):
        mnist_data.load_mnist(tmp_path / "missing")


def test_bad_idx_files_are_rejected(tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(mnist_data.DataError, match="magic bytes 89504e47"):
        mnist_data.read_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\x01" * 10)
    with pytest.raises(mnist_data.DataError, match="truncated"):
        mnist_data.read_idx(short)
