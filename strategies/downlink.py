"""``CompressedDownlink``: broadcast compressed steps of the global model instead of the
model.

Two-way compression as in sparse ternary compression (Sattler et al. 2019,
arXiv:1903.02891) and T-FedAvg (Xu et al. 2020): the server compresses what it sends,
not only what it receives. The wrapper keeps the model the clients hold, :math:`x_v` at
version :math:`v` (the sum of what it broadcast), beside the server's model :math:`w_t`
that the inner strategy aggregates. When the inner strategy sends a new :math:`w_t`, one
*step* is cut:

.. math::

    c_{v+1} = C(w_t - x_v), \\qquad x_{v+1} = x_v + \\hat c_{v+1},

:math:`C` an upload codec of :mod:`bouquet.codecs` (top-k, STC, TernGrad) and
:math:`\\hat c` its decoded payload. The server's residual :math:`w_t - x_{v+1}` is what
the step left out; it is carried into the next step implicitly (error feedback with
decay 1), because the next step compresses the whole difference again. Both ends add
steps with :func:`bouquet.codecs.sync.apply_step`, so a client's rebuilt copy equals
:math:`x_v` bit for bit; every message names the version and a 64-bit digest of
:math:`x_v`.

What a node is sent (each node's last *confirmed* version :math:`s`, confirmed by the
digest in its train reply):

* :math:`s = v`: no arrays (the node holds the model);
* the steps :math:`s+1, \\dots, v` in order, when the history still holds them and their
  bytes are fewer than the dense model's (a node that missed rounds catches up; steps
  are sent as they were cut, not merged, because a float sum of steps would not rebuild
  :math:`x_v` exactly);
* otherwise (new node, history too short, a mismatch or a resync error) the dense
  :math:`x_v` as Flower's ordinary arrays, so a client without the mod still trains on
  it.

The history keeps the most recent steps whose bytes add up to at most the dense model's
(a longer catch-up is never sent): at most one model size of memory, plus :math:`x_v`,
plus one version number per node seen.

Per round, the aggregated train ``MetricRecord`` gets ``bouquet-bytes-down`` (the
``Array`` bytes of the train messages built), ``bouquet-dense-bytes-down`` (the same
messages with the dense model), ``bouquet-catchup-bytes`` and
``bouquet-sync-mismatches``, so a plain Flower app sees both directions in its
``Result``.

Replies: the client mod (:func:`bouquet.clients.downlink_mod`) adds a ``ConfigRecord``
``bouquet-downlink`` holding the digest of the model it trained from; the wrapper
removes it before the inner strategy sees the reply. A digest that differs from what was
sent counts as a *sync mismatch*: the reply is dropped (it was trained from an unknown
model) and the node gets the dense model next time. A client that cannot rebuild replies
with an error naming ``bouquet-downlink-resync``; that node gets the dense model next
time too. A dense reply (full weights, Flower's stype) is moved onto the server's model,
:math:`w_i + (w_t - x_v)`, so the inner strategy reads it as trained from :math:`w_t`;
compressed updates need nothing.

The model the clients hold is :meth:`held_model`; bouquet's runner evaluates it (not
:math:`w_t`), so accuracies are those of a model a client has. Flower's ``evaluate_fn``
given to ``start()`` by a plain app sees :math:`w_t`. Evaluation messages
(``configure_evaluate``) are sent dense, as the inner strategy built them.
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
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet import keys
from bouquet.codecs import UpdateCompressor
from bouquet.strategies.client_errors import log_client_error
from bouquet.strategies.downlink_model import HeldModel
from bouquet.strategies.downlink_model import broadcast_key
from bouquet.strategies.downlink_model import downlink_compressor
from bouquet.strategies.downlink_model import step_record
from bouquet.strategies.downlink_model import step_record_key
from bouquet.strategies.downlink_model import strip_reply
from bouquet.strategies.reports import CLIENTS_DROPPED
from bouquet.strategies.reports import DROP_REASONS
from bouquet.strategies.reports import record_drop
from bouquet.strategies.wrapper import StrategyWrapper
from bouquet.strategies.wrapper import log_summary
from bouquet.strategies.wrapper import refuse_twice

# marker in a client error reason: it could not rebuild the model
RESYNC = keys.DOWNLINK_RESYNC


# per-round counters of the broadcast (reset by every configure_train)
ROUND_COUNTERS = (
    "mismatches",
    "catchup_bytes",
    "dense_sends",
    "bytes_down",
    "dense_down",
)


class CompressedDownlink(StrategyWrapper):
    """Broadcast compressed steps of the global model around ``strategy`` (see module
    docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message-API strategy whose train messages carry the one global model it was
        given (``Compressed(...)`` for compressed uploads goes inside).
    compressor : UpdateCompressor or str
        The downlink codec: a compressor, or ``topk`` / ``stc`` / ``ternary`` built with
        ``codec_kwargs`` (e.g. ``alpha=0.01``). Its own error feedback is not used: the
        server's residual is carried by construction.
    seed : int
        Seed of the codec's stochastic rounding (mixed with the version).
    initial_known : bool
        Every client can build the initial model itself (e.g. from the run's seed, as
        ``bouquet-sim`` clients do; give the mod ``DownlinkMod(initial=...)``). A node
        the server has not served yet then gets the steps since the initial model
        instead of the dense model, while those are smaller; the client checks the
        initial model's digest first.
    """

    def __init__(
        self,
        strategy: Strategy,
        compressor: UpdateCompressor | str = "topk",
        *,
        seed: int = 0,
        initial_known: bool = False,
        **codec_kwargs: Any,
    ) -> None:
        compressor = downlink_compressor(compressor, codec_kwargs)
        refuse_twice(strategy, CompressedDownlink, "wrap a strategy in it once")
        super().__init__(strategy)
        self.compressor = compressor
        self.seed = int(seed)
        self.initial_known = bool(initial_known)
        self._held = HeldModel(compressor, self.seed)
        self._nodes: dict[int, int] = {}  # node -> confirmed version
        self._resync: set[int] = set()  # nodes out of sync: the dense model next time
        # node -> (version, digest, dense) this round
        self._sent: dict[int, tuple[int, str, bool]] = {}
        self._dropped: list[str] = []
        self._round = dict.fromkeys(ROUND_COUNTERS, 0)
        self.sync_mismatches = 0
        self._warned_no_mod: set[int] = set()
        self._explained: set[str] = set()  # set-up mistakes already logged

    def summary(self) -> None:
        log_summary(self, f"CompressedDownlink({self.compressor.codec})")

    # ----------------------------------------------------------- the model clients hold
    def held_model(self, arrays: ArrayRecord) -> ArrayRecord:
        """The model the clients will hold once ``arrays`` (the server's model) is
        broadcast."""
        self._advance(arrays)
        return ArrayRecord(
            {
                name: Array(np.array(a, copy=True))
                for name, a in self._held.arrays.items()
            }
        )

    @property
    def version(self) -> int:
        """Version :math:`v` of the held model (0 before the first broadcast)."""
        return self._held.version

    def _advance(self, arrays: ArrayRecord) -> None:
        """Cut the step towards ``arrays``; a new layout resets the node table."""
        if self._held.advance(arrays):
            self._nodes.clear()

    # ------------------------------------------------------------------ broadcast
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._advance(arrays)
        self._sent = {}
        self._round = dict.fromkeys(ROUND_COUNTERS, 0)
        out = []
        for msg in self.strategy.configure_train(server_round, arrays, config, grid):
            out.append(self._compress_message(msg, arrays))
        return out

    def _compress_message(self, msg: Message, arrays: ArrayRecord) -> Message:
        content = msg.content
        rec_key = broadcast_key(content, arrays, self._held.server_digest)
        record = content.array_records[rec_key]
        node = int(msg.metadata.dst_node_id)
        new = RecordDict()
        for key, value in content.items():
            if key != rec_key:
                new[key] = value
        base = self._nodes.get(node)
        if (
            base is None
            and self.initial_known
            and 1 in self._held.digests
            and node not in self._resync
        ):
            base = 1  # a new node builds the initial model itself (digest checked)
        steps = self._held.catchup(base)
        dense = steps is None
        if dense:
            new[rec_key] = self._held.dense_record()
            self._round["dense_sends"] += 1
            self._resync.discard(node)
        else:
            for version, payloads, nbytes in steps or []:
                new[step_record_key(version)] = step_record(payloads)
                if len(steps or []) > 1:  # more than this round's step: catching up
                    self._round["catchup_bytes"] += nbytes
        new[keys.DOWNLINK] = ConfigRecord(
            {
                "version": self._held.version,
                "base": 0 if dense else int(base or 0),
                "digest": self._held.digest,
                "base-digest": ""
                if dense
                else self._held.digests.get(int(base or 0), ""),
                "kind": "dense" if dense else "steps",
                "record": rec_key,
            }
        )
        self._sent[node] = (self._held.version, self._held.digest, dense)
        self._round["bytes_down"] += sum(
            len(a.data) for r in new.array_records.values() for a in r.values()
        )
        self._round["dense_down"] += sum(len(a.data) for a in record.values())
        msg.content = new
        return msg

    # ------------------------------------------------------------------ replies
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self._dropped = []
        kept = []
        for msg in replies:
            checked = self._check_reply(msg)
            if checked is not None:
                kept.append(checked)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        self.sync_mismatches += self._round["mismatches"]
        if metrics is not None:
            metrics[keys.SYNC_MISMATCHES] = self._round["mismatches"]
            metrics[keys.CATCHUP_BYTES] = self._round["catchup_bytes"]
            metrics[keys.BYTES_DOWN] = self._round["bytes_down"]
            metrics[keys.DENSE_BYTES_DOWN] = self._round["dense_down"]
        return arrays, metrics

    def _check_reply(self, msg: Message) -> Message | None:
        node = int(msg.metadata.src_node_id)
        sent = self._sent.get(node)
        if msg.has_error():
            reason = str(msg.error.reason)
            if sent is not None and RESYNC in reason:
                self._mismatch(node, "the client could not rebuild the broadcast model")
            else:
                log_client_error("CompressedDownlink", node, reason, self._explained)
            return msg
        if sent is None:  # not ours to judge: the inner strategy decides
            return strip_reply(msg, self._held)
        version, digest, dense = sent
        record = msg.content.config_records.get(keys.DOWNLINK)
        got = record.get("digest") if record is not None else None
        if got is None:
            if dense:
                if node not in self._warned_no_mod:
                    self._warned_no_mod.add(node)
                    log(
                        logging.WARNING,
                        "CompressedDownlink: node %s replies without a downlink "
                        "digest (no downlink_mod?): it gets the model dense",
                        node,
                    )
                return strip_reply(msg, self._held)
            self._drop(
                node,
                "no downlink digest in a reply to compressed steps (is downlink_mod "
                "installed?)",
            )
            self._nodes.pop(node, None)
            self._resync.add(node)
            return None
        if got != digest:
            self._mismatch(
                node,
                f"trained from a model with digest {str(got)[:32]!r}, the "
                f"broadcast's is {digest!r}",
            )
            self._drop(
                node, "sync mismatch: trained from another model than the broadcast"
            )
            return None
        self._nodes[node] = version
        return strip_reply(msg, self._held)

    def _mismatch(self, node: int, why: str) -> None:
        self._round["mismatches"] += 1
        self._nodes.pop(node, None)
        self._resync.add(node)
        log(
            logging.WARNING,
            "CompressedDownlink: node %s out of sync (%s): it gets the dense model "
            "next time",
            node,
            why,
        )

    def _drop(self, node: int, reason: str) -> None:
        record_drop("CompressedDownlink", node, reason, self._dropped)

    # ---------------------------------------------------------------- reports and state
    def own_report(self) -> dict[str, Any]:
        own: dict[str, Any] = {
            CLIENTS_DROPPED: len(self._dropped),
            DROP_REASONS: list(self._dropped),
            "sync_mismatches": self._round["mismatches"],
            "catchup_bytes": self._round["catchup_bytes"],
            "dense_sends": self._round["dense_sends"],
            "downlink_version": self._held.version,
        }
        self._dropped = []
        return own

    def state_dict(self) -> dict[str, Any]:
        """Version and held model (the step history and node table are not kept: after a
        resume every node gets the dense model once)."""
        return {**self._held.state_dict(), "sync_mismatches": self.sync_mismatches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (``ValueError`` if it is not one)."""
        self._held.load_state_dict(state)
        self._nodes.clear()
        self._resync.clear()
        self.sync_mismatches = int(state.get("sync_mismatches", 0))
