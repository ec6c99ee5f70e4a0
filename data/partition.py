"""Partitioning of a training set across clients with flwr-datasets' partitioners.

Partitions are lists of indices into the training arrays; the server-side test set is never
partitioned. A class-balanced slice can be carved out of the training set for the server
(:func:`split_server_holdout`) before partitioning, so it is disjoint from every client.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from bouquet.data.loaders import data_root

logger = logging.getLogger(__name__)

PARTITIONERS = ("iid", "dirichlet", "pathological")


def _as_hf_dataset(labels: np.ndarray):  # type: ignore[no-untyped-def]
    from datasets import Dataset as HFDataset

    return HFDataset.from_dict({"label": labels.astype(np.int64), "idx": np.arange(len(labels))})


def validate_partition_args(
    kind: str, num_partitions: int, num_samples: int, alpha: float, labels_per_client: int, num_classes: int
) -> None:
    """Refuse impossible partition settings with a message naming the key."""
    if kind not in PARTITIONERS:
        raise ValueError(f"partition.kind={kind!r} is unknown; allowed: {', '.join(PARTITIONERS)}")
    if num_partitions < 1:
        raise ValueError(f"simulation.num_clients={num_partitions} must be >= 1")
    if num_partitions > num_samples:
        raise ValueError(
            f"simulation.num_clients={num_partitions} is more than the {num_samples} training samples"
        )
    if kind == "dirichlet" and not alpha > 0:
        raise ValueError(f"partition.alpha={alpha} must be > 0")
    if kind == "pathological" and not 1 <= labels_per_client <= num_classes:
        raise ValueError(
            f"partition.labels_per_client={labels_per_client} must be in [1, {num_classes}]"
        )


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    kind: str = "iid",
    *,
    alpha: float = 0.5,
    labels_per_client: int = 2,
    min_partition_size: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices into ``num_partitions`` disjoint client partitions.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels of the training set.
    num_partitions : int
        Number of clients.
    kind : str
        ``iid`` (:class:`~flwr_datasets.partitioner.IidPartitioner`), ``dirichlet``
        (:class:`~flwr_datasets.partitioner.DirichletPartitioner`, by label, concentration
        ``alpha``) or ``pathological``
        (:class:`~flwr_datasets.partitioner.PathologicalPartitioner`, ``labels_per_client``
        classes per client; the first class of client i is i mod C, so every class is used,
        the others at random).
    min_partition_size : int
        Dirichlet only: resample until every client has at least this many samples.
    seed : int
        Same seed, same partition.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 index arrays, one per client, pairwise disjoint.
    """
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    validate_partition_args(kind, num_partitions, len(labels), alpha, labels_per_client, num_classes)
    settings = (kind, num_partitions, alpha, labels_per_client, min_partition_size, seed)
    cached = _cached_partitions(labels, settings)
    if cached is not None:
        return cached
    parts = _partition(labels, num_partitions, kind, alpha, labels_per_client, min_partition_size, seed, num_classes)
    _store_partitions(labels, settings, parts)
    return parts


def _cache_file(labels: np.ndarray, settings: tuple) -> Path:
    """``<data cache>/partitions/<sha256 of the labels and the settings>.npz``."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(repr(settings).encode())
    return data_root() / "partitions" / f"{digest.hexdigest()[:32]}.npz"


def _cached_partitions(labels: np.ndarray, settings: tuple) -> list[np.ndarray] | None:
    """Partitions computed before for the same labels and settings (no flwr-datasets import:
    ~0.7 s in every fresh process, and a deployed SuperNode starts one per message)."""
    path = _cache_file(labels, settings)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            parts = [f[f"p{i}"].astype(np.int64) for i in range(int(settings[1]))]
    except (OSError, ValueError, KeyError):
        logger.warning("partition cache %s is unreadable; recomputing", path)
        return None
    if any(p.size and (p.min() < 0 or p.max() >= len(labels)) for p in parts):
        return None
    return parts


def _store_partitions(labels: np.ndarray, settings: tuple, parts: list[np.ndarray]) -> None:
    path = _cache_file(labels, settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npz")
        np.savez(tmp, **{f"p{i}": p for i, p in enumerate(parts)})
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs the recomputation
        logger.info("could not cache partitions in %s: %s", path, exc)


def _partition(labels: np.ndarray, num_partitions: int, kind: str, alpha: float, labels_per_client: int,
               min_partition_size: int, seed: int, num_classes: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        # IidPartitioner splits in order; shuffle first so the result depends on the seed.
        order = np.random.default_rng(seed).permutation(len(labels))
        hf = _as_hf_dataset(labels[order])
    elif kind == "dirichlet":
        min_size = min(min_partition_size, len(labels) // num_partitions)
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=alpha,
            seed=seed,
            min_partition_size=min_size,
            self_balancing=False,
        )
        order = np.arange(len(labels))
        hf = _as_hf_dataset(labels)
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=labels_per_client,
            class_assignment_mode="first-deterministic",  # every class is used (as in the paper)
            seed=seed,
        )
        order = np.arange(len(labels))
        hf = _as_hf_dataset(labels)
    partitioner.dataset = hf
    parts = []
    for pid in range(num_partitions):
        local = np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64)
        parts.append(np.sort(order[local]))
    return parts


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts per class (int64, length ``num_classes``)."""
    return np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes].astype(np.int64)


def split_server_holdout(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a class-balanced slice of ``fraction`` of the samples for the server.

    Returns ``(server_idx, rest_idx)``, disjoint and together all indices. Each class gets
    ``round(fraction * n / C)`` samples (capped by the class size).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"server.shared_fraction={fraction} must be in [0, 1)")
    n = len(labels)
    if fraction == 0.0:
        return np.zeros(0, dtype=np.int64), np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed + 7919)
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * n / len(classes))))
    chosen = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    server = np.sort(np.concatenate(chosen)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[server] = False
    return server, np.flatnonzero(mask).astype(np.int64)
