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

Nothing is deserialised from what a reply declares: the ``.npy`` header of every dense array is
parsed and checked (shape, dtype, exact length) before a zero-copy view is made, and any
exception while checking one reply drops that reply; it never ends the round.

Optional robustness (off by default): ``max_update_norm`` drops a reply whose update
:math:`\\lVert w_i - w \\rVert_2` exceeds an absolute bound, ``max_norm_ratio`` one whose update
norm exceeds that multiple of the round's median update norm. Both are plain norm filters, not
a Byzantine-robust aggregation.

Order: ``ReplyGuard`` checks dense arrays, so it goes *inside* ``Compressed``
(``Compressed(ReplyGuard(strategy))``: it then sees decoded, dense replies, and on
``Compressed``'s fast path its ``min_replies`` and norm bounds are applied by ``Compressed``).
``ReplyGuard(Compressed(...))`` is refused at construction.

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
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet import keys
from bouquet.codecs.wire import sum_squares
from bouquet.strategies.decoding import (
    DENSE_STYPE,
    check_record,
    dense_view,
    reference_arrays,
    single_array_record,
)
from bouquet.strategies.reports import CLIENTS_DROPPED, DROP_REASONS
from bouquet.strategies.wrapper import StrategyWrapper, chain

logger = logging.getLogger(__name__)

__all__ = ["DENSE_STYPE", "ReplyGuard", "check_dense_reply", "check_weight", "metric_key_outliers"]


def check_dense_reply(msg: Message, reference: dict[str, np.ndarray] | None, weight_key: str = keys.NUM_EXAMPLES) -> str | None:
    """Return why ``msg`` is unusable for dense aggregation, or ``None`` if it is fine.

    ``reference`` maps array name -> the global array sent this round (``None``: only the
    records and the weight are checked).
    """
    try:
        record = single_array_record(msg.content)
        if reference is not None:
            check_record(record, reference, dense_only=True)
            for name, arr in record.items():
                value = dense_view(arr)
                if value.dtype.kind in "fc" and not np.isfinite(value.sum()) and not np.all(np.isfinite(value)):
                    return f"array {name!r} has non-finite values"
    except Exception as exc:  # noqa: BLE001 - a malformed reply is a dropped reply
        return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return check_weight(msg, weight_key)


def dense_update_norm(msg: Message, reference: dict[str, np.ndarray]) -> float:
    """:math:`\\lVert w_i - w \\rVert_2` of a reply that passed :func:`check_dense_reply`."""
    record = single_array_record(msg.content)
    return float(np.sqrt(sum(sum_squares(dense_view(arr).astype(np.float64) - reference[name])
                             for name, arr in record.items())))


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
    if weight is None or isinstance(weight, (list, bool)):
        return f"metric {weight_key!r} missing or not a number"
    if not np.isfinite(float(weight)) or float(weight) <= 0:
        return f"metric {weight_key!r}={weight} must be finite and > 0"
    return None


class ReplyGuard(StrategyWrapper):
    """Wrap ``strategy`` and drop malformed train replies (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The strategy to protect (not one that contains ``Compressed``).
    weight_key : str
        The weight metric (Flower's ``weighted_by_key``).
    min_replies : int
        Fewer usable replies than this skip the round (global model unchanged).
    max_update_norm : float, optional
        Drop a reply whose update norm exceeds this (``None``: no bound).
    max_norm_ratio : float, optional
        Drop a reply whose update norm exceeds this multiple of the round's median (``None``: off).
    """

    def __init__(self, strategy: Strategy, weight_key: str | None = None, min_replies: int = 1, *,
                 max_update_norm: float | None = None, max_norm_ratio: float | None = None) -> None:
        if min_replies < 1:
            raise ValueError(f"simulation.min_replies={min_replies} must be >= 1")
        for name, value in (("max_update_norm", max_update_norm), ("max_norm_ratio", max_norm_ratio)):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be finite and > 0 (or None: no bound)")
        inner_compressed = [type(s).__name__ for s in chain(strategy) if type(s).__name__ == "Compressed"]
        if inner_compressed:
            raise ValueError("ReplyGuard(Compressed(...)) would drop every compressed reply: put the guard inside, "
                             "Compressed(ReplyGuard(strategy))")
        super().__init__(strategy)
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.max_norm_ratio = max_norm_ratio
        self.rounds_skipped = 0
        self._skipped_now = False
        self.weight_key: str = weight_key or str(getattr(strategy, "weighted_by_key", keys.NUM_EXAMPLES))
        self._reference: dict[str, np.ndarray] | None = None
        self._dropped: list[str] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._reference = reference_arrays(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def filter_replies(self, replies: Iterable[Message]) -> list[Message]:
        """Keep the usable replies (and error replies); record why the others were dropped."""
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
        ok = [m for m in checked if not m.has_error()]
        if not getattr(self.strategy, "validates_metrics", False):
            outliers = set(map(id, metric_key_outliers(ok)))
            for msg in ok:
                if id(msg) in outliers:
                    self._drop(msg, "metric keys differ from the other replies")
            checked = [m for m in checked if id(m) not in outliers]
            ok = [m for m in ok if id(m) not in outliers]
        if self._norm_bounded() and self._reference is not None and not getattr(self.strategy, "validates_arrays", False):
            norms = [dense_update_norm(m, self._reference) for m in ok]
            keep = set(map(id, (ok[i] for i in self.norm_keep(norms))))
            for msg, norm in zip(ok, norms, strict=True):
                if id(msg) not in keep:
                    self._drop(msg, f"update norm {norm:.4g} exceeds the guard's bound")
            checked = [m for m in checked if m.has_error() or id(m) in keep]
        return checked

    def _norm_bounded(self) -> bool:
        return self.max_update_norm is not None or self.max_norm_ratio is not None

    def norm_keep(self, norms: list[float]) -> list[int]:
        """Indices of the update norms within this guard's bounds (all when none is set)."""
        keep = [i for i, n in enumerate(norms) if np.isfinite(n)]
        if self.max_update_norm is not None:
            keep = [i for i in keep if norms[i] <= self.max_update_norm]
        if self.max_norm_ratio is not None and keep:
            limit = self.max_norm_ratio * float(np.median([norms[i] for i in keep]))
            keep = [i for i in keep if norms[i] <= limit]
        return keep

    def _drop(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        log(logging.WARNING, "ReplyGuard: dropping reply from node %s: %s", node, reason)
        self._dropped.append(f"node {node}: {reason}")

    def skip_round(self, server_round: int, usable: int) -> None:
        """Count and log a round skipped for too few usable replies (also called by
        ``Compressed``'s fast path, which looks through the guard)."""
        self.rounds_skipped += 1
        self._skipped_now = True
        log(logging.WARNING, "round %d skipped: %d usable replies < min_replies=%d; global model unchanged",
            server_round, usable, self.min_replies)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        kept = self.filter_replies(replies)
        usable = sum(1 for m in kept if not m.has_error())
        if usable < self.min_replies:
            self.skip_round(server_round, usable)
            return None, None
        return self.strategy.aggregate_train(server_round, kept)

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {CLIENTS_DROPPED: len(self._dropped), DROP_REASONS: list(self._dropped)}
        if self._skipped_now:
            own["round_skipped"] = True
        self._dropped = []
        self._skipped_now = False
        return own


def within_norm_bounds(norms: list[float], guards: list[ReplyGuard]) -> list[int]:
    """Indices of the update ``norms`` within every guard's norm bounds (all when no guard)."""
    keep = list(range(len(norms)))
    for guard in guards:
        keep = [keep[i] for i in guard.norm_keep([norms[j] for j in keep])]
    return keep
