"""``SharedSupport``: the server side of ``client=shared_topk``, with secure aggregation
(``privacy=secagg``).

Each round the wrapper puts the seed and size :math:`k` of the round's shared
coordinates in the train config (:mod:`bouquet.codecs.shared_topk`: a seeded random set
of the model's floating-point values, the same on every client); each client answers
with one vector of :math:`k` values.

* ``secure=False``: every reply is scattered back into a dense model :math:`w + v_i`
  (zero elsewhere) and handed to the inner strategy (FedAvg's weighted mean, FedProx,
  ...).
* ``secure=True`` (pairwise masking, Bonawitz et al. 2017, arXiv:1611.04482, without its
  secret-sharing recovery): before the round the server asks every sampled node for a
  fresh X25519 public key (a query message, answered by ``secagg_key_mod``) and sends
  all of them with the train messages; each client uploads fixed-point values plus masks
  that cancel only in the sum of all peers. The server adds the masked vectors modulo
  :math:`2^{32}` and hands the inner strategy *one* reply,
  :math:`w + \\frac{1}{n}\\sum_i v_i` (an unweighted mean: the sum is all it learns). A
  missing, failed or malformed reply of any peer voids the round (its masks cannot be
  removed without the recovery step): global model unchanged, logged at WARNING. Fewer
  than ``min_peers`` nodes with keys: no training that round. Train metrics (loss,
  example counts) travel in the clear.

Every reply is hostile: identity (one reply per message sent this round, from its node),
array name, dtype, shape and length are checked before anything is read; a bad reply is
dropped with its reason (under secure aggregation that voids the round).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy import Strategy

from bouquet import keys
from bouquet.checks import require_integer
from bouquet.checks import require_number
from bouquet.codecs.shared_topk import KEY_BYTES
from bouquet.codecs.shared_topk import from_fixed
from bouquet.codecs.shared_topk import shared_indices
from bouquet.codecs.shared_topk import shared_k
from bouquet.strategies.decoding import check_record
from bouquet.strategies.decoding import dense_view
from bouquet.strategies.decoding import reference_arrays
from bouquet.strategies.decoding import single_array_record
from bouquet.strategies.reports import CLIENTS_DROPPED
from bouquet.strategies.reports import DROP_REASONS
from bouquet.strategies.reports import record_drop
from bouquet.strategies.reports import truncate_reason
from bouquet.strategies.screening import SentMessages
from bouquet.strategies.screening import node_label
from bouquet.strategies.wrapper import StrategyWrapper
from bouquet.strategies.wrapper import innermost
from bouquet.strategies.wrapper import weight_key_of

SECAGG_PEERS_REPORT = "secagg_peers"


class SharedSupport(StrategyWrapper):
    """Shared coordinates for every client, summed securely when ``secure`` (see module
    docstring).

    Parameters
    ----------
    strategy : Strategy
        The aggregation rule of the dense replies (``secure=False``) or of the one
        summed reply.
    alpha : float
        Fraction of the model's floating-point values sent each round, in (0, 1].
    min_k : int
        At least this many coordinates.
    secure : bool
        Pairwise-masked secure aggregation.
    seed : int
        Seed of the coordinates (mixed with the round).
    key_timeout : float
        Seconds to wait for the nodes' public keys.
    min_peers : int
        Fewest nodes a secure round may have (>= 2: the "sum" of one node is its
        update).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        alpha: float,
        min_k: int = 1,
        secure: bool = False,
        seed: int = 0,
        key_timeout: float = 60.0,
        min_peers: int = 2,
    ) -> None:
        require_number(alpha, "alpha", "(0, 1]")
        require_integer(min_peers, "min_peers", 2)
        super().__init__(strategy)
        self.alpha, self.min_k, self.secure, self.seed = (
            float(alpha),
            int(min_k),
            bool(secure),
            int(seed),
        )
        self.key_timeout, self.min_peers = float(key_timeout), min_peers
        self._global: dict[str, np.ndarray] = {}
        self._k = 0
        self._round = 1
        self._peers: list[int] = []
        self._sent = SentMessages()
        self._dropped: list[str] = []
        self.inner_replies: int | None = (
            None  # how many replies the inner strategy got last round (tests)
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = reference_arrays(arrays)
        self._round = int(server_round)
        total = sum(int(a.size) for a in self._global.values() if a.dtype.kind == "f")
        self._k = shared_k(total, self.alpha, self.min_k)
        config[keys.SHARED_SEED], config[keys.SHARED_K] = self.seed, self._k
        messages = list(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )
        if self.secure and messages:
            messages = self._exchange_keys(server_round, messages, grid)
        return self._sent.remember(messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        kept, wrong = self._sent.screen(list(replies))
        for msg, reason in wrong:
            self._drop(msg, reason)
        errors = [m for m in kept if m.has_error()]
        vectors: list[tuple[Message, np.ndarray]] = []
        for msg in kept:
            if not msg.has_error():
                try:
                    vectors.append((msg, self._vector(msg)))
                except Exception as exc:  # noqa: BLE001 - any failure of one reply is that reply's drop
                    self._drop(
                        msg,
                        str(exc)
                        if isinstance(exc, ValueError)
                        else f"{type(exc).__name__}: {exc}",
                    )
        if not self.secure:
            dense = []
            for msg, vec in vectors:
                try:
                    dense.append(self._dense_reply(msg, vec.astype(np.float64)))
                except ValueError as exc:
                    self._drop(msg, str(exc))
            self.inner_replies = len(dense) + len(errors)
            return self.strategy.aggregate_train(server_round, dense + errors)
        came = {int(m.metadata.src_node_id) for m, _ in vectors}
        if not vectors or came != set(self._peers):
            missing = sorted(set(self._peers) - came)
            log(
                logging.WARNING,
                "SharedSupport: round %d: secure aggregation needs the masked vector "
                "of every peer; "
                "%d of %d came (missing nodes %s): round skipped, global model "
                "unchanged (no dropout recovery)",
                server_round,
                len(came),
                len(self._peers),
                truncate_reason(str(missing)),
            )
            self.inner_replies = 0
            return None, None
        total = np.zeros(self._k, dtype=np.uint32)
        for _, vec in vectors:
            total += vec  # uint32: modulo 2^32, the masks cancel
        mean = from_fixed(total) / len(vectors)
        synthetic = self._dense_reply(
            vectors[0][0], mean, self._train_metrics([m for m, _ in vectors])
        )
        log(
            logging.INFO,
            "SharedSupport: round %d: secure sum of %d masked vectors of %d values",
            server_round,
            len(vectors),
            self._k,
        )
        self.inner_replies = 1
        return self.strategy.aggregate_train(server_round, [synthetic])

    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = (
            {SECAGG_PEERS_REPORT: len(self._peers)} if self.secure else {}
        )
        if self._dropped:
            own[CLIENTS_DROPPED], own[DROP_REASONS] = (
                len(self._dropped),
                list(self._dropped),
            )
        self._dropped = []
        return own

    # ------------------------------------------------------------------ internals
    def _drop(self, msg: Message, reason: str) -> None:
        record_drop("SharedSupport", node_label(msg), reason, self._dropped)

    def _exchange_keys(
        self, server_round: int, messages: list[Message], grid: Grid
    ) -> list[Message]:
        """Ask the sampled nodes for their public keys; train only those that gave
        one."""
        nodes = [int(m.metadata.dst_node_id) for m in messages]
        queries = [
            Message(
                RecordDict(
                    {
                        keys.CONFIG: ConfigRecord(
                            {
                                keys.SECAGG_QUERY: server_round,
                                keys.SERVER_ROUND: server_round,
                            }
                        )
                    }
                ),
                dst_node_id=n,
                message_type=MessageType.QUERY,
            )
            for n in nodes
        ]
        publics: dict[int, bytes] = {}
        for reply in grid.send_and_receive(queries, timeout=self.key_timeout):
            src = int(reply.metadata.src_node_id)
            if reply.has_error() or src not in nodes or src in publics:
                continue
            public = reply.content.config_records.get(keys.CONFIG, ConfigRecord()).get(
                keys.SECAGG_PUBLIC
            )
            if isinstance(public, bytes) and len(public) == KEY_BYTES:
                publics[src] = public
        self._peers = sorted(publics)
        if len(self._peers) < self.min_peers:
            log(
                logging.WARNING,
                "SharedSupport: round %d: %d of %d nodes gave a key, fewer than "
                "min_peers=%d: no "
                "training this round",
                server_round,
                len(self._peers),
                len(nodes),
                self.min_peers,
            )
            self._peers = []
            return []
        if len(self._peers) < len(nodes):
            log(
                logging.WARNING,
                "SharedSupport: round %d: %d of %d nodes gave no key and are left out",
                server_round,
                len(nodes) - len(self._peers),
                len(nodes),
            )
        out = [m for m in messages if int(m.metadata.dst_node_id) in publics]
        for msg in out:
            config = msg.content.config_records[keys.CONFIG]
            config[keys.SECAGG_PEERS] = list(self._peers)
            config[keys.SECAGG_PUBLIC] = [publics[n] for n in self._peers]
        return out

    def _vector(self, msg: Message) -> np.ndarray:
        """The reply's one vector, checked (name, dense stype, dtype, shape) before it
        is read."""
        record = single_array_record(msg.content)
        dtype = np.dtype(np.uint32 if self.secure else np.float32)
        check_record(
            record, {keys.SHARED_ARRAY: np.empty(self._k, dtype)}, dense_only=True
        )
        arr = record[keys.SHARED_ARRAY]
        if np.dtype(arr.dtype) != dtype:
            raise ValueError(
                f"array {keys.SHARED_ARRAY!r} has dtype {arr.dtype}, expected {dtype}"
            )
        vec = np.array(dense_view(arr), copy=True)
        if not self.secure and not np.all(np.isfinite(vec)):
            raise ValueError("the shared values are not finite")
        return vec

    def _dense_reply(
        self, msg: Message, values: np.ndarray, metrics: MetricRecord | None = None
    ) -> Message:
        """``msg`` as a dense model: the global arrays plus ``values`` at the round's
        coordinates."""
        total = sum(int(a.size) for a in self._global.values() if a.dtype.kind == "f")
        delta = np.zeros(total)
        delta[shared_indices(total, self._k, self.seed, self._round)] = values
        arrays, offset = {}, 0
        for name, ref in self._global.items():
            if ref.dtype.kind != "f":
                arrays[name] = Array(np.array(ref, copy=True))
                continue
            part = delta[offset : offset + ref.size].reshape(ref.shape)
            offset += ref.size
            arrays[name] = Array((ref.astype(np.float64) + part).astype(ref.dtype))
        content = RecordDict({keys.ARRAYS: ArrayRecord(arrays)})
        content[keys.METRICS] = (
            metrics if metrics is not None else single_metric_record(msg)
        )
        return Message(metadata=msg.metadata, content=content)  # type: ignore[call-overload]

    def _train_metrics(self, msgs: list[Message]) -> MetricRecord:
        """The train metrics of the summed reply: the inner FedAvg's aggregation of the
        replies' (in
        the clear), with weight 1."""
        base = innermost(self.strategy)
        metrics = MetricRecord()
        if isinstance(base, FedAvg):
            try:
                metrics = base.train_metrics_aggr_fn(
                    [m.content for m in msgs], base.weighted_by_key
                )
            except Exception as exc:  # noqa: BLE001 - odd metrics cost the metrics, not the round
                log(
                    logging.WARNING,
                    "SharedSupport: train metrics not aggregated (%s)",
                    truncate_reason(str(exc)),
                )
        metrics[weight_key_of(self.strategy)] = 1
        return metrics


def single_metric_record(msg: Message) -> MetricRecord:
    """The reply's one MetricRecord (``ValueError`` otherwise)."""
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        raise ValueError(
            f"a reply needs exactly one MetricRecord, it has {len(records)}"
        )
    return records[0]
