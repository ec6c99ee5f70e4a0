"""Pure rules and settings of the asynchronous loop
(:mod:`~bouquet.strategies.async_fedavg`).

The update rules :func:`mix` (FedAsync, Xie et al. 2019) and :func:`buffered_step`
(FedBuff, Nguyen et al. 2022), the convergence test :func:`plateaued` with its default
window :func:`plateau_evaluations`, the loop's frozen settings :class:`AsyncSettings`
(all of :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg`'s keyword arguments but
the staleness policy's and the decoder) and :func:`check_settings`, which refuses
impossible ones (``window_side`` in :data:`WINDOW_SIDES`, ``learner_rate`` in
:data:`LEARNER_RATES`, ...). No state, no messages: tests call these directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import fields
from typing import Any
from typing import TypeVar

import numpy as np

Arrays = dict[str, np.ndarray]
T = TypeVar("T")

# where the sliding window lives (policy=sliding_window)
WINDOW_SIDES = ("learner", "server")
LEARNER_RATES = ("both", "local", "server")  # where a learner-reported scale acts


PLATEAU_MIN_EVALUATIONS = (
    5  # the default plateau window: at least this many evaluations ...
)
PLATEAU_UPDATES_PER_NODE = 5  # ... and at least this many updates per node


def plateau_evaluations(window: int | None, num_nodes: int, eval_every: int) -> int:
    """Evaluations without gain after which the run stops (``0``: never).

    ``window`` if set, else the default
    :math:`\\max(5, \\lceil 5 N / E \\rceil)` for :math:`N` nodes evaluated every
    :math:`E` updates: at least 5 evaluations and at least 5 updates per node (five
    rounds' worth of client work) without a gain.
    """
    if window is not None:
        return int(window)
    per_node = math.ceil(
        PLATEAU_UPDATES_PER_NODE * max(1, num_nodes) / max(1, eval_every)
    )
    return max(PLATEAU_MIN_EVALUATIONS, per_node)


def plateaued(
    history: list[float], window: int, min_delta: float, mode: str = "max"
) -> bool:
    """Whether the metric stopped improving.

    True when ``window > 0``, there are more than ``window`` values, and the best of the
    last ``window`` values is not better than the best before them by at least
    ``min_delta`` (``mode="max"``: higher is better, e.g. accuracy; ``"min"``: lower is
    better, e.g. loss).
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
    return {
        k: (
            current[k] + rate * (client[k].astype(current[k].dtype) - current[k])
        ).astype(current[k].dtype)
        for k in current
    }


def buffered_step(
    current: Arrays, deltas: list[Arrays], scales: list[float], server_lr: float
) -> Arrays:
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


@dataclass(frozen=True, kw_only=True)
class AsyncSettings:
    """The settings of :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg`'s loop (see
    its parameters), checked by :func:`check_settings` and then normalised (``alpha`` a
    float, ``eval_every`` an int, ...) when built. Frozen: a run's settings never
    change."""

    alpha: float = 0.6
    window_side: str = "learner"
    learner_rate: str = "both"
    max_updates: int | None = None
    max_wall_s: float | None = None
    eval_every: int = 10
    plateau_window: int | None = None
    plateau_min_delta: float = 0.001
    plateau_metric: str = "accuracy"
    plateau_mode: str = "max"
    reply_timeout_s: float | None = None
    max_node_failures: int = 3
    poll_interval_s: float = 0.02

    def __post_init__(self) -> None:
        check_settings(self)
        # reply_timeout_s and the strings are kept as given
        normal = {
            "alpha": float(self.alpha),
            "max_updates": None if self.max_updates is None else int(self.max_updates),
            "max_wall_s": None if self.max_wall_s is None else float(self.max_wall_s),
            "eval_every": int(self.eval_every),
            "plateau_window": None
            if self.plateau_window is None
            else int(self.plateau_window),
            "plateau_min_delta": float(self.plateau_min_delta),
            "max_node_failures": int(self.max_node_failures),
            "poll_interval_s": float(self.poll_interval_s),
        }
        for name, value in normal.items():
            object.__setattr__(self, name, value)


def check_settings(s: AsyncSettings) -> None:
    """``ValueError`` naming the first impossible :class:`AsyncSettings` value (as
    given)."""
    if not 0.0 < s.alpha <= 1.0:
        raise ValueError(f"alpha={s.alpha} must be in (0, 1]")
    for name, value in (
        ("max_updates", s.max_updates),
        ("max_wall_s", s.max_wall_s),
        ("reply_timeout_s", s.reply_timeout_s),
    ):
        if value is not None and not value > 0:
            raise ValueError(f"{name}={value} must be > 0 or null")
    if int(s.eval_every) < 1:
        raise ValueError(f"eval_every={s.eval_every} must be >= 1")
    if s.plateau_window is not None and int(s.plateau_window) < 0:
        raise ValueError(
            f"plateau_window={s.plateau_window} must be >= 0 (0 = off) or None (the "
            "default window)"
        )
    if not 0.0 <= s.plateau_min_delta < float("inf"):
        raise ValueError(
            f"plateau_min_delta={s.plateau_min_delta} must be a finite number >= 0"
        )
    if s.plateau_mode not in ("max", "min"):
        raise ValueError(
            f"plateau_mode={s.plateau_mode!r} is unknown; allowed: max, min"
        )
    if s.window_side not in WINDOW_SIDES:
        raise ValueError(
            f"window_side={s.window_side!r} is unknown; allowed: "
            f"{', '.join(WINDOW_SIDES)}"
        )
    if s.learner_rate not in LEARNER_RATES:
        raise ValueError(
            f"learner_rate={s.learner_rate!r} is unknown; allowed: "
            f"{', '.join(LEARNER_RATES)}"
        )
    if int(s.max_node_failures) < 1:
        raise ValueError(f"max_node_failures={s.max_node_failures} must be >= 1")


class Setting:
    """A read-only attribute that shows the field ``name`` of its object's ``settings``
    (``strategy.alpha`` is ``strategy.settings.alpha``); setting it is refused (they are
    frozen)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.settings, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(
            f"{type(obj).__name__}.{self.name} is a frozen setting (of its "
            f"{type(obj.settings).__name__}); "
            "build a new strategy with the value you want"
        )


def show_settings(cls: type[T]) -> type[T]:
    """Class decorator: every :class:`AsyncSettings` field becomes a read-only
    :class:`Setting`
    attribute of ``cls`` (whose instances have ``settings``)."""
    for field in fields(AsyncSettings):
        setattr(cls, field.name, Setting(field.name))
    return cls
