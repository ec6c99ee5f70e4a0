"""The pure functions of KL-divergence weighting
(:mod:`bouquet.strategies.kl_weighted`): label histograms checked, smoothed, compared
with KL divergence, and turned into weights."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.common.logger import log

MODES = ("exp", "disco")
REFERENCES = ("pooled", "server")
DIRECTIONS = ("closer", "farther")
BAD_HISTOGRAM_RULES = ("fallback", "drop")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(
            f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}"
        )


def check_kl_settings(
    *,
    mode: str,
    tau: float,
    reference: str,
    reference_distribution: Sequence[float] | None,
    direction: str,
    bad_histogram: str,
    smoothing: float,
    num_classes: int | None,
) -> tuple[np.ndarray | None, int | None]:
    """Refuse impossible settings of
    :class:`~bouquet.strategies.kl_weighted.KLWeightedFedAvg` (``ValueError`` naming the
    setting); return the server's reference :math:`Q` (``None``: pooled) and the
    expected number of classes (default: :math:`Q`'s length)."""
    _check_choice("mode", mode, MODES)
    _check_choice("reference", reference, REFERENCES)
    _check_choice("direction", direction, DIRECTIONS)
    _check_choice("bad_histogram", bad_histogram, BAD_HISTOGRAM_RULES)
    if mode == "exp" and not tau > 0:
        raise ValueError(f"tau={tau} must be > 0")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing} must be in [0, 1)")
    q: np.ndarray | None = None
    if reference == "server":
        if reference_distribution is None:
            raise ValueError(
                "reference='server' needs reference_distribution (counts per class)"
            )
        q = smooth_distribution(reference_distribution, 0.0)
    if num_classes is None and q is not None:
        num_classes = len(q)
    if num_classes is not None and q is not None and num_classes != len(q):
        raise ValueError(
            f"num_classes={num_classes} but reference_distribution has {len(q)} entries"
        )
    return q, num_classes


def histogram_problem(value: Any, num_classes: int | None) -> str | None:
    """Why ``value`` is not a usable label histogram (``None`` if it is)."""
    if value is None:
        return "missing"
    if not isinstance(value, (list, tuple, np.ndarray)):
        return f"not a list ({type(value).__name__})"
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return "not numeric"
    if arr.ndim != 1 or (num_classes is not None and len(arr) != num_classes):
        return f"length {arr.size}, expected {num_classes}"
    if not np.all(np.isfinite(arr)):
        return "non-finite entries"
    if np.any(arr < 0):
        return "negative entries"
    with np.errstate(over="ignore"):
        total = arr.sum()
    if not np.isfinite(total):
        return "entries sum to more than a float holds"
    if total <= 0:
        return "all zero"
    return None


def smooth_distribution(
    counts: Sequence[float] | np.ndarray, smoothing: float
) -> np.ndarray:
    """Normalise ``counts`` and mix with the uniform distribution: ``(1-eps) p +
    eps/C``."""
    arr = np.asarray(counts, dtype=np.float64)
    if (
        arr.ndim != 1
        or arr.size == 0
        or not np.all(np.isfinite(arr))
        or np.any(arr < 0)
        or arr.sum() <= 0
    ):
        raise ValueError(
            f"counts={arr.tolist()} must be a non-empty 1-D list of finite values >= "
            "0, not all 0"
        )
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing} must be in [0, 1)")
    return (1.0 - smoothing) * arr / arr.sum() + smoothing / arr.size


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """:math:`D_{KL}(p \\| q)` of two distributions (terms with ``p = 0`` contribute
    0)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"p has shape {p.shape} but q has {q.shape}")
    mask = p > 0
    if np.any(q[mask] <= 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def kl_divergences(
    histograms: Sequence[Sequence[float]],
    reference: Sequence[float] | np.ndarray,
    smoothing: float,
) -> np.ndarray:
    """:math:`D_{KL}(\\tilde P_i \\| \\tilde Q)` for every histogram against
    ``reference``."""
    q = smooth_distribution(reference, smoothing)
    return np.array(
        [kl_divergence(smooth_distribution(h, smoothing), q) for h in histograms]
    )


def kl_weights(
    num_examples: Sequence[float] | np.ndarray,
    divergences: Sequence[float] | np.ndarray,
    *,
    mode: str = "exp",
    tau: float = 1.0,
    a: float = 1.0,
    b: float = 0.0,
    direction: str = "closer",
) -> np.ndarray:
    """Unnormalised aggregation weights (see the module docstring for the formulas).

    In ``exp`` mode the exponent is shifted by the smallest signed discrepancy, so equal
    divergences give exactly ``n_i ** a`` (FedAvg's weights for ``a = 1``).
    """
    _check_choice("mode", mode, MODES)
    _check_choice("direction", direction, DIRECTIONS)
    n = np.asarray(num_examples, dtype=np.float64)
    d = np.asarray(divergences, dtype=np.float64)
    if n.shape != d.shape or n.ndim != 1:
        raise ValueError(
            f"num_examples ({n.shape}) and divergences ({d.shape}) must be 1-D of "
            "equal length"
        )
    if n.size == 0:
        return n
    s = d if direction == "closer" else -d
    if mode == "exp":
        if not tau > 0:
            raise ValueError(f"tau={tau} must be > 0")
        return n**a * np.exp(-(s - s.min()) / tau)
    raw = disco_values(n, s, a, b)
    if raw.sum() <= 0:
        log(
            logging.WARNING,
            "disco weights are all zero (a=%s, b=%s): falling back to num-examples",
            a,
            b,
        )
        return n.copy()
    return raw


def disco_values(
    num_examples: np.ndarray, signed_div: np.ndarray, a: float, b: float
) -> np.ndarray:
    """FedDisco's :math:`\\mathrm{ReLU}(n_i / N - a s_i + b)` (before renormalising)."""
    n = np.asarray(num_examples, dtype=np.float64)
    return np.maximum(
        n / n.sum() - a * np.asarray(signed_div, dtype=np.float64) + b, 0.0
    )
