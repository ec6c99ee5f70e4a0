"""Pure rules of the asynchronous loop (:mod:`~bouquet.strategies.async_fedavg`).

The update rules :func:`mix` (FedAsync, Xie et al. 2019) and :func:`buffered_step` (FedBuff,
Nguyen et al. 2022), the convergence test :func:`plateaued` with its default window
:func:`plateau_evaluations`, and :func:`check_settings`, which refuses impossible
:class:`~bouquet.strategies.async_fedavg.AsyncFedAvg` settings (``window_side`` in
:data:`WINDOW_SIDES`, ``learner_rate`` in :data:`LEARNER_RATES`, ...). No state, no messages:
tests call these directly.
"""

from __future__ import annotations

import math

import numpy as np

Arrays = dict[str, np.ndarray]

WINDOW_SIDES = ("learner", "server")  # where the sliding window lives (policy=sliding_window)
LEARNER_RATES = ("both", "local", "server")  # where a learner-reported scale acts


PLATEAU_MIN_EVALUATIONS = 5  # the default plateau window: at least this many evaluations ...
PLATEAU_UPDATES_PER_NODE = 5  # ... and at least this many updates per node


def plateau_evaluations(window: int | None, num_nodes: int, eval_every: int) -> int:
    """Evaluations without gain after which the run stops (``0``: never).

    ``window`` if set, else the default
    :math:`\\max(5, \\lceil 5 N / E \\rceil)` for :math:`N` nodes evaluated every :math:`E`
    updates: at least 5 evaluations and at least 5 updates per node (five rounds' worth of
    client work) without a gain.
    """
    if window is not None:
        return int(window)
    per_node = math.ceil(PLATEAU_UPDATES_PER_NODE * max(1, num_nodes) / max(1, eval_every))
    return max(PLATEAU_MIN_EVALUATIONS, per_node)


def plateaued(history: list[float], window: int, min_delta: float, mode: str = "max") -> bool:
    """Whether the metric stopped improving.

    True when ``window > 0``, there are more than ``window`` values, and the best of the last
    ``window`` values is not better than the best before them by at least ``min_delta``
    (``mode="max"``: higher is better, e.g. accuracy; ``"min"``: lower is better, e.g. loss).
    """
    if window <= 0 or len(history) <= window:
        return False
    before, recent = history[:-window], history[-window:]
    if mode == "max":
        return max(recent) - max(before) < min_delta
    if mode == "min":
        return min(before) - min(recent) < min_delta
    raise ValueError(f"mode={mode!r} is unknown; allowed: max, min")


def mix(current: Arrays, client: Arrays, rate: float) -> Arrays:
    """FedAsync mixing :math:`(1 - r) x + r y` per array."""
    return {k: (current[k] + rate * (client[k].astype(current[k].dtype) - current[k])).astype(current[k].dtype) for k in current}


def buffered_step(current: Arrays, deltas: list[Arrays], scales: list[float], server_lr: float) -> Arrays:
    """FedBuff step :math:`x + \\eta_g \\frac{1}{K} \\sum_i s_i \\Delta_i`."""
    if not deltas:
        return current
    out = {}
    for k, v in current.items():
        acc = np.zeros_like(v, dtype=np.float64)
        for d, s in zip(deltas, scales, strict=True):
            acc += s * d[k]
        out[k] = (v + server_lr * acc / len(deltas)).astype(v.dtype)
    return out


def check_settings(*, alpha: float, max_updates: int | None, max_wall_s: float | None, reply_timeout_s: float | None,
                   eval_every: int, plateau_window: int | None, plateau_min_delta: float, plateau_mode: str,
                   window_side: str, learner_rate: str, max_node_failures: int) -> None:
    """``ValueError`` naming the first impossible :class:`AsyncFedAvg` setting."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in (0, 1]")
    for name, value in (("max_updates", max_updates), ("max_wall_s", max_wall_s), ("reply_timeout_s", reply_timeout_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}={value} must be > 0 or null")
    if int(eval_every) < 1:
        raise ValueError(f"eval_every={eval_every} must be >= 1")
    if plateau_window is not None and int(plateau_window) < 0:
        raise ValueError(f"plateau_window={plateau_window} must be >= 0 (0 = off) or None (the default window)")
    if not 0.0 <= plateau_min_delta < float("inf"):
        raise ValueError(f"plateau_min_delta={plateau_min_delta} must be a finite number >= 0")
    if plateau_mode not in ("max", "min"):
        raise ValueError(f"plateau_mode={plateau_mode!r} is unknown; allowed: max, min")
    if window_side not in WINDOW_SIDES:
        raise ValueError(f"window_side={window_side!r} is unknown; allowed: {', '.join(WINDOW_SIDES)}")
    if learner_rate not in LEARNER_RATES:
        raise ValueError(f"learner_rate={learner_rate!r} is unknown; allowed: {', '.join(LEARNER_RATES)}")
    if int(max_node_failures) < 1:
        raise ValueError(f"max_node_failures={max_node_failures} must be >= 1")
