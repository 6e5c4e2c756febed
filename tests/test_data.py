"""Data loaders: the embedded digits, real Fashion-MNIST IDX files (and their corruption), spheres, folders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from conftest import needs_fmnist

from georobust import data
from georobust.data import fashion_mnist
from georobust.errors import DataError, OptionError


def test_digits_split_fixed():
    x, y = data.load("digits", "test")
    xt, yt = data.load("digits", "train")
    assert x.shape == (540, 1, 8, 8) and xt.shape == (1257, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [54, 55, 53, 55, 54, 55, 54, 54, 52, 54]  # stratified, fixed
    x2, y2 = data.load("digits", "test")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert data.load("digits", "test", limit=10)[0].shape[0] == 10


def test_unknown_names_suggest():
    with pytest.raises(OptionError, match="Did you mean 'digits'"):
        data.load("digit")
    with pytest.raises(OptionError, match="unknown split"):
        data.load("digits", "valid")
    with pytest.raises(OptionError, match="limit"):
        data.load("digits", limit=0)
    with pytest.raises(OptionError, match="option of data set"):
        data.load("digits", dim=3)


@needs_fmnist
def test_fashion_mnist_real_files():
    x, y = data.load("fashion-mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert torch.bincount(y).tolist() == [1000] * 10
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert abs(float(x.mean()) - 0.2868) < 0.002  # the known test-set mean pixel value


def _write_idx(path, arr: np.ndarray, magic_dtype=0x08, gz=True):
    header = struct.pack(">HBB", 0, magic_dtype, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


def test_idx_reader_and_corruption(tmp_path):
    arr = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "a.gz", 3, 2, (28, 28)), arr)
    _write_idx(tmp_path / "raw", arr, gz=False)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "raw", 3), arr)
    _write_idx(tmp_path / "bad_magic.gz", arr, magic_dtype=0x0D)
    with pytest.raises(DataError, match="bad IDX magic"):
        fashion_mnist.read_idx(tmp_path / "bad_magic.gz", 3)
    with pytest.raises(DataError, match="declares 2 items, expected 5"):
        fashion_mnist.read_idx(tmp_path / "a.gz", 3, 5)
    with pytest.raises(DataError, match="size"):
        fashion_mnist.read_idx(tmp_path / "a.gz", 3, 2, (32, 32))
    raw = (tmp_path / "raw").read_bytes()
    (tmp_path / "trunc").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        fashion_mnist.read_idx(tmp_path / "trunc", 3)
    (tmp_path / "notgz.gz").write_bytes(b"garbage that is not gzip")
    with pytest.raises(DataError, match="corrupt"):
        fashion_mnist.read_idx(tmp_path / "notgz.gz", 3)


def test_fashion_mnist_missing_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOROBUST_DATA", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "nowhere")
    fashion_mnist._load.cache_clear()
    try:
        with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist.*GEOROBUST_DATA"):
            data.load("fashion-mnist")
        assert not data.info("fashion-mnist").available
    finally:
        fashion_mnist._load.cache_clear()


def test_georobust_data_env_is_searched_first(tmp_path, monkeypatch):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for split, (img, lab, _) in fashion_mnist.FILES.items():
        _write_idx(d / f"{img}.gz", np.full((3, 28, 28), 255 if split == "test" else 0))
        _write_idx(d / f"{lab}.gz", np.array([1, 2, 3]))
    monkeypatch.setenv("GEOROBUST_DATA", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "FILES", {k: (v[0], v[1], 3) for k, v in fashion_mnist.FILES.items()})
    fashion_mnist._load.cache_clear()
    try:
        x, y = data.load("fashion-mnist", "test")
        assert x.shape == (3, 1, 28, 28) and float(x.min()) == 1.0 and y.tolist() == [1, 2, 3]
    finally:
        fashion_mnist._load.cache_clear()


def test_spheres_geometry():
    x, y = data.load("spheres", "train", dim=50, n=400, r_inner=1.0, r_outer=1.3)
    assert x.shape == (400, 50) and int(y.sum()) == 200
    radii = (x.double() - 0.5).norm(dim=1)
    assert torch.allclose(radii[y == 0], torch.full_like(radii[y == 0], 1.0 / 2.6), atol=1e-6)
    assert torch.allclose(radii[y == 1], torch.full_like(radii[y == 1], 0.5), atol=1e-6)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    x2, _ = data.load("spheres", "train", dim=50, n=400)
    xt, _ = data.load("spheres", "test", dim=50, n=400)
    assert torch.equal(x, x2) and not torch.equal(x, xt)
    with pytest.raises(OptionError, match="r_inner < r_outer"):
        data.load("spheres", r_inner=2.0, r_outer=1.0)


def test_image_folder(tmp_path):
    from PIL import Image

    for c, val in (("cat", 10), ("dog", 200)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 5, 3), val + i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    x, y = data.load("folder", root=str(tmp_path))
    assert x.shape == (6, 3, 6, 5) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(float(x[0].mean()) - 10 / 255) < 1e-6
    xg, _ = data.load("folder", root=str(tmp_path), channels=1, size=(4, 4))
    assert xg.shape == (6, 1, 4, 4)
    with pytest.raises(DataError, match="does not exist"):
        data.load("folder", root=str(tmp_path / "nope"))
    with pytest.raises(OptionError, match="root"):
        data.load("folder")
