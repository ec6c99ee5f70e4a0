"""The on-disk cache of computed partitions: ``<data cache>/partitions/<key>.npz``,
keyed by the labels and the partition settings (a fresh process skips flwr-datasets)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from bouquet.data.loaders import data_root

logger = logging.getLogger(__name__)


def cache_file(labels: np.ndarray, settings: tuple) -> Path:
    """``<data cache>/partitions/<sha256 of the labels and the settings>.npz``."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(repr(settings).encode())
    return data_root() / "partitions" / f"{digest.hexdigest()[:32]}.npz"


def cached_partitions(labels: np.ndarray, settings: tuple) -> list[np.ndarray] | None:
    """Partitions computed before for the same labels and settings (no flwr-datasets
    import:
    ~0.7 s in every fresh process, and a deployed SuperNode starts one per message)."""
    path = cache_file(labels, settings)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if "offsets" in f.files:  # two arrays: O(1) members whatever the population
                flat, offsets = (
                    f["indices"].astype(np.int64),
                    f["offsets"].astype(np.int64),
                )
                if (
                    offsets.shape != (int(settings[1]) + 1,)
                    or offsets[0] != 0
                    or offsets[-1] != flat.size
                    or np.any(np.diff(offsets) < 0)
                ):
                    raise ValueError("offsets do not describe the partitions")
                parts = np.split(flat, offsets[1:-1])
                old_layout = False
            else:  # an older cache: one member per partition
                parts = [f[f"p{i}"].astype(np.int64) for i in range(int(settings[1]))]
                old_layout = True
    except (OSError, ValueError, KeyError):
        logger.warning("partition cache %s is unreadable; recomputing", path)
        return None
    if any(p.size and (p.min() < 0 or p.max() >= len(labels)) for p in parts):
        return None
    if old_layout:  # rewritten once in the two-array layout
        store_partitions(labels, settings, parts)
    return parts


def store_partitions(
    labels: np.ndarray, settings: tuple, parts: list[np.ndarray]
) -> None:
    """Write ``parts`` for these labels and settings (a failure only costs the
    recomputation)."""
    path = cache_file(labels, settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npz")
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(
            np.int64
        )
        flat = (
            np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        )
        # 10,000 members took 1.5 s to read; two take ms
        np.savez(tmp, indices=flat, offsets=offsets)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs the recomputation
        logger.info("could not cache partitions in %s: %s", path, exc)
