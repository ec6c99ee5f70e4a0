"""``Compressed``: decode compressed client updates for any Message-API strategy.

Clients (``bouquet.clients.compressed``) or a client mod (``compression_mod``) upload the
*update* :math:`u_i = w_i - w` of client :math:`i` against the global arrays :math:`w` that
the server sent, encoded per tensor (``bouquet.topk/1``, ``bouquet.ternary/1``,
``bouquet.stc/1``, ``bouquet.dense/1``; see :mod:`bouquet.codecs.wire`). An array with
Flower's dense stype (``numpy.ndarray``) is read as full local weights, :math:`u_i = w_i - w`,
so uncompressed clients can join.

``Compressed(strategy, server_lr=eta)`` remembers :math:`w` in ``configure_train`` and decodes
every reply in ``aggregate_train``. The inner strategy receives dense replies holding

.. math::

    \\hat w_i = w + \\eta\\, \\hat u_i

(:math:`\\hat u_i` the decoded update), so it composes with any aggregation rule (FedAvg,
FedProx, FedAdam, FedMedian, Krum, bouquet's strategies). For the weighted-mean family
(exactly Flower's ``FedAvg.aggregate_train``, e.g. FedAvg and FedProx, or a FedAvg subclass
declaring ``weighted_mean_aggregation = True``, optionally with its own weights
``reply_weights(contents) -> list[float]`` instead of :math:`n_i`; bouquet's ``ReplyGuard`` is
looked through) the wrapper aggregates directly, without a dense copy per client:

.. math::

    w' = w + \\eta\\, \\frac{\\sum_i n_i \\hat u_i}{\\sum_i n_i},

which equals FedAvg over the :math:`\\hat w_i`; it costs :math:`O(\\sum_i |\\text{payload}_i| +
|w|)` time and :math:`O(|w|)` memory (sparse updates are added at their indices). Train metrics
are aggregated by the inner strategy's ``train_metrics_aggr_fn``.

A reply that cannot be decoded (bad stype, header, shape, index, non-finite value, missing or
bad weight) is dropped, logged with the node id and the reason, and counted in
``round_report()["clients_dropped"]``; the round goes on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from bouquet import keys
from bouquet.codecs import Decoded, decode, is_bouquet_stype
from bouquet.strategies.guard import DENSE_STYPE, ReplyGuard, metric_key_outliers
from bouquet.strategies.reports import CLIENTS_DROPPED, DROP_REASONS
from bouquet.strategies.wrapper import StrategyWrapper

logger = logging.getLogger(__name__)


def weighted_mean_base(strategy: Strategy) -> FedAvg | None:
    """The FedAvg-family strategy whose ``aggregate_train`` is a plain weighted mean, or None.

    True for a strategy whose class uses ``FedAvg.aggregate_train`` unchanged (FedAvg, FedProx)
    or that declares ``weighted_mean_aggregation = True``; bouquet's ``ReplyGuard`` is looked
    through (it does not change valid replies).
    """
    declared = getattr(type(strategy), "weighted_mean_aggregation", None)
    if declared is not None:
        return strategy if declared and isinstance(strategy, FedAvg) else None
    if isinstance(strategy, ReplyGuard):
        return weighted_mean_base(strategy.strategy)
    if isinstance(strategy, FedAvg) and type(strategy).aggregate_train is FedAvg.aggregate_train:
        return strategy
    return None


def decode_reply(content: RecordDict, reference: dict[str, np.ndarray]) -> dict[str, Decoded]:
    """Decode every array of a reply into an update against ``reference`` (validated)."""
    if len(content.array_records) != 1:
        raise ValueError(f"expected one ArrayRecord, got {len(content.array_records)}")
    return decode_record(next(iter(content.array_records.values())), reference)


def decode_update(record: ArrayRecord, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense decoded updates of ``record`` against ``reference`` (the ``decoder`` hook of
    bouquet's asynchronous strategy); raises ``ValueError`` on a bad payload."""
    return {name: dec.to_dense() for name, dec in decode_record(record, reference).items()}


def decode_record(record: ArrayRecord, reference: dict[str, np.ndarray]) -> dict[str, Decoded]:
    """Decode every array of ``record`` into an update against ``reference`` (validated)."""
    if set(record.keys()) != set(reference):
        missing = sorted(set(reference) - set(record.keys()))[:3]
        extra = sorted(set(record.keys()) - set(reference))[:3]
        raise ValueError(f"array names differ from the global model (missing {missing}, extra {extra})")
    out: dict[str, Decoded] = {}
    for name, arr in record.items():
        ref = reference[name]
        try:
            if is_bouquet_stype(arr.stype):
                dec = decode(arr.stype, arr.dtype, tuple(arr.shape), arr.data)
            elif arr.stype == DENSE_STYPE:  # full local weights from an uncompressed client
                full = arr.numpy()
                if full.shape != ref.shape:
                    raise ValueError(f"shape {full.shape}, expected {ref.shape}")
                if full.dtype.kind == "f" and not np.all(np.isfinite(full)):
                    raise ValueError("non-finite values")
                dec = Decoded(ref.shape, ref.dtype, None, (full.astype(ref.dtype) - ref).reshape(-1))
            else:
                raise ValueError(f"stype {arr.stype!r} is neither bouquet.<codec>/<version> nor {DENSE_STYPE!r}")
        except ValueError as exc:
            raise ValueError(f"array {name!r}: {exc}") from exc
        if dec.shape != ref.shape or dec.dtype != ref.dtype:
            raise ValueError(f"array {name!r} decodes to {dec.shape} {dec.dtype}, global is {ref.shape} {ref.dtype}")
        out[name] = dec
    return out


def reply_weight(content: RecordDict, weight_key: str) -> float:
    """The positive finite weight of a reply (``num-examples``), else ``ValueError``."""
    if len(content.metric_records) != 1:
        raise ValueError(f"expected one MetricRecord, got {len(content.metric_records)}")
    weight = next(iter(content.metric_records.values())).get(weight_key)
    if weight is None or isinstance(weight, (list, bool)):
        raise ValueError(f"metric {weight_key!r} missing or not a number")
    if not np.isfinite(float(weight)) or float(weight) <= 0:
        raise ValueError(f"metric {weight_key!r}={weight} must be finite and > 0")
    return float(weight)


class Compressed(StrategyWrapper):
    """Decode compressed updates around ``strategy`` (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message-API strategy.
    server_lr : float
        :math:`\\eta`, the step applied to the decoded update (1.0: the clients' weights).
    fast_path : bool
        Use the sparse weighted-mean aggregation when the inner strategy allows it.
    """

    def __init__(self, strategy: Strategy, server_lr: float = 1.0, *, fast_path: bool = True) -> None:
        if not np.isfinite(server_lr) or server_lr <= 0:
            raise ValueError(f"server_lr={server_lr} must be finite and > 0")
        super().__init__(strategy)
        self.server_lr = float(server_lr)
        self.fast_path = bool(fast_path)
        self._global: dict[str, np.ndarray] | None = None
        self._dropped: list[str] = []
        self.last_path = ""

    def summary(self) -> None:
        logger.info("Compressed(server_lr=%s) around %s", self.server_lr, type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = {k: v.numpy() for k, v in arrays.items()}  # numpy() deserialises: a new array
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        replies = list(replies)
        self._global_arrays()  # fail early, before any decoding
        base = weighted_mean_base(self.strategy) if self.fast_path else None
        if base is not None:
            self.last_path = "fast"
            return self._aggregate_weighted_mean(base, replies)
        self.last_path = "dense"
        return self.strategy.aggregate_train(server_round, self._densify(replies))

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {CLIENTS_DROPPED: len(self._dropped), DROP_REASONS: list(self._dropped)}
        self._dropped = []
        return own

    # ------------------------------------------------------------------ internals
    def _drop(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        logger.warning("dropping compressed reply from node %s: %s", node, reason)
        self._dropped.append(f"node {node}: {reason}")

    def _accept(self, replies: list[Message], weight_key: str, keep_dense: bool = True
                ) -> tuple[list[tuple[Message, dict[str, Decoded] | None]], list[Message]]:
        """Decode and validate the replies: (accepted with their updates, error replies).

        With ``keep_dense=False`` a reply holding a dense-form tensor keeps ``None`` instead of
        its decoded arrays (decoded again when needed), so memory stays O(payloads + model).
        """
        global_arrays = self._global_arrays()
        accepted: list[tuple[Message, dict[str, Decoded] | None]] = []
        errors: list[Message] = []
        for msg in replies:
            if msg.has_error():
                logger.info("reply from node %s is an error: %s", msg.metadata.src_node_id, msg.error.reason)
                errors.append(msg)
                continue
            try:
                reply_weight(msg.content, weight_key)
                decoded: dict[str, Decoded] | None = decode_reply(msg.content, global_arrays)
                if not keep_dense and any(d.indices is None for d in decoded.values()):  # type: ignore[union-attr]
                    decoded = None
                accepted.append((msg, decoded))
            except ValueError as exc:
                self._drop(msg, str(exc))
        accepted = self._consistent_metrics(accepted)
        logger.info("aggregate_train: %d decoded replies, %d dropped, %d errors", len(accepted), len(self._dropped), len(errors))
        return accepted, errors

    def _densify(self, replies: list[Message]) -> list[Message]:
        """Replace each reply's arrays by the dense :math:`w + \\eta \\hat u_i` (error replies pass)."""
        global_arrays = self._global_arrays()
        accepted, errors = self._accept(replies, getattr(self.strategy, "weighted_by_key", keys.NUM_EXAMPLES))
        out: list[Message] = list(errors)
        for msg, decoded in accepted:
            if decoded is None:  # only with keep_dense=False, which this path never asks for
                raise RuntimeError("_accept returned no decoded arrays on the dense path")
            dense = ArrayRecord({
                name: Array(np.ascontiguousarray(ref + (self.server_lr * decoded[name].to_dense()).astype(ref.dtype)))
                for name, ref in global_arrays.items()
            })
            content = RecordDict({next(iter(msg.content.array_records)): dense})
            for key, rec in msg.content.metric_records.items():
                content[key] = rec
            for key, rec in msg.content.config_records.items():
                content[key] = rec
            msg.content = content
            out.append(msg)
        return out

    def _consistent_metrics(self, accepted: list[tuple[Message, dict[str, Decoded] | None]]) -> list[tuple[Message, dict[str, Decoded] | None]]:
        outliers = set(map(id, metric_key_outliers([m for m, _ in accepted])))
        for msg, _ in accepted:
            if id(msg) in outliers:
                self._drop(msg, "metric keys differ from the other replies")
        return [(m, d) for m, d in accepted if id(m) not in outliers]

    def _global_arrays(self) -> dict[str, np.ndarray]:
        """The global arrays sent this round (decoding needs them)."""
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to decode against")
        return self._global

    def _aggregate_weighted_mean(self, base: FedAvg, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:math:`w + \\eta \\sum_i n_i \\hat u_i / \\sum_i n_i`, adding sparse updates at their indices."""
        global_arrays = self._global_arrays()
        weight_key = base.weighted_by_key
        accepted, _ = self._accept(replies, weight_key, keep_dense=False)
        if not accepted:
            return None, None
        custom = getattr(base, "reply_weights", None)
        if callable(custom):  # a declared weighted mean with its own weights (e.g. KL weighting)
            weights = [float(w) for w in custom([m.content for m, _ in accepted])]
        else:
            weights = [reply_weight(m.content, weight_key) for m, _ in accepted]
        if len(weights) != len(accepted) or not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"aggregation weights {weights[:5]} must be finite, >= 0, one per reply, with a positive sum")
        # accumulate in the model's float dtype (like Flower's FedAvg); integer tensors in float64
        acc = {name: np.zeros(ref.size, dtype=ref.dtype if ref.dtype.kind == "f" else np.float64)
               for name, ref in global_arrays.items()}
        total = float(sum(weights))
        for (msg, decoded), weight in zip(accepted, weights, strict=True):
            for name, dec in (decoded or decode_reply(msg.content, global_arrays)).items():
                dec.add_to(acc[name], weight)
        out: dict[str, Array] = {}
        for name, ref in global_arrays.items():
            step = acc.pop(name)  # in place from here on: no extra model-sized temporaries
            step *= self.server_lr / total
            step += ref.reshape(-1)
            out[name] = Array(np.ascontiguousarray(step.reshape(ref.shape).astype(ref.dtype, copy=False)))
            del step
        arrays = ArrayRecord(out)
        metrics = base.train_metrics_aggr_fn([m.content for m, _ in accepted], weight_key)
        return arrays, metrics
