"""Partitions: sizes, disjointness, determinism, histograms, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.data import label_histogram
from bouquet.data import partition_indices
from bouquet.data import split_server_holdout

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover(kind: str) -> None:
    parts = partition_indices(LABELS, 8, kind, alpha=0.5, labels_per_client=2, seed=3)
    assert len(parts) == 8
    allidx = np.concatenate(parts)
    assert len(allidx) == len(set(allidx.tolist())), "partitions overlap"
    assert allidx.min() >= 0 and allidx.max() < len(LABELS)
    if kind != "pathological":  # pathological may leave unassigned classes out
        assert len(allidx) == len(LABELS)
    assert all(len(p) > 0 for p in parts)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "pathological"])
def test_same_seed_same_partition_other_seed_differs(kind: str) -> None:
    a = partition_indices(LABELS, 5, kind, alpha=0.3, seed=1)
    b = partition_indices(LABELS, 5, kind, alpha=0.3, seed=1)
    c = partition_indices(LABELS, 5, kind, alpha=0.3, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_balanced_and_label_mixed() -> None:
    parts = partition_indices(LABELS, 10, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    hist = label_histogram(LABELS[parts[0]], 10)
    assert (hist > 0).sum() >= 8  # shuffled, not one class per client


def test_pathological_labels_per_client() -> None:
    parts = partition_indices(LABELS, 10, "pathological", labels_per_client=2, seed=0)
    for p in parts:
        assert len(np.unique(LABELS[p])) <= 2


def test_dirichlet_small_alpha_is_skewed() -> None:
    skewed = partition_indices(LABELS, 10, "dirichlet", alpha=0.05, seed=0)
    flat = partition_indices(LABELS, 10, "dirichlet", alpha=100.0, seed=0)

    def max_share(parts: list[np.ndarray]) -> float:
        return float(
            np.mean([label_histogram(LABELS[p], 10).max() / len(p) for p in parts])
        )

    assert max_share(skewed) > 0.5 > max_share(flat)


def test_label_histogram_counts() -> None:
    hist = label_histogram(np.array([0, 2, 2, 9]), 10)
    assert hist.tolist() == [1, 0, 2, 0, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_partitions": 5, "kind": "dirichlet", "alpha": 0.0}, "partition.alpha"),
        ({"num_partitions": 5, "kind": "dirichlet", "alpha": -1.0}, "partition.alpha"),
        ({"num_partitions": 2000, "kind": "iid"}, "simulation.num_clients"),
        (
            {"num_partitions": 5, "kind": "pathological", "labels_per_client": 11},
            "partition.labels_per_client",
        ),
        ({"num_partitions": 5, "kind": "zipf"}, "partition.kind"),
    ],
)
def test_impossible_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        partition_indices(LABELS, **kwargs)


def test_server_holdout_balanced_and_disjoint() -> None:
    server, rest = split_server_holdout(LABELS, 0.05, seed=0)
    assert len(np.intersect1d(server, rest)) == 0
    assert len(server) + len(rest) == len(LABELS)
    assert label_histogram(LABELS[server], 10).tolist() == [5] * 10
    with pytest.raises(ValueError, match="shared_fraction"):
        split_server_holdout(LABELS, 1.0)
