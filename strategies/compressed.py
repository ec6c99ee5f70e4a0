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

which equals FedAvg over the :math:`\\hat w_i`; it
costs :math:`O(\\sum_i |\\text{payload}_i| + |w|)` time and :math:`O(|w|)` memory
(sparse updates are added at their indices, straight into the output bytes). Wrappers
offering :class:`~bouquet.strategies.hooks.ReplyScreen` (``ReplyGuard``) are looked
through: their norm bounds and ``min_replies`` are applied
through that protocol. Train metrics are aggregated by the inner strategy's
``train_metrics_aggr_fn``.

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

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from bouquet.codecs import Decoded, decode
from bouquet.strategies.accumulate import Accumulator, finite_npy, npy_array
from bouquet.strategies.client_errors import log_client_error
from bouquet.strategies.decoding import (
    DENSE_STYPE,
    aggregate_dtype,
    check_overflow,
    check_record,
    decode_record,
    decoded_norm,
    dense_update,
    dense_view,
    finite_or_drop,
    read_dense_alone,
    reference_arrays,
    single_array_record,
)
from bouquet.strategies.dense_checks import cast_to_reference
from bouquet.strategies.hooks import ReplyWeights, ValidatesMetrics, weighted_mean_chain
from bouquet.strategies.reports import (
    BYTES_UP,
    CLIENTS_DROPPED,
    DENSE_BYTES,
    DROP_REASONS,
    DROPPED,
    payload_bytes,
    truncate_reason,
)
from bouquet.strategies.screening import (
    SentMessages,
    majority_layout,
    node_label,
    normalised,
    reply_weight,
    shared_metrics,
)
from bouquet.strategies.wrapper import (
    StrategyWrapper,
    nested,
    refuse_byte_models,
    weight_key_of,
)

__all__ = ["Compressed"]


class Compressed(StrategyWrapper):
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
        if (
            isinstance(server_lr, bool)
            or not isinstance(server_lr, (int, float))
            or not (np.isfinite(server_lr) and server_lr > 0)
        ):
            raise ValueError(f"server_lr={server_lr!r} must be a finite number > 0")
        if any(isinstance(s, Compressed) for s in nested(strategy)):
            raise ValueError(
                "Compressed is already in this chain: wrap a strategy in Compressed "
                "once"
            )
        refuse_byte_models(strategy, "Compressed")
        super().__init__(strategy)
        self.server_lr = float(server_lr)
        self.fast_path = bool(fast_path)
        self.last_path = ""
        self._global: dict[str, np.ndarray] | None = None
        self._sent = SentMessages()
        self._dropped: list[str] = []
        self._explained: set[str] = (
            set()
        )  # set-up mistakes behind client errors, logged once

    def summary(self) -> None:
        log(
            logging.INFO,
            "\t├──> Compressed(server_lr=%s) around %s",
            self.server_lr,
            type(self.strategy).__name__,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = reference_arrays(
            arrays
        )  # zero-copy views of the bytes the server sends
        return self._sent.remember(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        replies = list(replies)
        received, dense = payload_bytes(replies, self._global)
        kept, wrong = self._sent.screen(replies)
        for msg, reason in wrong:
            self._drop(msg, reason)
        errors = [m for m in kept if m.has_error()]
        candidates = self._candidates([m for m in kept if not m.has_error()])
        base, screens = (
            weighted_mean_chain(self.strategy)
            if self.fast_path and self._global is not None
            else (None, [])
        )
        if base is not None:
            self.last_path = "fast"
            arrays, metrics = self._aggregate_weighted_mean(
                server_round, base, screens, candidates
            )
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
        for msg in (
            errors
        ):  # the set-up mistake behind an error (mod order, ...), once at WARNING
            log_client_error(
                "Compressed",
                msg.metadata.src_node_id,
                str(msg.error.reason),
                self._explained,
            )
        if (
            metrics is not None
        ):  # documented: bouquet's facts ride along in the aggregated MetricRecord
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
        ``ValueError``
        for one that holds server momentum (that belongs to ``ServerMomentum`` now)."""
        if not isinstance(state, dict) or state.get("momentum"):
            raise ValueError(
                "Compressed keeps no state; a checkpoint holding server momentum needs "
                "ServerMomentum(Compressed(...)) (compression.server_momentum)"
            )

    # ------------------------------------------------------------------ internals
    def _drop(self, msg: Message, reason: str) -> None:
        node = node_label(msg)
        reason = truncate_reason(reason)
        log(
            logging.WARNING, "Compressed: dropping reply from node %s: %s", node, reason
        )
        self._dropped.append(f"node {node}: {reason}")

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
                self._drop(msg, _reason(exc))
        return ok

    def _densify(self, candidates: list[Message]) -> list[Message]:
        """Each reply as dense :math:`w + \\eta \\hat u_i` (a dense reply with
        :math:`\\eta = 1` as it came)."""
        out = []
        for msg in candidates:
            try:
                out.append(self._dense_reply(msg))
            except Exception as exc:  # noqa: BLE001 - MemoryError, struct.error, ...: a dropped reply
                self._drop(msg, _reason(exc))
        if self._global is not None:
            return out
        out, odd = majority_layout(out)
        for msg, reason in odd:
            self._drop(msg, reason)
        return out

    def _dense_reply(self, msg: Message) -> Message:
        record = single_array_record(msg.content)
        all_dense = all(a.stype == DENSE_STYPE for a in record.values())
        reference = self._global
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

    def _aggregate_weighted_mean(
        self,
        server_round: int,
        base: FedAvg,
        screens: list[Any],
        candidates: list[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:math:`w + \\eta \\sum_i c_i \\hat u_i`, each payload decoded and added at
        its indices,
        in place, in the output buffers."""
        accepted, out = self._accumulate(candidates, base, screens)
        for screen in screens:
            if not screen.admit_round(server_round, len(accepted)):
                return None, None
        if not accepted or out is None:
            log(
                logging.WARNING,
                "Compressed: round %d has no usable reply; global model unchanged",
                server_round,
            )
            return None, None
        bad = [name for name, arr in out.items() if not finite_npy(arr)]
        if bad:  # only a non-finite global model gets here: every update was bounded
            log(
                logging.WARNING,
                "Compressed: round %d aggregate of %s is not finite; global model "
                "unchanged",
                server_round,
                truncate_reason(str(bad[:3])),
            )
            return None, None
        log(
            logging.INFO,
            "Compressed: aggregate_train: Received %d results and %d failures (%d "
            "dropped)",
            len(accepted),
            len(self._dropped),
            len(self._dropped),
        )
        # the replies are not handed on: their metrics are cut to the keys all share,
        # whatever the strategy
        try:
            shared = shared_metrics(accepted, base.weighted_by_key, "Compressed")
            metrics = base.train_metrics_aggr_fn(
                [m.content for m in shared], base.weighted_by_key
            )
        except Exception as exc:  # noqa: BLE001 - the metrics function read something odd: keep the model
            log(
                logging.WARNING,
                "Compressed: round %d: train_metrics_aggr_fn failed (%s); no train "
                "metrics",
                server_round,
                truncate_reason(_reason(exc)),
            )
            metrics = MetricRecord()
        return ArrayRecord(out), metrics

    def _accumulate(
        self, candidates: list[Message], base: FedAvg, screens: list[Any]
    ) -> tuple[list[Message], dict[str, Any] | None]:
        """Decode every candidate and add it, with its normalised weight, straight into
        the output
        buffers. A reply dropped on the way changes the normalisation: then one more
        pass over the survivors (decoded again)."""
        reference = self._global
        if reference is None:
            return [], None
        for attempt in range(3):
            weighted = self._weighted(candidates, base)
            if not weighted:
                return [], None
            shares = normalised([w for _, w in weighted])
            dtypes = self._out_dtypes(weighted[0][0], reference, bool(screens))
            acc = {
                name: Accumulator(ref, dtypes[name]) for name, ref in reference.items()
            }
            survivors: list[Message] = []
            norms: list[float] = []
            clean = True
            for (msg, _), share in zip(weighted, shares, strict=True):
                decoded = self._decode(msg, acc, screens)
                if decoded is None:
                    clean = False
                    continue
                survivors.append(msg)
                norms.append(decoded_norm(decoded) * self.server_lr if screens else 0.0)
                if clean:
                    for name, dec in decoded.items():
                        acc[name].add(dec, self.server_lr * share)
            keep = list(range(len(survivors)))
            if attempt == 0:
                for screen in screens:
                    keep = [
                        keep[i] for i in screen.screen_norms([norms[j] for j in keep])
                    ]
            for i in sorted(set(range(len(survivors))) - set(keep)):
                self._drop(
                    survivors[i],
                    f"update norm {norms[i]:.4g} exceeds the guard's bound",
                )
            if clean and len(keep) == len(weighted):
                return survivors, {name: a.array() for name, a in acc.items()}
            candidates = [survivors[i] for i in keep]
        return [], None

    def _weighted(
        self, msgs: list[Message], base: FedAvg
    ) -> list[tuple[Message, float]]:
        """(reply, weight) for the replies with a positive weight (custom weights of a
        :class:`~bouquet.strategies.hooks.ReplyWeights` strategy, else
        ``weighted_by_key``)."""
        if isinstance(base, ReplyWeights) and base.weighted_mean_aggregation:
            try:
                weights = [float(w) for w in base.reply_weights(msgs)]
                if len(weights) != len(msgs):
                    raise ValueError(f"{len(weights)} weights for {len(msgs)} replies")
            except Exception as exc:  # noqa: BLE001 - the strategy's own weights failed: no aggregate this round
                log(
                    logging.WARNING,
                    "Compressed: %s.reply_weights failed (%s); round not aggregated",
                    type(base).__name__,
                    truncate_reason(_reason(exc)),
                )
                return []
        else:
            weights = [
                reply_weight(m.content, base.weighted_by_key) for m in msgs
            ]  # checked in _candidates
        out = []
        for msg, weight in zip(msgs, weights, strict=True):
            if np.isfinite(weight) and weight > 0:
                out.append((msg, weight))
            else:
                self._drop(
                    msg,
                    f"aggregation weight {weight:.4g} from {type(base).__name__} is "
                    "not finite and > 0",
                )
        return out

    def _out_dtypes(
        self, first: Message, reference: dict[str, np.ndarray], screened: bool
    ) -> dict[str, np.dtype]:
        """Flower's rule (the first reply's dtypes, float64 for integers; never narrower
        than the
        server's, so one reply cannot make the others overflow), or the server's behind
        a screen."""
        dtypes = {name: aggregate_dtype(ref) for name, ref in reference.items()}
        if screened:
            return dtypes
        for name, arr in single_array_record(first.content).items():
            if name in dtypes and arr.stype == DENSE_STYPE:
                try:
                    promoted = np.result_type(
                        reference[name].dtype, np.dtype(arr.dtype)
                    )
                except TypeError:
                    continue  # the reply is dropped when decoded
                dtypes[name] = aggregate_dtype(np.empty(0, dtype=promoted))
        return dtypes

    def _decode(
        self, msg: Message, acc: dict[str, Accumulator], screens: list[Any]
    ) -> dict[str, Decoded] | None:
        """The reply's updates (dense arrays in the accumulators' working dtype), or
        None (dropped)."""
        reference = self._global or {}
        try:
            record = single_array_record(msg.content)
            check_record(record, reference)
            decoded: dict[str, Decoded] = {}
            for name, arr in record.items():
                ref = reference[name]
                try:
                    if arr.stype == DENSE_STYPE:
                        view = dense_view(arr)
                        if screens and view.dtype != ref.dtype:
                            view = cast_to_reference(view, ref, name)
                        decoded[name] = dense_update(view, ref, acc[name].work)
                    else:
                        decoded[name] = decode(
                            arr.stype, arr.dtype, tuple(arr.shape), arr.data
                        )
                except ValueError as exc:
                    raise ValueError(f"array {name!r}: {exc}") from exc
            check_overflow(
                decoded, {n: a.dtype for n, a in acc.items()}, self.server_lr
            )
            return decoded
        except Exception as exc:  # noqa: BLE001 - MemoryError, struct.error, ...: a dropped reply
            self._drop(msg, _reason(exc))
            return None


def _reason(exc: BaseException) -> str:
    return truncate_reason(
        str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    )
