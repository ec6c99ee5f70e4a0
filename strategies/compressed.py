"""``Compressed``: decode compressed client updates for any Message-API strategy.

Clients (``bouquet.clients.compressed``) or a client mod (``compression_mod``) upload
the *update* :math:`u_i = w_i - w` of client :math:`i` against the global arrays
:math:`w` that the server sent, encoded per tensor (``bouquet.topk/1``,
``bouquet.ternary/1``, ``bouquet.stc/1``, ``bouquet.dense/1``; see
:mod:`bouquet.codecs.wire`). An array with Flower's dense stype (``numpy.ndarray``) is
read as full local weights, :math:`u_i = w_i - w`, so uncompressed clients can join.

``Compressed(strategy, server_lr=eta)`` remembers :math:`w` in ``configure_train`` and
decodes every reply in ``aggregate_train``. The inner strategy receives dense replies
holding

.. math::

    \\hat w_i = w + \\eta\\, \\hat u_i

(:math:`\\hat u_i` the decoded update), so it composes with any aggregation rule
(FedAvg, FedProx, FedAdam, FedMedian, Krum, Flower's DP wrappers, bouquet's strategies).
A reply whose arrays are all dense is handed on as it came when :math:`\\eta = 1` (no
rebuilt copy, so a float16 model's replies keep their bits), and then needs no
:math:`w`: ``aggregate_train`` works without ``configure_train`` (as Flower's strategies
do) on dense replies, checked against each other (names and shapes held by a strict
majority of them, finite values); a compressed reply with no :math:`w` to decode against
is dropped with that reason.

Weighted-mean family (Flower's ``FedAvg.aggregate_train`` unchanged, e.g. FedAvg and
FedProx, or a strategy offering :class:`~bouquet.strategies.hooks.ReplyWeights`): the
wrapper aggregates directly, without a dense copy per client,

.. math::

    w' = w + \\eta\\, \\sum_i c_i \\hat u_i, \\qquad
    c_i = \\frac{n_i / \\max_j n_j}{\\sum_k n_k / \\max_j n_j},

which equals FedAvg over the :math:`\\hat w_i`; it costs
:math:`O(\\sum_i |\\text{payload}_i| + |w|)` time and :math:`O(|w|)` memory (sparse
updates are added at their indices, straight into the output bytes). Wrappers offering
:class:`~bouquet.strategies.hooks.ReplyScreen` (``ReplyGuard``) are looked through:
their norm bounds and ``min_replies`` are applied through that protocol. Train metrics
are aggregated by the inner strategy's ``train_metrics_aggr_fn``.

Dtypes: without a screen, Flower's FedAvg rule (a tensor of the aggregate takes the
dtype of the first accepted reply's tensor, float64 for integer ones; compressed arrays
carry the global array's dtype), except that a reply never narrows a tensor below the
dtype the server sent (a float16 reply listed first does not make the float32 replies
after it overflow); behind a screen, the screen's rule (the server's dtypes).

Every reply is hostile (:mod:`bouquet.strategies.decoding`,
:mod:`bouquet.strategies.screening`): identity (one reply per message sent this round,
from its node), names, shapes, dtypes and lengths are checked before anything is
allocated, decoding is bounded by the payload's bytes and the model size, an update
whose values could overflow the aggregate's dtype
(:math:`|\\eta \\hat u_i| > 0.45\\,\\max`) is refused, and *any* exception while reading
one reply drops that reply (logged at WARNING through Flower's logger with the node id
and a reason cut to 300 characters, counted in ``round_report()["clients_dropped"]``);
the round goes on with the others. Weights are normalised without overflow. Differing
metric keys cost no reply: only the keys every accepted reply shares are aggregated.

Server momentum is not this wrapper's job: :class:`~bouquet.strategies.ServerMomentum`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import Strategy

from bouquet.checks import require_number
from bouquet.strategies.accumulate import npy_array
from bouquet.strategies.client_errors import log_client_error
from bouquet.strategies.decoding import DENSE_STYPE
from bouquet.strategies.decoding import aggregate_dtype
from bouquet.strategies.decoding import check_overflow
from bouquet.strategies.decoding import check_record
from bouquet.strategies.decoding import decode_record
from bouquet.strategies.decoding import dense_view
from bouquet.strategies.decoding import finite_or_drop
from bouquet.strategies.decoding import read_dense_alone
from bouquet.strategies.decoding import single_array_record
from bouquet.strategies.hooks import ValidatesMetrics
from bouquet.strategies.hooks import weighted_mean_chain
from bouquet.strategies.reply_checking import ReplyChecking
from bouquet.strategies.reports import BYTES_UP
from bouquet.strategies.reports import CLIENTS_DROPPED
from bouquet.strategies.reports import DENSE_BYTES
from bouquet.strategies.reports import DROP_REASONS
from bouquet.strategies.reports import DROPPED
from bouquet.strategies.reports import exception_reason
from bouquet.strategies.reports import payload_bytes
from bouquet.strategies.reports import record_drop
from bouquet.strategies.screening import majority_layout
from bouquet.strategies.screening import node_label
from bouquet.strategies.screening import reply_weight
from bouquet.strategies.screening import shared_metrics
from bouquet.strategies.sparse_mean import SparseWeightedMean
from bouquet.strategies.wrapper import log_summary
from bouquet.strategies.wrapper import refuse_byte_models
from bouquet.strategies.wrapper import refuse_twice
from bouquet.strategies.wrapper import weight_key_of

__all__ = ["Compressed"]


class Compressed(ReplyChecking):
    """Decode compressed updates around ``strategy`` (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message-API strategy (put ``ReplyGuard`` inside:
        ``Compressed(ReplyGuard(s))``).
    server_lr : float
        :math:`\\eta`, the step applied to the decoded update (1.0: the clients'
        weights).
    fast_path : bool
        Use the sparse weighted-mean aggregation when the inner strategy allows it.
    """

    def __init__(
        self, strategy: Strategy, server_lr: float = 1.0, *, fast_path: bool = True
    ) -> None:
        require_number(server_lr, "server_lr", "(0, inf)")
        refuse_twice(strategy, Compressed, "wrap a strategy in Compressed once")
        refuse_byte_models(strategy, "Compressed")
        super().__init__(strategy)
        self.server_lr = float(server_lr)
        self.fast_path = bool(fast_path)
        self.last_path = ""
        self._dropped: list[str] = []
        # set-up mistakes behind client errors, logged once
        self._explained: set[str] = set()

    def summary(self) -> None:
        log_summary(self, f"Compressed(server_lr={self.server_lr})")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        replies = list(replies)
        received, dense = payload_bytes(replies, self._reference)
        kept, wrong = self._sent.screen(replies)
        for msg, reason in wrong:
            self._drop(msg, reason)
        errors = [m for m in kept if m.has_error()]
        candidates = self._candidates([m for m in kept if not m.has_error()])
        base, screens = (
            weighted_mean_chain(self.strategy)
            if self.fast_path and self._reference is not None
            else (None, [])
        )
        if base is not None:
            self.last_path = "fast"
            mean = SparseWeightedMean(
                self._reference, self.server_lr, self._drop, self._dropped
            )
            arrays, metrics = mean.aggregate(server_round, base, screens, candidates)
        else:
            self.last_path = "dense"
            usable = self._densify(candidates)
            if not (
                isinstance(self.strategy, ValidatesMetrics)
                and self.strategy.validates_metrics
            ):
                usable = shared_metrics(
                    usable, weight_key_of(self.strategy), "Compressed"
                )
            log(
                logging.INFO,
                "Compressed: %d replies for %s, %d dropped",
                len(usable),
                type(self.strategy).__name__,
                len(self._dropped),
            )
            arrays, metrics = self.strategy.aggregate_train(
                server_round, usable + errors
            )
        log(
            logging.WARNING if arrays is None else logging.INFO,
            "Compressed: round %d: %d replies, %d errors, %d dropped, %.3f MB "
            "received vs %.3f MB dense (%.1fx fewer)%s",
            server_round,
            len(replies),
            len(errors),
            len(self._dropped),
            received / 1e6,
            dense / 1e6,
            dense / max(received, 1),
            "; no usable reply, global model unchanged" if arrays is None else "",
        )
        # the set-up mistake behind an error (mod order, ...), once at WARNING
        for msg in errors:
            log_client_error(
                "Compressed",
                msg.metadata.src_node_id,
                str(msg.error.reason),
                self._explained,
            )
        # documented: bouquet's facts ride along in the aggregated MetricRecord
        if metrics is not None:
            for key, value in (
                (BYTES_UP, received),
                (DENSE_BYTES, dense),
                (DROPPED, len(self._dropped)),
            ):
                metrics[key] = value
        return arrays, metrics

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {
            CLIENTS_DROPPED: len(self._dropped),
            DROP_REASONS: list(self._dropped),
        }
        self._dropped = []
        return own

    def state_dict(self) -> dict[str, Any]:
        """Nothing: decoding keeps no state across rounds (a checkpoint does not copy
        the global
        arrays of the last round; server momentum is
        :class:`~bouquet.strategies.ServerMomentum`'s)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept the empty state (and an older bouquet's state without momentum);
        ``ValueError`` for one that holds server momentum (that belongs to
        ``ServerMomentum`` now)."""
        if not isinstance(state, dict) or state.get("momentum"):
            raise ValueError(
                "Compressed keeps no state; a checkpoint holding server momentum needs "
                "ServerMomentum(Compressed(...)) (compression.server_momentum)"
            )

    # ------------------------------------------------------------------ internals
    def _drop(self, msg: Message, reason: str) -> None:
        record_drop("Compressed", node_label(msg), reason, self._dropped)

    def _candidates(self, replies: list[Message]) -> list[Message]:
        """Replies whose records and weight look right (nothing decoded yet)."""
        weight_key = weight_key_of(self.strategy)
        ok = []
        for msg in replies:
            try:
                reply_weight(msg.content, weight_key)
                single_array_record(msg.content)
                ok.append(msg)
            except Exception as exc:  # noqa: BLE001 - any failure of one reply is that reply's drop
                self._drop(msg, exception_reason(exc))
        return ok

    def _densify(self, candidates: list[Message]) -> list[Message]:
        """Each reply as dense :math:`w + \\eta \\hat u_i` (a dense reply with
        :math:`\\eta = 1` as it came)."""
        out = []
        for msg in candidates:
            try:
                out.append(self._dense_reply(msg))
            except Exception as exc:  # noqa: BLE001 - MemoryError, struct.error, ...: a dropped reply
                self._drop(msg, exception_reason(exc))
        if self._reference is not None:
            return out
        out, odd = majority_layout(out)
        for msg, reason in odd:
            self._drop(msg, reason)
        return out

    def _dense_reply(self, msg: Message) -> Message:
        record = single_array_record(msg.content)
        all_dense = all(a.stype == DENSE_STYPE for a in record.values())
        reference = self._reference
        if reference is None:
            if not all_dense:
                raise ValueError(
                    "a compressed reply, but no global arrays to decode it against "
                    "(configure_train was not called on Compressed)"
                )
            if self.server_lr != 1.0:
                raise ValueError(
                    f"server_lr={self.server_lr} needs the global arrays "
                    "(configure_train was not called)"
                )
            for name, arr in record.items():
                finite_or_drop(read_dense_alone(arr, name), name)
            return msg
        if all_dense and self.server_lr == 1.0:
            check_record(record, reference)
            for name, arr in record.items():
                finite_or_drop(dense_view(arr), name)
            return msg
        decoded = decode_record(record, reference)
        check_overflow(
            decoded,
            {n: aggregate_dtype(r) for n, r in reference.items()},
            self.server_lr,
        )
        dense = ArrayRecord(
            {
                name: npy_array(ref, [(decoded[name], self.server_lr)])
                for name, ref in reference.items()
            }
        )
        content = RecordDict()
        for key, value in msg.content.items():
            content[key] = dense if value is record else value
        return Message(metadata=msg.metadata, content=content)  # type: ignore[call-overload]
