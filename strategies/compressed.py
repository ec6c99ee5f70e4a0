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

Every reply is hostile (:mod:`bouquet.strategies.decoding`): names, shapes, dtypes and lengths
are checked against the global model before anything is allocated, decoding is bounded by the
payload's bytes and the model size, and *any* exception while reading one reply drops that
reply (logged at WARNING through Flower's logger with the node id and the reason, counted in
``round_report()["clients_dropped"]``); the round goes on with the others. The weighted mean
is accumulated with normalised weights :math:`n_i / \\sum_j n_j` straight into the output
buffer (a copy of :math:`w`), so it is finite wherever Flower's dense FedAvg is; a non-finite
aggregate skips the round instead of poisoning the model.

Server momentum (``server_momentum`` :math:`\\beta`, default 0 = off; FedAvgM, Hsu et al. 2019,
arXiv:1909.06335, applied here to the decoded mean update :math:`\\bar u_t = (w_{agg} - w)/\\eta`,
where :math:`w_{agg}` is the inner aggregation's result, :math:`w + \\eta\\,\\bar u_t` for the
weighted-mean family):

.. math::

    m_t = \\beta\\, m_{t-1} + \\bar u_t, \\qquad w' = w + \\eta\\, m_t,

on every float tensor except normalisation statistics (``running_mean`` / ``running_var``, which
take the plain aggregate: momentum could make a running variance negative) and integer tensors.
:math:`m` is the strategy's state (:meth:`Compressed.state_dict`), so a checkpoint keeps it; a
skipped round (no aggregate) leaves :math:`m` and the model unchanged. With all clients in
every round, client-side DGC momentum correction with :math:`m = \\beta` and no sparsification
is the same update (both are heavy-ball momentum on the mean update).

Looked through on the fast path: bouquet's ``ReplyGuard`` (its ``min_replies``, its update-norm
bound and its skipped-round count apply exactly as on the dense path). Dtype and shape rules are
FedAvg's: a 0-d array stays 0-d, an integer tensor's mean is float64.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from bouquet import keys
from bouquet.codecs import Decoded, is_statistic
from bouquet.strategies.accumulate import Accumulator, finite_npy, npy_array
from bouquet.strategies.decoding import (
    decode_record,
    reference_arrays,
    reply_weight,
    single_array_record,
    update_norm,
)
from bouquet.strategies.guard import ReplyGuard, metric_key_outliers, within_norm_bounds
from bouquet.strategies.reports import (
    BYTES_UP,
    CLIENTS_DROPPED,
    DENSE_BYTES,
    DROP_REASONS,
    DROPPED,
    payload_bytes,
)
from bouquet.strategies.wrapper import StrategyWrapper, chain


def weighted_mean_chain(strategy: Strategy) -> tuple[FedAvg | None, list[ReplyGuard]]:
    """The FedAvg-family strategy whose ``aggregate_train`` is a plain weighted mean (or None),
    and the ``ReplyGuard`` s looked through on the way to it.

    True for a strategy whose class uses ``FedAvg.aggregate_train`` unchanged (FedAvg, FedProx)
    or that declares ``weighted_mean_aggregation = True``.
    """
    guards: list[ReplyGuard] = []
    while True:
        declared = getattr(type(strategy), "weighted_mean_aggregation", None)
        if declared is not None:
            return (strategy if declared and isinstance(strategy, FedAvg) else None), guards
        if isinstance(strategy, ReplyGuard):
            guards.append(strategy)
            strategy = strategy.strategy
            continue
        if isinstance(strategy, FedAvg) and type(strategy).aggregate_train is FedAvg.aggregate_train:
            return strategy, guards
        return None, guards


def weighted_mean_base(strategy: Strategy) -> FedAvg | None:
    """The FedAvg-family strategy of :func:`weighted_mean_chain` (or None)."""
    return weighted_mean_chain(strategy)[0]


def decode_reply(content: RecordDict, reference: dict[str, np.ndarray]) -> dict[str, Decoded]:
    """Decode every array of a reply into an update against ``reference`` (validated)."""
    return decode_record(single_array_record(content), reference)


def decode_update(record: ArrayRecord, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense decoded updates of ``record`` against ``reference`` (the ``decoder`` hook of
    bouquet's asynchronous strategy); raises ``ValueError`` on a bad payload."""
    return {name: dec.to_dense() for name, dec in decode_record(record, reference).items()}


class Compressed(StrategyWrapper):
    """Decode compressed updates around ``strategy`` (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message-API strategy (put ``ReplyGuard`` inside: ``Compressed(ReplyGuard(s))``).
    server_lr : float
        :math:`\\eta`, the step applied to the decoded update (1.0: the clients' weights).
    fast_path : bool
        Use the sparse weighted-mean aggregation when the inner strategy allows it.
    server_momentum : float
        :math:`\\beta \\in [0, 1)` of the server momentum on the decoded mean update (0: off).
    """

    def __init__(self, strategy: Strategy, server_lr: float = 1.0, *, fast_path: bool = True,
                 server_momentum: float = 0.0) -> None:
        if not np.isfinite(server_lr) or server_lr <= 0:
            raise ValueError(f"server_lr={server_lr} must be finite and > 0")
        if not (np.isfinite(server_momentum) and 0.0 <= server_momentum < 1.0):
            raise ValueError(f"server_momentum={server_momentum} must be in [0, 1)")
        if any(isinstance(s, Compressed) for s in chain(strategy)):
            raise ValueError("Compressed is already in this chain: wrap a strategy in Compressed once")
        if server_momentum > 0:
            for inner in chain(strategy):
                if isinstance(inner, FedOpt) or (isinstance(inner, FedAvgM) and inner.server_momentum > 0):
                    raise ValueError(f"server_momentum={server_momentum} cannot be combined with {type(inner).__name__}: "
                                     "it already applies its own server optimiser (momentum) to the aggregate")
        # set before StrategyWrapper.__init__: afterwards a name the inner strategy also has (FedAvgM's
        # server_momentum) would be written to the inner strategy
        self.server_momentum = float(server_momentum)
        self._momentum: dict[str, np.ndarray] = {}  # m_t per float tensor (the strategy's state)
        super().__init__(strategy)
        self.server_lr = float(server_lr)
        self.fast_path = bool(fast_path)
        self._global: dict[str, np.ndarray] | None = None
        self._dropped: list[str] = []
        self.last_path = ""

    def summary(self) -> None:
        log(logging.INFO, "Compressed(server_lr=%s, server_momentum=%s) around %s", self.server_lr, self.server_momentum,
            type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = reference_arrays(arrays)  # zero-copy views of the bytes the server sends
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        replies = list(replies)
        self._global_arrays()  # fail early, before any decoding
        received, dense = payload_bytes(replies, self._global_arrays())
        base, guards = weighted_mean_chain(self.strategy) if self.fast_path else (None, [])
        if base is not None:
            self.last_path = "fast"
            arrays, metrics = self._aggregate_weighted_mean(server_round, base, guards, replies)
        else:
            self.last_path = "dense"
            arrays, metrics = self.strategy.aggregate_train(server_round, self._densify(replies))
        if arrays is not None and self.server_momentum > 0:
            arrays = self._apply_server_momentum(server_round, arrays)
        facts = {BYTES_UP: received, DENSE_BYTES: dense, DROPPED: len(self._dropped)}
        log(logging.INFO, "Compressed: round %d: %d replies, %d dropped, %.3f MB received vs %.3f MB dense (%.1fx fewer)",
            server_round, len(replies), len(self._dropped), received / 1e6, dense / 1e6, dense / max(received, 1))
        if metrics is not None:  # documented: bouquet's facts ride along in the aggregated MetricRecord
            for key, value in facts.items():
                metrics[key] = value
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        """The server momentum :math:`m` (copies; empty before the first step or when off)."""
        return {"server_momentum": self.server_momentum, "momentum": {k: v.copy() for k, v in self._momentum.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue with the momentum of :meth:`state_dict` (``ValueError`` if it is not one)."""
        momentum = state.get("momentum") if isinstance(state, dict) else None
        if not isinstance(momentum, dict) or not all(
                isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind == "f" and np.all(np.isfinite(v))
                for k, v in momentum.items()):
            raise ValueError("Compressed.load_state_dict: 'momentum' must map tensor names to finite float arrays")
        saved = state.get("server_momentum")
        if momentum and saved != self.server_momentum:
            log(logging.WARNING, "Compressed: the loaded momentum was built with server_momentum=%s, this strategy "
                "has %s; continuing with it", saved, self.server_momentum)
        self._momentum = {k: np.array(v, copy=True) for k, v in momentum.items()}

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {CLIENTS_DROPPED: len(self._dropped), DROP_REASONS: list(self._dropped)}
        self._dropped = []
        return own

    # ------------------------------------------------------------------ internals
    def _drop(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        log(logging.WARNING, "Compressed: dropping reply from node %s: %s", node, reason)
        self._dropped.append(f"node {node}: {reason}")

    def _candidates(self, replies: list[Message], weight_key: str) -> tuple[list[Message], list[Message]]:
        """Replies whose records, array headers and weight look right (nothing decoded yet), and
        the error replies."""
        ok, errors = [], []
        for msg in replies:
            if msg.has_error():
                log(logging.INFO, "Compressed: reply from node %s is an error: %s", msg.metadata.src_node_id, msg.error.reason)
                errors.append(msg)
                continue
            try:
                reply_weight(msg.content, weight_key)
                single_array_record(msg.content)
                ok.append(msg)
            except Exception as exc:  # noqa: BLE001 - any failure of one reply is that reply's drop
                self._drop(msg, _reason(exc))
        return ok, errors

    def _metric_outliers(self, decoded: list[Message]) -> set[int]:
        """Drop the decoded replies whose metric keys differ from the round's most common set
        (checked after decoding, so undecodable replies cannot outvote the good ones)."""
        outliers = set(map(id, metric_key_outliers(decoded)))
        for msg in decoded:
            if id(msg) in outliers:
                self._drop(msg, "metric keys differ from the other replies")
        return outliers

    def _decode(self, msg: Message) -> dict[str, Decoded] | None:
        try:
            return decode_reply(msg.content, self._global_arrays())
        except Exception as exc:  # noqa: BLE001 - MemoryError, struct.error, ...: a dropped reply
            self._drop(msg, _reason(exc))
            return None

    def _densify(self, replies: list[Message]) -> list[Message]:
        """Replace each reply's arrays by the dense :math:`w + \\eta \\hat u_i` (error replies pass)."""
        global_arrays = self._global_arrays()
        candidates, out = self._candidates(replies, getattr(self.strategy, "weighted_by_key", keys.NUM_EXAMPLES))
        decoded_replies = [(m, d) for m, d in ((m, self._decode(m)) for m in candidates) if d is not None]
        outliers = self._metric_outliers([m for m, _ in decoded_replies])
        for msg, decoded in decoded_replies:
            if id(msg) in outliers:
                continue
            dense = ArrayRecord({name: npy_array(ref, [(decoded[name], self.server_lr)]) for name, ref in global_arrays.items()})
            content = RecordDict({next(iter(msg.content.array_records)): dense})
            for key, rec in msg.content.metric_records.items():
                content[key] = rec
            for key, conf in msg.content.config_records.items():
                content[key] = conf
            # a new reply with the same metadata: the caller's reply is left as it came
            out.append(Message(metadata=msg.metadata, content=content))  # type: ignore[call-overload]
        log(logging.INFO, "Compressed: %d replies decoded for %s, %d dropped", len(out), type(self.strategy).__name__,
            len(self._dropped))
        return out

    def _apply_server_momentum(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord | None:
        """:math:`m = \\beta m + (w_{agg} - w)/\\eta`, :math:`w' = w + \\eta m` on the float tensors
        (see the module docstring); None (round skipped, :math:`m` unchanged) if it is not finite."""
        beta, eta = self.server_momentum, self.server_lr
        global_arrays = self._global_arrays()
        momentum: dict[str, np.ndarray] = {}
        out: dict[str, Array] = {}
        for name, arr in arrays.items():
            ref = global_arrays.get(name)
            if ref is None or ref.dtype.kind != "f" or is_statistic(name):
                out[name] = arr  # integer tensors and statistics: the plain aggregate
                continue
            agg = arr.numpy()
            if agg.shape != ref.shape:
                log(logging.WARNING, "Compressed: round %d: no server momentum on %r: aggregate shape %s != %s",
                    server_round, name, agg.shape, ref.shape)
                out[name] = arr
                continue
            previous = self._momentum.get(name)
            if previous is not None and previous.shape != ref.shape:
                log(logging.WARNING, "Compressed: server momentum of %r has shape %s, the tensor %s: restarting it "
                    "from zero", name, previous.shape, ref.shape)
                previous = None
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught just below
                step = (agg.astype(ref.dtype, copy=False) - ref) / ref.dtype.type(eta)
                m = step if previous is None else ref.dtype.type(beta) * previous.astype(ref.dtype, copy=False) + step
                new = ref + ref.dtype.type(eta) * m
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(new))):
                log(logging.WARNING, "Compressed: round %d: server momentum makes %r non-finite; global model and "
                    "momentum unchanged", server_round, name)
                return None
            momentum[name] = m
            out[name] = Array(np.ascontiguousarray(new))
        self._momentum.update(momentum)
        return ArrayRecord(out)

    def _global_arrays(self) -> dict[str, np.ndarray]:
        """The global arrays sent this round (decoding needs them)."""
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to decode against")
        return self._global

    def _aggregate_weighted_mean(self, server_round: int, base: FedAvg, guards: list[ReplyGuard],
                                 replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:math:`w + \\eta \\sum_i n_i \\hat u_i / \\sum_i n_i`, each payload decoded once and added at
        its indices, in place, in the output buffers."""
        weight_key = base.weighted_by_key
        candidates, _ = self._candidates(replies, weight_key)
        accepted = self._accumulate_once(candidates, base, guards)
        min_replies = max([g.min_replies for g in guards] or [1])
        if len(accepted[0]) < min_replies:
            for guard in guards[:1]:
                guard.skip_round(server_round, len(accepted[0]))
            if not guards:
                log(logging.WARNING, "Compressed: round %d has no usable reply; global model unchanged", server_round)
            return None, None
        msgs, out = accepted
        bad = [name for name, arr in out.items() if not finite_npy(arr)]
        if bad:
            log(logging.WARNING, "Compressed: round %d aggregate of %s is not finite; global model unchanged", server_round, bad[:3])
            return None, None
        log(logging.INFO, "Compressed: aggregate_train: Received %d results and %d failures (%d dropped)",
            len(msgs), len(replies) - len(msgs), len(self._dropped))
        metrics = base.train_metrics_aggr_fn([m.content for m in msgs], weight_key)
        return ArrayRecord(out), metrics

    def _accumulate_once(self, candidates: list[Message], base: FedAvg, guards: list[ReplyGuard]
                         ) -> tuple[list[Message], dict[str, Array]]:
        """Decode every candidate once and add it, with its normalised weight, straight into the
        output buffers (a copy of :math:`w`). A reply dropped on the way (bad payload, norm bound)
        changes the normalisation: then one more pass over the survivors (decoded again)."""
        survivors: list[Message] = []
        for attempt in range(2):
            weights = self._weights(candidates, base)
            total = float(sum(weights))
            acc = {name: Accumulator(ref) for name, ref in self._global_arrays().items()}
            survivors, norms, clean = [], [], True
            for msg, weight in zip(candidates, weights, strict=True):
                decoded = self._decode(msg)
                if decoded is None:
                    clean = False
                    continue
                survivors.append(msg)
                norms.append(update_norm(decoded) * self.server_lr if guards else 0.0)  # only guards read it
                if clean:
                    for name, dec in decoded.items():
                        acc[name].add(dec, self.server_lr * weight / total)
            keep = within_norm_bounds(norms, guards) if attempt == 0 else list(range(len(survivors)))
            for i in sorted(set(range(len(survivors))) - set(keep)):
                self._drop(survivors[i], f"update norm {norms[i]:.4g} exceeds the guard's bound")
            survivors = [survivors[i] for i in keep]
            outliers = self._metric_outliers(survivors)
            survivors = [m for m in survivors if id(m) not in outliers]
            if clean and len(survivors) == len(candidates):
                return survivors, {name: a.array() for name, a in acc.items()}
            candidates = survivors
            if not candidates:
                break
        return survivors, {}

    def _weights(self, candidates: list[Message], base: FedAvg) -> list[float]:
        custom = getattr(base, "reply_weights", None)
        if callable(custom):  # a declared weighted mean with its own weights (e.g. KL weighting)
            weights = [float(w) for w in custom([m.content for m in candidates])]
        else:
            weights = [reply_weight(m.content, base.weighted_by_key) for m in candidates]
        if len(weights) != len(candidates) or not all(np.isfinite(w) and w >= 0 for w in weights) or (candidates and sum(weights) <= 0):
            raise ValueError(f"aggregation weights {weights[:5]} must be finite, >= 0, one per reply, with a positive sum")
        return weights


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"

