"""``ReplyGuard``: drop malformed train replies before they reach any strategy.

Flower's strategies trust their replies: a NaN array is averaged into the global model,
and a reply whose records differ from the others raises ``InconsistentMessageReplies``
and ends the whole run. ``ReplyGuard(strategy)`` wraps any Message-API strategy and,
before its ``aggregate_train``, drops (logs, counts, with a reason cut to
:data:`~bouquet.strategies.reports.MAX_REASON_CHARS`) every reply that

* does not answer a message sent this round from the node it went to, or answers it
  twice (identity, :class:`~bouquet.strategies.screening.SentMessages`; not checked when
  ``configure_train`` was not called on the guard);
* has no ``ArrayRecord`` or several, or array names different from the global model's;
* carries an array that is not a dense numpy array, whose shape differs from the global
  array's, whose ``.npy`` header Flower's reader would refuse, or whose values are not
  finite once cast to the global array's dtype (the *dtype rule* below);
* has not exactly one ``MetricRecord``, or a weight (``weighted_by_key``, looked up
  through Flower's DP wrappers too) that is missing, a list, not a finite number in (0,
  2**53].

Without ``configure_train`` (Flower's own strategy tests call ``aggregate_train`` alone)
there is no global model to compare with: each dense array is still parsed and checked
for finite values, and replies whose names and shapes differ from those of a strict
majority are dropped.

Metric keys never cost a reply: the keys every remaining reply holds with one kind are
kept, the others left out of the aggregated metrics (unless the inner strategy declares
``validates_metrics``, :class:`~bouquet.strategies.hooks.ValidatesMetrics`).

Dtype rule: every tensor of a reply must have the dtype of the global array the server
sent, or is cast to it when the cast is exact enough: to a floating dtype when every
cast value is finite (a float64 1e300 for a float32 model is refused, a float16 reply
for a float32 model is widened), to an integer or bool dtype when every value survives
the cast unchanged. The inner strategy therefore sees replies of the server's dtypes
only, and Flower's FedAvg gives a global model of the server's dtypes (integer tensors
become float64 as in Flower). A reply that needed a cast is passed on as a new message
(one copy of that reply's arrays).

A strategy that sends different arrays to different nodes (sub-models of an early-exit
network) declares ``validates_arrays = True``
(:class:`~bouquet.strategies.hooks.ValidatesArrays`); the guard then leaves the array
checks to it and only checks identity and weight.

Nothing is deserialised from what a reply declares: the ``.npy`` header of every dense
array is parsed and checked (shape, dtype, exact length) before a zero-copy view is
made, and any exception while checking one reply drops that reply; it never ends the
round.

Optional robustness (off by default): ``max_update_norm`` drops a reply whose update
:math:`\\lVert w_i - w \\rVert_2` exceeds an absolute bound, ``max_norm_ratio`` one
whose update norm exceeds that multiple of the round's median update norm. Both are
plain norm filters, not a Byzantine-robust aggregation.

Order: ``ReplyGuard`` checks dense arrays, so it goes *inside* ``Compressed``
(``Compressed(ReplyGuard(strategy))``: on ``Compressed``'s fast path, which never builds
dense replies, the guard's norm bounds and ``min_replies`` are applied through its
:class:`~bouquet.strategies.hooks.ReplyScreen` hooks). ``ReplyGuard(Compressed(...))``
is refused at construction, and so are Flower's XGBoost strategies (byte-array models).

A round with fewer than ``min_replies`` usable replies is skipped: the inner strategy is
not called, ``aggregate_train`` returns ``(None, None)`` and Flower's loop keeps the
current global model; the round is counted in ``rounds_skipped``.

The remaining replies go to the inner strategy unchanged (error replies pass through:
Flower's strategies skip them), so on valid replies of the server's dtypes
``ReplyGuard(FedAvg)`` gives exactly FedAvg's result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from bouquet.checks import require_integer
from bouquet.strategies.compressed import Compressed
from bouquet.strategies.decoding import finite_or_drop
from bouquet.strategies.decoding import read_dense_alone
from bouquet.strategies.decoding import single_array_record
from bouquet.strategies.dense_checks import checked_arrays
from bouquet.strategies.dense_checks import dense_update_norm
from bouquet.strategies.dense_checks import with_arrays
from bouquet.strategies.hooks import ValidatesArrays
from bouquet.strategies.hooks import ValidatesMetrics
from bouquet.strategies.reply_checking import ReplyChecking
from bouquet.strategies.reports import CLIENTS_DROPPED
from bouquet.strategies.reports import DROP_REASONS
from bouquet.strategies.reports import exception_reason
from bouquet.strategies.reports import record_drop
from bouquet.strategies.screening import majority_layout
from bouquet.strategies.screening import node_label
from bouquet.strategies.screening import reply_weight
from bouquet.strategies.screening import shared_metrics
from bouquet.strategies.wrapper import nested
from bouquet.strategies.wrapper import refuse_byte_models
from bouquet.strategies.wrapper import weight_key_of

logger = logging.getLogger(__name__)

__all__ = ["ReplyGuard"]


class ReplyGuard(ReplyChecking):
    """Wrap ``strategy`` and drop malformed train replies (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The strategy to protect (not one that contains ``Compressed``).
    weight_key : str, optional
        The weight metric (default: the ``weighted_by_key`` of the strategy, looked up
        through Flower's DP wrappers, else ``num-examples``).
    min_replies : int
        Fewer usable replies than this skip the round (global model unchanged).
    max_update_norm : float, optional
        Drop a reply whose update norm exceeds this (``None``: no bound).
    max_norm_ratio : float, optional
        Drop a reply whose update norm exceeds this multiple of the round's median
        (``None``: off).
    """

    def __init__(
        self,
        strategy: Strategy,
        weight_key: str | None = None,
        min_replies: int = 1,
        *,
        max_update_norm: float | None = None,
        max_norm_ratio: float | None = None,
    ) -> None:
        require_integer(min_replies, "simulation.min_replies", 1)
        for name, value in (
            ("max_update_norm", max_update_norm),
            ("max_norm_ratio", max_norm_ratio),
        ):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"{name}={value} must be finite and > 0 (or None: no bound)"
                )
        if any(isinstance(s, Compressed) for s in nested(strategy)):
            raise ValueError(
                "ReplyGuard(Compressed(...)) would drop every compressed reply: put "
                "the guard inside, "
                "Compressed(ReplyGuard(strategy))"
            )
        refuse_byte_models(strategy, "ReplyGuard")
        super().__init__(strategy)
        self.min_replies = min_replies
        self.max_update_norm = max_update_norm
        self.max_norm_ratio = max_norm_ratio
        self.rounds_skipped = 0
        self.weight_key: str = weight_key or weight_key_of(strategy)
        self._skipped_now = False
        self._dropped: list[str] = []

    def _inner_flag(self, hook: type, flag: str) -> bool:
        return isinstance(self.strategy, hook) and bool(getattr(self.strategy, flag))

    def filter_replies(self, replies: Iterable[Message]) -> list[Message]:
        """Keep the usable replies (and error replies); record why the others were
        dropped."""
        kept, wrong = self._sent.screen(replies)
        for msg, reason in wrong:
            self._drop(msg, reason)
        own_arrays = self._inner_flag(ValidatesArrays, "validates_arrays")
        errors = [m for m in kept if m.has_error()]
        ok: list[Message] = []
        for msg in kept:
            if msg.has_error():
                continue
            try:
                reply_weight(msg.content, self.weight_key)
                record = single_array_record(msg.content)
                cast = None
                if self._reference is not None and not own_arrays:
                    cast = checked_arrays(msg, self._reference)
                # configure_train not called: each array on its own
                elif not own_arrays:
                    for name, arr in record.items():
                        finite_or_drop(read_dense_alone(arr, name), name)
            except Exception as exc:  # noqa: BLE001 - a malformed reply is a dropped reply
                self._drop(msg, exception_reason(exc))
                continue
            ok.append(msg if cast is None else with_arrays(msg, cast))
        if self._reference is None and not own_arrays:
            ok, odd = majority_layout(ok)
            for msg, reason in odd:
                self._drop(msg, reason)
        if self._norm_bounded() and self._reference is not None and not own_arrays:
            norms = [dense_update_norm(m, self._reference) for m in ok]
            keep = set(self.screen_norms(norms))
            for i, (msg, norm) in enumerate(zip(ok, norms, strict=True)):
                if i not in keep:
                    self._drop(msg, f"update norm {norm:.4g} exceeds the guard's bound")
            ok = [m for i, m in enumerate(ok) if i in keep]
        if not self._inner_flag(ValidatesMetrics, "validates_metrics"):
            ok = shared_metrics(ok, self.weight_key, "ReplyGuard")
        return ok + errors

    def _norm_bounded(self) -> bool:
        return self.max_update_norm is not None or self.max_norm_ratio is not None

    def screen_norms(self, norms: Sequence[float]) -> list[int]:
        """Indices of the update norms within this guard's bounds (all finite ones when
        none is
        set; :class:`~bouquet.strategies.hooks.ReplyScreen`)."""
        keep = [i for i, n in enumerate(norms) if np.isfinite(n)]
        if self.max_update_norm is not None:
            keep = [i for i in keep if norms[i] <= self.max_update_norm]
        if self.max_norm_ratio is not None and keep:
            limit = self.max_norm_ratio * float(np.median([norms[i] for i in keep]))
            keep = [i for i in keep if norms[i] <= limit]
        return keep

    def admit_round(self, server_round: int, usable: int) -> bool:
        """Whether a round with ``usable`` replies is aggregated; a skipped one is
        counted and
        logged (:class:`~bouquet.strategies.hooks.ReplyScreen`)."""
        if usable >= self.min_replies:
            return True
        self.rounds_skipped += 1
        self._skipped_now = True
        log(
            logging.WARNING,
            "round %d skipped: %d usable replies < min_replies=%d; global model "
            "unchanged",
            server_round,
            usable,
            self.min_replies,
        )
        return False

    def _drop(self, msg: Message, reason: str) -> None:
        record_drop("ReplyGuard", node_label(msg), reason, self._dropped)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        kept = self.filter_replies(replies)
        if not self.admit_round(
            server_round, sum(1 for m in kept if not m.has_error())
        ):
            return None, None
        return self.strategy.aggregate_train(server_round, kept)

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {
            CLIENTS_DROPPED: len(self._dropped),
            DROP_REASONS: list(self._dropped),
        }
        if self._skipped_now:
            own["round_skipped"] = True
        self._dropped = []
        self._skipped_now = False
        return own
