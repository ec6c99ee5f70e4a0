"""The learner side of S4's sliding window: a client mod that scales the local learning
rate.

Method S4 (asynchronous training with sliding-window staleness sampling): *each learner*
keeps a sliding window of its own recent staleness samples, computes a staleness context
value from it, adjusts its learning rate, and sends the update; the server applies it
with that rate. The learner cannot know the staleness of the update it is about to
compute (that is fixed only when the server applies it), so the server tells it the
staleness of its previous *applied* update: every train message of
:class:`~bouquet.strategies.async_fedavg.AsyncFedAvg` (with ``window_side="learner"``)
carries ``applied-updates`` :math:`k` (how many of this node's updates were applied so
far) and, once :math:`k \\ge 1`, ``prev-staleness`` :math:`\\tau_k` (the staleness of
the :math:`k`-th).

:func:`staleness_window_mod` keeps the node's last :math:`W` samples in
``context.state`` (a ``ConfigRecord`` under ``keys.STALENESS_WINDOW``). When :math:`k`
grows, the new sample :math:`\\tau_k` is scaled against the context value of the samples
before it, then joins the window:

.. math::
    c = \\operatorname{mean}(\\tau_{k-W}, \\dots, \\tau_{k-1}) \\;\\text{(or their
        median)}, \\qquad
    s = \\min\\Big(s_{max}, \\Big(\\frac{1 + c}{1 + \\tau_k}\\Big)^{a}\\Big), \\qquad
    \\eta_{local} = s \\, \\eta

(:math:`s = \\min(s_{max}, 1)` while the window is empty). The learner trains with
:math:`\\eta_{local}` and reports :math:`s` in its train reply (``lr-scale``). A message
whose :math:`k` did not grow (the previous update was rejected or lost, or it is the
node's first) adds no sample and reuses the last scale. This is the server-side rule of
:mod:`bouquet.strategies.staleness` with :math:`\\tau_k` as the learner's estimate of
the staleness of its next update. **Our reading** where the source is silent: using the
last applied update's staleness as that estimate, comparing it with the context of the
*earlier* samples, the ratio form and its cap :math:`s_{max}`, and that the server sends
the sample (it is the one that knows :math:`\\tau`).

The reply also echoes the ``model-version``, ``prev-staleness`` and ``applied-updates``
it was sent, so that the server can reject a scale computed for another message.
"""

from __future__ import annotations

import logging
import math
from typing import Any
from typing import TypeGuard

from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.clientapp.typing import ClientAppCallable  # Flower's own client-mod type
from flwr.clientapp.typing import Mod  # Flower's own client-mod type

from bouquet import keys
from bouquet.checks import require_integer
from bouquet.clients.bridge import single_record
from bouquet.staleness_window import CONTEXTS
from bouquet.staleness_window import DEFAULT_WINDOW
from bouquet.staleness_window import staleness_context
from bouquet.staleness_window import window_scale

logger = logging.getLogger(__name__)


def window_context(samples: list[float], kind: str = "mean") -> float | None:
    """The staleness context value of ``samples``: their mean or median (``None`` if
    empty; an
    unknown ``kind`` is refused even then)."""
    if kind not in CONTEXTS:
        raise ValueError(f"context={kind!r} is unknown; allowed: {', '.join(CONTEXTS)}")
    return staleness_context(samples, kind)


def _number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float (not a bool)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _count(config: Any, key: str) -> int | None:
    """A non-negative integer of the train config (``None`` if absent)."""
    value = config.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or value != int(value)
    ):
        raise ValueError(f"train config {key}={value!r} must be an integer >= 0")
    return int(value)


class LearnerWindow:
    """A node's staleness window as kept in ``context.state`` (samples, last count, last
    scale)."""

    def __init__(self, samples: list[float], count: int, scale: float | None) -> None:
        self.samples = samples
        self.count = count
        self.scale = scale

    @classmethod
    def load(cls, context: Context, key: str) -> LearnerWindow:
        """The window stored under ``key`` (an empty one if absent or unreadable)."""
        record = context.state.config_records.get(key) if key in context.state else None
        if record is None:
            return cls([], 0, None)
        samples, count, scale = (
            record.get("samples", []),
            record.get("count", 0),
            record.get("scale", -1.0),
        )
        values = (
            [float(v) for v in samples if _number(v) and v >= 0]
            if isinstance(samples, list)
            else []
        )
        if (
            not isinstance(samples, list)
            or len(values) != len(samples)
            or not isinstance(count, int)
            or isinstance(count, bool)
            or count < 0
            or not isinstance(scale, (int, float))
            or isinstance(scale, bool)
            or not math.isfinite(scale)
        ):
            logger.warning(
                "context.state[%r] is not a staleness window; starting a new one", key
            )
            return cls([], 0, None)
        return cls(values, count, float(scale) if scale >= 0 else None)

    def save(self, context: Context, key: str) -> None:
        context.state[key] = ConfigRecord(
            {
                "samples": [float(s) for s in self.samples],
                "count": int(self.count),
                "scale": -1.0 if self.scale is None else float(self.scale),
            }
        )


def staleness_window_mod(
    *,
    window: int = DEFAULT_WINDOW,
    context: str = "mean",
    exponent: float = 1.0,
    max_scale: float = 1.0,
    base_lr: float | None = None,
    scale_lr: bool = True,
    state_key: str = keys.STALENESS_WINDOW,
) -> Mod:
    """A Flower client mod: the learner-side sliding window of S4 (see the module
    docstring).

    Parameters
    ----------
    window : int
        :math:`W`, staleness samples kept (>= 1).
    context : str
        ``mean`` or ``median`` of the window.
    exponent : float
        :math:`a` (>= 0).
    max_scale : float
        :math:`s_{max}` (> 0); 1 never raises the learning rate.
    base_lr : float, optional
        :math:`\\eta` when the train config has no ``lr`` (``lr`` in the config wins). A
        train message with neither fails (the scale would silently not act).
    scale_lr : bool
        Rewrite ``lr`` in the train config to :math:`s \\eta` (False: only report
        :math:`s` and let the server apply it).
    state_key : str
        ``context.state`` key of the window.

    Returns
    -------
    callable
        ``mod(msg, context, call_next) -> Message``. Train messages without
        ``applied-updates`` (not from the asynchronous strategy) and other message types
        pass through untouched.
    """
    require_integer(window, "window", 1)
    if context not in CONTEXTS:
        raise ValueError(
            f"context={context!r} is unknown; allowed: {', '.join(CONTEXTS)}"
        )
    if not exponent >= 0:
        raise ValueError(f"exponent={exponent} must be >= 0")
    if not max_scale > 0:
        raise ValueError(f"max_scale={max_scale} must be > 0")
    if base_lr is not None and not base_lr > 0:
        raise ValueError(f"base_lr={base_lr} must be > 0 or None")

    def _mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctx)
        config = single_record(msg.content, "config", keys.CONFIG)
        count = _count(config, keys.APPLIED_UPDATES)
        if count is None:
            return call_next(msg, ctx)
        prev = _count(config, keys.PREV_STALENESS)
        version = _count(config, keys.MODEL_VERSION)
        if count > 0 and prev is None:
            raise ValueError(
                f"train config has {keys.APPLIED_UPDATES}={count} but no "
                f"{keys.PREV_STALENESS}"
            )
        state = LearnerWindow.load(ctx, state_key)
        if count < state.count:  # a new run on a node that kept its state: start over
            logger.info(
                "applied-updates %d < %d in the window: a new window",
                count,
                state.count,
            )
            state = LearnerWindow([], 0, None)
        if count > state.count and prev is not None:
            state.scale = window_scale(
                prev, window_context(state.samples, context), exponent, max_scale
            )
            state.samples = [*state.samples, float(prev)][-window:]
            state.count = count
        scale = state.scale if state.scale is not None else min(max_scale, 1.0)
        state.save(ctx, state_key)
        if scale_lr:
            lr = config.get(keys.LR, base_lr)
            if lr is None:
                raise ValueError(
                    f"staleness_window_mod needs the learning rate: {keys.LR!r} in "
                    "the train config or base_lr"
                )
            config[keys.LR] = float(lr) * scale
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        echo: dict[str, Any] = {
            keys.LR_SCALE: float(scale),
            keys.APPLIED_UPDATES: count,
        }
        if prev is not None:
            echo[keys.PREV_STALENESS] = prev
        if version is not None:
            echo[keys.MODEL_VERSION] = version
        metrics = reply.content.metric_records
        if not metrics:
            reply.content[keys.METRICS] = MetricRecord(echo)
        else:
            record = (
                metrics[keys.METRICS]
                if keys.METRICS in metrics
                else next(iter(metrics.values()))
            )
            for k, v in echo.items():
                record[k] = v
        return reply

    return _mod
