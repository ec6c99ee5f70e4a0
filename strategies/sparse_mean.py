"""The weighted-mean fast path of :class:`~bouquet.strategies.compressed.Compressed`.

For the weighted-mean family (FedAvg, FedProx, a strategy offering
:class:`~bouquet.strategies.hooks.ReplyWeights`) the decoded updates are added, each
with its normalised weight, straight into one output buffer per tensor:

.. math::

    w' = w + \\eta\\, \\sum_i c_i \\hat u_i, \\qquad
    c_i = \\frac{n_i / \\max_j n_j}{\\sum_k n_k / \\max_j n_j},

in :math:`O(\\sum_i |\\text{payload}_i| + |w|)` time and :math:`O(|w|)` memory (no
dense copy per client). The screens (:class:`~bouquet.strategies.hooks.ReplyScreen`,
e.g. ``ReplyGuard``) bound the update norms and ``min_replies``; a reply dropped on the
way changes the normalisation, so the survivors are added again. The dtype rules are
:class:`~bouquet.strategies.compressed.Compressed`'s (module docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg

from bouquet.codecs import Decoded
from bouquet.strategies.accumulate import Accumulator
from bouquet.strategies.accumulate import finite_npy
from bouquet.strategies.decoding import DENSE_STYPE
from bouquet.strategies.decoding import aggregate_dtype
from bouquet.strategies.decoding import check_overflow
from bouquet.strategies.decoding import decode_record
from bouquet.strategies.decoding import decoded_norm
from bouquet.strategies.decoding import single_array_record
from bouquet.strategies.dense_checks import cast_to_reference
from bouquet.strategies.hooks import ReplyWeights
from bouquet.strategies.reports import exception_reason
from bouquet.strategies.reports import truncate_reason
from bouquet.strategies.screening import normalised
from bouquet.strategies.screening import reply_weight
from bouquet.strategies.screening import shared_metrics


class SparseWeightedMean:
    """One round's weighted mean of compressed replies, decoded in place (module
    docstring).

    Parameters
    ----------
    reference : dict of str to numpy.ndarray
        :math:`w`, the global arrays the server sent this round.
    server_lr : float
        :math:`\\eta`, the step applied to the decoded updates.
    drop : callable
        ``drop(msg, reason)``: the wrapper's way to drop (log, count) one reply.
    dropped : list of str
        The wrapper's drop reasons of this round (their number is logged).
    """

    def __init__(
        self,
        reference: dict[str, np.ndarray] | None,
        server_lr: float,
        drop: Callable[[Message, str], None],
        dropped: list[str],
    ) -> None:
        self.reference = reference
        self.server_lr = server_lr
        self.drop = drop
        self.dropped = dropped

    def aggregate(
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
            len(self.dropped),
            len(self.dropped),
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
                exception_reason(exc),
            )
            metrics = MetricRecord()
        return ArrayRecord(out), metrics

    def _accumulate(
        self, candidates: list[Message], base: FedAvg, screens: list[Any]
    ) -> tuple[list[Message], dict[str, Any] | None]:
        """Decode every candidate and add it, with its normalised weight, straight into
        the output buffers. A reply dropped on the way changes the normalisation: then
        one more pass over the survivors (decoded again)."""
        reference = self.reference
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
            # the accumulators' output and working dtypes, read once for all replies
            out_dtypes = {name: a.dtype for name, a in acc.items()}
            works = {name: a.work for name, a in acc.items()}
            survivors: list[Message] = []
            norms: list[float] = []
            clean = True
            for (msg, _), share in zip(weighted, shares, strict=True):
                decoded = self._decode(msg, out_dtypes, works, screens)
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
                self.drop(
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
                    exception_reason(exc),
                )
                return []
        else:
            # checked in _candidates
            weights = [reply_weight(m.content, base.weighted_by_key) for m in msgs]
        out = []
        for msg, weight in zip(msgs, weights, strict=True):
            if np.isfinite(weight) and weight > 0:
                out.append((msg, weight))
            else:
                self.drop(
                    msg,
                    f"aggregation weight {weight:.4g} from {type(base).__name__} is "
                    "not finite and > 0",
                )
        return out

    def _out_dtypes(
        self, first: Message, reference: dict[str, np.ndarray], screened: bool
    ) -> dict[str, np.dtype]:
        """Flower's rule (the first reply's dtypes, float64 for integers; never narrower
        than the server's, so one reply cannot make the others overflow), or the
        server's behind a screen."""
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
        self,
        msg: Message,
        out_dtypes: dict[str, np.dtype],
        works: dict[str, np.dtype],
        screens: list[Any],
    ) -> dict[str, Decoded] | None:
        """The reply's updates (dense arrays in the accumulators' working dtypes
        ``works``), or None (dropped)."""
        reference = self.reference or {}
        try:
            record = single_array_record(msg.content)
            decoded = decode_record(
                record,
                reference,
                work=works,
                cast=cast_to_reference if screens else None,
            )
            check_overflow(decoded, out_dtypes, self.server_lr)
            return decoded
        except Exception as exc:  # noqa: BLE001 - MemoryError, struct.error, ...: a dropped reply
            self.drop(msg, exception_reason(exc))
            return None
