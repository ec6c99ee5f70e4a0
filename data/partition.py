r"""Partitioning of a training set across clients with flwr-datasets' partitioners.

Partitions are lists of indices into the training arrays; the server-side test set is
never partitioned. A class-balanced slice can be carved out of the training set for the
server (:func:`split_server_holdout`) before partitioning, so it is disjoint from every
client.

``kind="unbalanced"`` (very different sizes *and* skewed labels) is in
:mod:`bouquet.data.unbalanced`; computed partitions are cached on disk
(:mod:`bouquet.data.partition_cache`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from bouquet.data.partition_cache import cached_partitions
from bouquet.data.partition_cache import store_partitions
from bouquet.data.unbalanced import as_hf_dataset
from bouquet.data.unbalanced import unbalanced_partitions
from bouquet.data.unbalanced import unbalanced_sizes

logger = logging.getLogger(__name__)

PARTITIONERS = ("iid", "dirichlet", "pathological", "unbalanced")


def validate_partition_args(
    kind: str,
    num_partitions: int,
    num_samples: int,
    alpha: float,
    labels_per_client: int,
    num_classes: int,
    *,
    sizes: str = "exponential",
    min_size: int = 0,
) -> None:
    """Refuse impossible partition settings with a message naming the key."""
    if kind not in PARTITIONERS:
        raise ValueError(
            f"partition.kind={kind!r} is unknown; allowed: {', '.join(PARTITIONERS)}"
        )
    if num_partitions < 1:
        raise ValueError(f"simulation.num_clients={num_partitions} must be >= 1")
    if num_partitions > num_samples:
        raise ValueError(
            f"simulation.num_clients={num_partitions} is more than the {num_samples} "
            "training samples"
        )
    if kind in ("dirichlet", "unbalanced") and not alpha > 0:
        raise ValueError(f"partition.alpha={alpha} must be > 0")
    if kind == "unbalanced":
        # raises naming the key
        unbalanced_sizes(num_samples, num_partitions, sizes, min_size)
    if kind == "pathological" and not 1 <= labels_per_client <= num_classes:
        raise ValueError(
            f"partition.labels_per_client={labels_per_client} must be in [1, "
            f"{num_classes}]"
        )


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    kind: str = "iid",
    *,
    alpha: float = 0.5,
    labels_per_client: int = 2,
    min_partition_size: int = 2,
    sizes: str = "exponential",
    min_size: int = 0,
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
        (:class:`~flwr_datasets.partitioner.DirichletPartitioner`, by label,
        concentration ``alpha``) or ``pathological``
        (:class:`~flwr_datasets.partitioner.PathologicalPartitioner`,
        ``labels_per_client`` classes per client; the first class of client i is i mod
        C, so every class is used, the others at random), or ``unbalanced`` (sizes by
        :func:`unbalanced_sizes`, labels by
        :class:`~flwr_datasets.partitioner.InnerDirichletPartitioner` with concentration
        ``alpha``; client 0 is the smallest, client N-1 the largest).
    min_partition_size : int
        Dirichlet only: resample until every client has at least this many samples.
    sizes : str
        Unbalanced only: the size rule, one of :data:`SIZE_RULES`.
    min_size : int
        Unbalanced only: samples every client gets before the size rule splits the rest.
    seed : int
        Same seed, same partition.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 index arrays, one per client, pairwise disjoint.
    """
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    validate_partition_args(
        kind,
        num_partitions,
        len(labels),
        alpha,
        labels_per_client,
        num_classes,
        sizes=sizes,
        min_size=min_size,
    )
    settings: tuple
    if kind == "unbalanced":
        settings = (kind, num_partitions, float(alpha), sizes, int(min_size), seed)
    else:  # unchanged, so the partitions cached before stay valid
        settings = (
            kind,
            num_partitions,
            alpha,
            labels_per_client,
            min_partition_size,
            seed,
        )
    cached = cached_partitions(labels, settings)
    if cached is not None:
        return cached
    if kind == "unbalanced":
        parts = unbalanced_partitions(
            labels,
            unbalanced_sizes(len(labels), num_partitions, sizes, min_size),
            float(alpha),
            seed,
        )
    else:
        parts = _partition(
            labels,
            num_partitions,
            kind,
            alpha,
            labels_per_client,
            min_partition_size,
            seed,
            num_classes,
        )
    store_partitions(labels, settings, parts)
    return parts


def _partition(
    labels: np.ndarray,
    num_partitions: int,
    kind: str,
    alpha: float,
    labels_per_client: int,
    min_partition_size: int,
    seed: int,
    num_classes: int,
) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner
    from flwr_datasets.partitioner import IidPartitioner
    from flwr_datasets.partitioner import PathologicalPartitioner

    if kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        # IidPartitioner splits in order; shuffle first so the result depends on the
        # seed.
        order = np.random.default_rng(seed).permutation(len(labels))
        hf = as_hf_dataset(labels[order])
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
        hf = as_hf_dataset(labels)
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=labels_per_client,
            # every class is used (as in the paper)
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
        order = np.arange(len(labels))
        hf = as_hf_dataset(labels)
    partitioner.dataset = hf
    try:
        index_map = _index_map(partitioner, kind, len(labels), num_partitions)
    # flwr-datasets gives up (e.g. a Dirichlet minimum it cannot meet)
    except ValueError as exc:
        raise PartitionImpossible(
            _impossible(
                kind, num_partitions, len(labels), alpha, min_partition_size, exc
            )
        ) from exc
    return [
        np.sort(order[np.asarray(index_map[pid], dtype=np.int64)])
        for pid in range(num_partitions)
    ]


class PartitionImpossible(ValueError):
    """The partitioner cannot cut these partitions (refused before the run starts)."""


def _impossible(
    kind: str,
    n: int,
    samples: int,
    alpha: float,
    min_partition_size: int,
    exc: Exception,
) -> str:
    if kind == "dirichlet":
        return (
            f"partition=dirichlet cannot give each of simulation.num_clients={n} "
            "clients at least "
            f"{min(min_partition_size, samples // n)} of the {samples} samples with "
            f"partition.alpha={alpha} "
            "(flwr-datasets gave up after 10 draws): use fewer clients, a larger "
            "partition.alpha, or "
            "partition.min_partition_size=0"
        )
    return (
        f"partition={kind} cannot cut {n} partitions of {samples} samples: "
        f"{' '.join(str(exc).split())[:200]}"
    )


def _index_map(
    partitioner: Any, kind: str, num_samples: int, num_partitions: int
) -> dict[int, Any]:
    """Partition id -> indices into the partitioner's dataset, computed once for all
    partitions.

    flwr-datasets' ``load_partition(i)`` builds a dataset per partition (14 s for 10,000
    IID partitions of MNIST here); its own index map is read instead when it has one,
    and IID is the contiguous sharding that ``IidPartitioner`` does
    (``datasets.Dataset.shard``).
    """
    if kind == "iid":
        return dict(enumerate(np.array_split(np.arange(num_samples), num_partitions)))
    determine = getattr(
        partitioner, "_determine_partition_id_to_indices_if_needed", None
    )
    index_map = getattr(partitioner, "_partition_id_to_indices", None)
    if callable(determine) and isinstance(index_map, dict):
        # its retries warn at length; a failure is raised (and refused) anyway
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            determine()
        return partitioner._partition_id_to_indices  # type: ignore[no-any-return]
    return {
        pid: partitioner.load_partition(pid)["idx"] for pid in range(num_partitions)
    }


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts per class (int64, length ``num_classes``)."""
    return np.bincount(labels.astype(np.int64), minlength=num_classes)[
        :num_classes
    ].astype(np.int64)


def split_server_holdout(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a class-balanced slice of ``fraction`` of the samples for the server.

    Returns ``(server_idx, rest_idx)``, disjoint and together all indices. Each class
    gets ``round(fraction * n / C)`` samples (capped by the class size).
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
