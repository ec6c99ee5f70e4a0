"""Offline loaders: IDX parsing, the cache, torchvision's layout, clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from bouquet.data import DataMissingError
from bouquet.data import load_dataset
from bouquet.data import read_idx
from bouquet.data.loaders import _load_idx_dataset


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape
    )
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(folder: Path, gz: bool) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    _write_idx(
        folder / f"train-images-idx3-ubyte{suffix}",
        rng.integers(0, 255, (20, 28, 28)),
        gz,
    )
    _write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(20) % 10, gz)
    _write_idx(
        folder / f"t10k-images-idx3-ubyte{suffix}",
        rng.integers(0, 255, (6, 28, 28)),
        gz,
    )
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(6) % 10, gz)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x", arr)
    _write_idx(tmp_path / "x.gz", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "x"), arr)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), arr)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")
    arr = np.zeros((2, 2), dtype=np.uint8)
    _write_idx(tmp_path / "short", arr)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header declares"):
        read_idx(tmp_path / "short")


def test_torchvision_layout(tmp_path: Path) -> None:
    _fake_mnist(tmp_path / "MNIST" / "raw", gz=True)
    ds = _load_idx_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.y_test.tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_data_names_make_data(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match="make data"):
        _load_idx_dataset("fashion_mnist", tmp_path)


def test_unknown_dataset_refused() -> None:
    with pytest.raises(ValueError, match="cifar"):
        load_dataset("cifar")


def test_digits_split_is_stratified_and_disjoint() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert set(np.unique(ds.y_test).tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_datasets_from_cache(name: str) -> None:
    # `make test` runs `make data` first; a missing cache fails loudly here.
    ds = load_dataset(name)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train).min() >= 5000
    assert abs(float(ds.x_train[:1000].mean())) < 0.2  # normalised
