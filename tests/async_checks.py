"""The sliding window's scales computed by hand from an asynchronous run's
``metrics.jsonl``.

Every line of an ``AsyncFedAvg`` run carries ``update_log``: one ``[node id, staleness,
scale]`` per update accepted since the previous line, in order. From the staleness
alone, these functions recompute the scale each update must have been applied with (S4's
rule with the mean as the context,
:math:`s = \\min(s_{max}, ((1 + c) / (1 + \\tau))^a)`, 1 while the window is empty), so
a test can compare them with the scales the run reports. They assume a run without
rejected replies (every message's update was accepted), as the end-to-end tests check.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def update_log(rows: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """Every accepted update of the run, in order: ``(node id, staleness, scale)``."""
    return [
        (int(n), int(t), float(s))
        for row in rows
        for n, t, s in row.get("update_log") or []
    ]


def _scale(
    sample: float, before: list[float], window: int, exponent: float, max_scale: float
) -> float:
    recent = before[-window:]
    if not recent:
        return min(max_scale, 1.0)
    return min(
        max_scale, ((1.0 + sum(recent) / len(recent)) / (1.0 + sample)) ** exponent
    )


def learner_scales(
    log: list[tuple[int, int, float]],
    window: int,
    exponent: float = 1.0,
    max_scale: float = 1.0,
) -> list[float]:
    """The scale of each update with the window on the learners.

    A node's ``k``-th message (0-based) carries the staleness :math:`\\tau_{k-1}` of its
    previous update; the learner scales it against the mean of the samples before it
    (its own earlier staleness values), then keeps it: so its ``k``-th update has scale
    1 for ``k <= 1``.
    """
    taus: dict[int, list[float]] = defaultdict(list)
    out = []
    for node, tau, _ in log:
        mine = taus[node]
        out.append(
            _scale(mine[-1], mine[:-1], window, exponent, max_scale)
            if mine
            else min(max_scale, 1.0)
        )
        mine.append(float(tau))
    return out


def server_scales(
    log: list[tuple[int, int, float]],
    window: int,
    per_node: bool,
    exponent: float = 1.0,
    max_scale: float = 1.0,
) -> list[float]:
    """The scale of each update with the window on the server: its own staleness against
    the mean
    of the node's earlier samples (``per_node``) or of the federation's."""
    taus: dict[int | None, list[float]] = defaultdict(list)
    out = []
    for node, tau, _ in log:
        samples = taus[node if per_node else None]
        out.append(_scale(float(tau), samples, window, exponent, max_scale))
        samples.append(float(tau))
    return out
