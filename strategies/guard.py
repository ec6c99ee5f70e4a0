"""``ReplyGuard``: drop malformed train replies before they reach any strategy.

Flower's strategies trust their replies: a NaN array is averaged into the global model, and a
reply whose records differ from the others raises ``InconsistentMessageReplies`` and ends the
whole run. ``ReplyGuard(strategy)`` wraps any Message-API strategy and, before its
``aggregate_train``, drops (logs, counts) every reply that

* has no ``ArrayRecord`` or several, or array names different from the global model's;
* carries an array that is not a dense numpy array, or whose shape differs from the global
  array's, or that holds non-finite values;
* has not exactly one ``MetricRecord``, or a weight (``num-examples``) that is missing,
  a list, non-finite or <= 0;
* has metric keys that differ from the most common key set of the round (only when the inner
  strategy does not declare ``validates_metrics = True``, i.e. handles such replies itself).

A strategy that sends different arrays to different nodes (e.g. sub-models of an early-exit
network) declares ``validates_arrays = True``; the guard then leaves the array checks to it and
only checks the weight.

A round with fewer than ``min_replies`` usable replies is skipped: the inner strategy is not
called, ``aggregate_train`` returns ``(None, None)`` and Flower's loop keeps the current global
model; the round is counted in ``rounds_skipped``.

The remaining replies go to the inner strategy unchanged; error replies pass through (Flower's
strategies skip them). The guard never changes a valid reply, so ``ReplyGuard(FedAvg)`` gives
exactly FedAvg's result on valid input.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet import keys
from bouquet.strategies.reports import CLIENTS_DROPPED, DROP_REASONS
from bouquet.strategies.wrapper import StrategyWrapper

logger = logging.getLogger(__name__)

DENSE_STYPE = "numpy.ndarray"


def check_dense_reply(
    msg: Message, reference: dict[str, tuple[tuple[int, ...], str]] | None, weight_key: str = keys.NUM_EXAMPLES
) -> str | None:
    """Return why ``msg`` is unusable for dense aggregation, or ``None`` if it is fine.

    ``reference`` maps array name -> (shape, dtype) of the global model sent this round.
    """
    content = msg.content
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    record = next(iter(content.array_records.values()))
    if reference is not None and set(record.keys()) != set(reference):
        missing = sorted(set(reference) - set(record.keys()))[:3]
        extra = sorted(set(record.keys()) - set(reference))[:3]
        return f"array names differ from the global model (missing {missing}, extra {extra})"
    for name, arr in record.items():
        if arr.stype != DENSE_STYPE:
            return f"array {name!r} has stype {arr.stype!r}, not a dense numpy array"
        try:
            value = arr.numpy()
        except Exception as exc:  # malformed bytes
            return f"array {name!r} cannot be read: {exc}"
        if reference is not None and tuple(value.shape) != tuple(reference[name][0]):
            return f"array {name!r} has shape {value.shape}, expected {reference[name][0]}"
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            return f"array {name!r} has non-finite values"
    return check_weight(msg, weight_key)


def metric_key_outliers(replies: list[Message]) -> list[Message]:
    """Replies whose MetricRecord keys differ from the round's most common key set.

    Flower's FedAvg raises ``InconsistentMessageReplies`` (and ends the run) when metric keys
    differ between replies; dropping the outliers keeps the round going.
    """
    key_sets = [frozenset(next(iter(m.content.metric_records.values())).keys()) for m in replies]
    if len(set(key_sets)) <= 1:
        return []
    common = Counter(key_sets).most_common(1)[0][0]
    return [m for m, ks in zip(replies, key_sets, strict=True) if ks != common]


def check_weight(msg: Message, weight_key: str = keys.NUM_EXAMPLES) -> str | None:
    """Return why the reply's single MetricRecord / weight is unusable, or ``None``."""
    content = msg.content
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(weight_key)
    if weight is None or isinstance(weight, list):
        return f"metric {weight_key!r} missing or a list"
    if not np.isfinite(float(weight)) or float(weight) <= 0:
        return f"metric {weight_key!r}={weight} must be finite and > 0"
    return None


class ReplyGuard(StrategyWrapper):
    """Wrap ``strategy`` and drop malformed train replies (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The strategy to protect.
    weight_key : str
        The weight metric (Flower's ``weighted_by_key``).
    min_replies : int
        Fewer usable replies than this skip the round (global model unchanged).
    """

    def __init__(self, strategy: Strategy, weight_key: str | None = None, min_replies: int = 1) -> None:
        if min_replies < 1:
            raise ValueError(f"simulation.min_replies={min_replies} must be >= 1")
        super().__init__(strategy)
        self.min_replies = min_replies
        self.rounds_skipped = 0
        self._skipped_now = False
        self.weight_key = weight_key or getattr(strategy, "weighted_by_key", keys.NUM_EXAMPLES)
        self._reference: dict[str, tuple[tuple[int, ...], str]] | None = None
        self._dropped: list[str] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._reference = {k: (tuple(v.shape), v.dtype) for k, v in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def filter_replies(self, replies: Iterable[Message]) -> list[Message]:
        """Keep the usable replies (and error replies); record why the others were dropped."""
        replies = list(replies)
        checked: list[Message] = []
        for msg in replies:
            if msg.has_error():
                checked.append(msg)
                continue
            if getattr(self.strategy, "validates_arrays", False):
                reason = check_weight(msg, self.weight_key)
            else:
                reason = check_dense_reply(msg, self._reference, self.weight_key)
            if reason is None:
                checked.append(msg)
            else:
                self._drop(msg, reason)
        if getattr(self.strategy, "validates_metrics", False):
            return checked
        ok = [m for m in checked if not m.has_error()]
        outliers = set(map(id, metric_key_outliers(ok)))
        for msg in ok:
            if id(msg) in outliers:
                self._drop(msg, "metric keys differ from the other replies")
        checked = [m for m in checked if id(m) not in outliers]
        return checked

    def _drop(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        logger.warning("dropping reply from node %s: %s", node, reason)
        self._dropped.append(f"node {node}: {reason}")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        kept = self.filter_replies(replies)
        usable = sum(1 for m in kept if not m.has_error())
        if usable < self.min_replies:
            self.rounds_skipped += 1
            self._skipped_now = True
            logger.warning(
                "round %d skipped: %d usable replies < min_replies=%d; global model unchanged",
                server_round,
                usable,
                self.min_replies,
            )
            return None, None
        return self.strategy.aggregate_train(server_round, kept)

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {CLIENTS_DROPPED: len(self._dropped), DROP_REASONS: list(self._dropped)}
        if self._skipped_now:
            own["round_skipped"] = True
        self._dropped = []
        self._skipped_now = False
        return own
