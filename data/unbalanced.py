r"""``kind="unbalanced"`` partitions: clients of very different sizes *and* skewed
labels. The sizes follow one of flwr-datasets' id-to-size rules
(``ExponentialPartitioner``, ``LinearPartitioner``, ``SquarePartitioner``: client ``i =
1..N`` gets a share proportional to ``f(i)``), computed by :func:`unbalanced_sizes` on
what is left after every client got ``min_size`` samples, and the labels within those
sizes come from flwr-datasets' ``InnerDirichletPartitioner`` (Dirichlet(alpha) class
priors per client, Acar et al., FedDyn, 2021).

.. math::

    n_i = m + \left\lfloor \frac{f(i)}{\sum_{j=1}^{N} f(j)} (n - N m) \right\rfloor
    \quad (\text{the remainder goes to client } N), \qquad f \in \{e^i,\ i,\ i^2\}
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from bouquet.checks import require_integer

logger = logging.getLogger(__name__)


#: Size rules of ``kind="unbalanced"``: the id-to-size functions of flwr-datasets'
#: ``ExponentialPartitioner`` (``np.exp``), ``LinearPartitioner`` and
#: ``SquarePartitioner``.
SIZE_RULES = ("exponential", "linear", "square")
_SIZE_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exponential": np.exp,
    "linear": lambda x: x,
    "square": np.square,
}


def as_hf_dataset(labels: np.ndarray):  # type: ignore[no-untyped-def]
    """``labels`` as a Hugging Face dataset of ``label`` and ``idx`` columns, as
    flwr-datasets' partitioners take it."""
    from datasets import Dataset as HFDataset

    return HFDataset.from_dict(
        {"label": labels.astype(np.int64), "idx": np.arange(len(labels))}
    )


def unbalanced_sizes(
    num_samples: int, num_partitions: int, sizes: str = "exponential", min_size: int = 0
) -> np.ndarray:
    """Client sizes of ``kind="unbalanced"``: ``min_size`` each, the rest split by a
    flwr-datasets size rule.

    The rest ``n - N * min_size`` is split exactly as flwr-datasets'
    ``IdToSizeFncPartitioner`` splits a dataset (``ExponentialPartitioner``: ``f =
    exp``, ``LinearPartitioner``: ``f(i) = i``, ``SquarePartitioner``: ``f(i) = i**2``,
    for ``i = 1..N``): client ``i`` gets ``floor(f(i) / sum_j f(j) * rest)`` samples and
    the last (largest) client the remainder. With ``min_size=0`` the sizes are
    flwr-datasets' own.

    Our reading: ``exp`` over 10 clients puts ~63% of the data on the last client and a
    handful of samples (4 of 60,000) on the first; ``min_size`` is an additive floor, so
    every client can train, while the rule still shapes the sizes above it.

    Raises
    ------
    ValueError
        Naming ``partition.sizes`` (unknown rule), ``partition.min_size`` (negative,
        more than the samples allow, or a client left with no sample) or
        ``simulation.num_clients``.
    """
    if sizes not in SIZE_RULES:
        raise ValueError(
            f"partition.sizes={sizes!r} is unknown; allowed: {', '.join(SIZE_RULES)}"
        )
    require_integer(min_size, "partition.min_size", 0)
    if num_partitions < 1:
        raise ValueError(f"simulation.num_clients={num_partitions} must be >= 1")
    rest = num_samples - num_partitions * int(min_size)
    if rest < 0:
        raise ValueError(
            f"partition.min_size={min_size} x "
            f"simulation.num_clients={num_partitions} is more than "
            f"the {num_samples} training samples"
        )
    # flwr-datasets' partition ids 1..N
    ids = np.linspace(start=1, stop=num_partitions, num=num_partitions)
    with np.errstate(over="ignore", invalid="ignore"):
        units = _SIZE_FNS[sizes](ids)
        fractions = units / units.sum()
    # exp(i) overflows float64 beyond i = 709: same fractions, shifted
    if not np.all(np.isfinite(fractions)):
        units = np.exp(ids - ids[-1])
        fractions = units / units.sum()
    # truncation, as flwr-datasets does
    out = np.array(fractions * rest, dtype=np.int64)
    out[-1] += rest - out.sum()
    out += int(min_size)
    if out.min() < 1:
        empty = int(np.argmin(out))
        raise ValueError(
            f"partition.sizes={sizes} leaves client {empty} without samples "
            f"({num_partitions} clients, "
            f"{num_samples} samples): set partition.min_size >= 1"
        )
    return out


def unbalanced_partitions(
    labels: np.ndarray, sizes: np.ndarray, alpha: float, seed: int
) -> list[np.ndarray]:
    """flwr-datasets' ``InnerDirichletPartitioner`` over ``sizes`` (which sum to
    ``len(labels)``)."""
    from flwr_datasets.partitioner import InnerDirichletPartitioner

    # It looks classes up as 0..K-1 (K = the number of distinct labels): relabel
    # densely.
    dense = np.unique(labels, return_inverse=True)[1].reshape(-1)
    partitioner = InnerDirichletPartitioner(
        partition_sizes=[int(s) for s in sizes],
        partition_by="label",
        alpha=alpha,
        shuffle=False,
        seed=seed,
    )
    partitioner.dataset = as_hf_dataset(dense)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            parts = [
                np.sort(
                    np.asarray(partitioner.load_partition(pid)["idx"], dtype=np.int64)
                )
                for pid in range(len(sizes))
            ]
    except ValueError as exc:
        if "NaN" not in str(exc):
            raise
        # A client's Dirichlet prior put all its mass on classes that ran out: nothing
        # left to draw.
        raise ValueError(
            f"partition.alpha={alpha} is too small for partition=unbalanced with "
            "these sizes and seed: "
            "flwr-datasets' InnerDirichletPartitioner drew a client whose classes "
            "all ran out before it was full "
            f"({exc}); use a larger partition.alpha"
        ) from exc
    return parts
