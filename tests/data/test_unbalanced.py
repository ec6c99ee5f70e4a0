"""partition=unbalanced: flwr-datasets' size rules plus InnerDirichlet label skew."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.data import SIZE_RULES
from bouquet.data import label_histogram
from bouquet.data import partition_indices
from bouquet.data import unbalanced_sizes

LABELS = np.repeat(np.arange(10), 300)  # 3,000 samples, 300 per class


def _flwr_sizes(rule: str, num_samples: int, num_partitions: int) -> list[int]:
    """The sizes flwr-datasets' own partitioner of ``rule`` gives ``num_samples``
    samples."""
    from datasets import Dataset
    from flwr_datasets.partitioner import ExponentialPartitioner
    from flwr_datasets.partitioner import LinearPartitioner
    from flwr_datasets.partitioner import SquarePartitioner

    cls = {
        "exponential": ExponentialPartitioner,
        "linear": LinearPartitioner,
        "square": SquarePartitioner,
    }[rule]
    partitioner = cls(num_partitions=num_partitions)
    partitioner.dataset = Dataset.from_dict(
        {"label": np.zeros(num_samples, dtype=np.int64)}
    )
    assert partitioner.num_partitions == num_partitions  # computes the sizes
    return [int(partitioner.partition_id_to_size[i]) for i in range(num_partitions)]


@pytest.mark.parametrize("rule", SIZE_RULES)
@pytest.mark.parametrize(
    ("num_samples", "num_partitions"), [(60000, 10), (1797, 5), (3000, 7), (1000, 3)]
)
def test_sizes_are_flwr_datasets_sizes(
    rule: str, num_samples: int, num_partitions: int
) -> None:
    ours = unbalanced_sizes(num_samples, num_partitions, rule, 0)
    assert ours.tolist() == _flwr_sizes(rule, num_samples, num_partitions)


@pytest.mark.parametrize("rule", SIZE_RULES)
def test_min_size_is_an_additive_floor(rule: str) -> None:
    n, clients, floor = 60000, 10, 32
    sizes = unbalanced_sizes(n, clients, rule, floor)
    assert sizes.sum() == n
    assert (sizes - floor).tolist() == _flwr_sizes(rule, n - clients * floor, clients)
    assert sizes.min() >= floor and np.all(np.diff(sizes) >= 0)


def test_exponential_is_extreme_without_a_floor() -> None:
    sizes = unbalanced_sizes(60000, 10, "exponential", 0)
    assert sizes[0] == 4 and 0.6 < sizes[-1] / 60000 < 0.65


@pytest.mark.parametrize("rule", SIZE_RULES)
def test_partitions_follow_the_sizes_disjoint_and_complete(rule: str) -> None:
    parts = partition_indices(
        LABELS, 6, "unbalanced", sizes=rule, min_size=50, alpha=0.5, seed=3
    )
    assert [len(p) for p in parts] == unbalanced_sizes(
        len(LABELS), 6, rule, 50
    ).tolist()
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS) == len(np.unique(allidx)), (
        "overlap or a sample missing"
    )
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


def _skew(parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between a client's label distribution and the
    global one."""
    glob = label_histogram(LABELS, 10) / len(LABELS)
    return float(
        np.mean(
            [
                0.5 * np.abs(label_histogram(LABELS[p], 10) / len(p) - glob).sum()
                for p in parts
            ]
        )
    )


def test_labels_are_skewed_and_alpha_controls_it() -> None:
    skewed = partition_indices(
        LABELS, 6, "unbalanced", sizes="linear", min_size=50, alpha=0.1, seed=0
    )
    flat = partition_indices(
        LABELS, 6, "unbalanced", sizes="linear", min_size=50, alpha=1000.0, seed=0
    )
    hists = np.stack([label_histogram(LABELS[p], 10) for p in skewed])
    assert len({tuple(h) for h in hists}) == 6, (
        "per-client label histograms should differ"
    )
    assert _skew(skewed) > 0.4 > 0.15 > _skew(flat)


def test_non_contiguous_labels_are_all_assigned() -> None:
    labels = np.repeat(np.array([0, 3, 7]), 200)
    parts = partition_indices(
        labels, 4, "unbalanced", sizes="square", min_size=10, alpha=0.5, seed=0
    )
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))


def test_same_seed_same_partition_other_seed_differs() -> None:
    a = partition_indices(LABELS, 5, "unbalanced", min_size=20, alpha=0.3, seed=1)
    b = partition_indices(LABELS, 5, "unbalanced", min_size=20, alpha=0.3, seed=1)
    c = partition_indices(LABELS, 5, "unbalanced", min_size=20, alpha=0.3, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # the sizes do not depend on the seed
    assert [len(x) for x in a] == [len(x) for x in c]


def test_cache_key_holds_the_size_rule_and_the_floor() -> None:
    """Same labels, clients, alpha and seed: a cache keyed without sizes/min_size would
    return the first."""
    lin = partition_indices(
        LABELS, 5, "unbalanced", sizes="linear", min_size=20, seed=0
    )
    exp = partition_indices(
        LABELS, 5, "unbalanced", sizes="exponential", min_size=20, seed=0
    )
    floor = partition_indices(
        LABELS, 5, "unbalanced", sizes="exponential", min_size=21, seed=0
    )
    assert [len(p) for p in lin] != [len(p) for p in exp] != [len(p) for p in floor]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": "zipf"}, "partition.sizes='zipf' is unknown"),
        ({"min_size": -1}, "partition.min_size=-1"),
        ({"min_size": 2.5}, "partition.min_size=2.5"),
        ({"min_size": 601}, "partition.min_size=601 x simulation.num_clients=5"),
        ({"alpha": 0.0}, "partition.alpha=0.0"),
        ({"alpha": 1e-5}, "partition.alpha=1e-05 is too small"),
        (
            {"num_partitions": 30, "min_size": 0},
            "partition.sizes=exponential leaves client 0 without samples",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_key(kwargs: dict, message: str) -> None:
    args = {
        "num_partitions": 5,
        "kind": "unbalanced",
        "min_size": 10,
        "alpha": 0.5,
        "seed": 0,
        **kwargs,
    }
    with pytest.raises(
        ValueError, match=message.replace(".", r"\.").replace("+", r"\+")
    ):
        partition_indices(LABELS, **args)
