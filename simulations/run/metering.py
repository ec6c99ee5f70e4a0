"""A ``Grid`` wrapper that measures what really crosses the wire.

:class:`MeteredGrid` forwards every call to the wrapped Flower ``Grid`` and counts, per
period (a round, or an evaluation interval of an asynchronous run):

* ``bytes_down``: bytes of ``Array.data`` in every message pushed (one count per
  destination node, as each node receives its own copy);
* ``bytes_up``: bytes of ``Array.data`` in every reply pulled;
* ``clients_ok`` / ``clients_failed``: train replies without / with an error, plus train
  messages that got no reply before the timeout (counted as failed);
* the sum of the clients' reported ``train-time-s`` and the example-weighted
  ``train-loss``.

Because it sits between any strategy and Flower's grid, the figures are the same for
Flower's own strategies, bouquet's wrappers and custom ``start()`` loops.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.app import MessageType
from flwr.common.logger import log
from flwr.serverapp import Grid

from bouquet import keys

# first and longest pause between two pulls for pending replies
PULL_PAUSE_S = (0.01, 0.1)
MAX_REASONS = 1000  # error reasons kept per period (each cut to 300 characters)


class NodesUnavailable(RuntimeError):
    """Too few nodes connected for longer than the configured wait."""


def message_array_bytes(msg: Message) -> int:
    """Bytes of all ``Array.data`` payloads in a message (0 for an error reply)."""
    if msg.has_error():
        return 0
    return sum(
        len(arr.data)
        for rec in msg.content.array_records.values()
        for arr in rec.values()
    )


@dataclass
class Period:
    """Counters of one measuring period."""

    bytes_up: int = 0
    bytes_down: int = 0
    clients_ok: int = 0
    clients_failed: int = 0
    train_messages: int = 0
    client_train_s: float = 0.0
    train_loss_sum: float = 0.0
    train_examples: int = 0
    first_reply_at: float | None = (
        None  # time.perf_counter() of the period's first train reply
    )
    # of the train error replies (cut, at most MAX_REASONS)
    error_reasons: list[str] = field(default_factory=list)

    @property
    def train_loss(self) -> float | None:
        return (
            self.train_loss_sum / self.train_examples if self.train_examples else None
        )


class MeteredGrid(Grid):
    """Wrap a Flower ``Grid`` and count bytes and client outcomes (see module
    docstring)."""

    def __init__(
        self,
        grid: Grid,
        node_wait_s: float | None = None,
        node_ids: Iterable[int] | None = None,
    ) -> None:
        self._grid = grid
        self.node_wait_s = node_wait_s
        self.node_ids = (
            None if node_ids is None else frozenset(int(n) for n in node_ids)
        )
        self.ignored_nodes: set[int] = set()
        self.period = Period()
        self.total = Period()
        self._pending_train: set[str] = set()
        self._waiting_since: float | None = None

    # --- delegation --------------------------------------------------------
    def set_run(self, run: Any) -> None:  # type: ignore[override]
        self._grid.set_run(run)

    @property
    def run(self) -> Any:  # type: ignore[override]
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # type: ignore[override]
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Forward; and bound the wait for nodes.

        Flower's samplers poll ``get_node_ids()`` once a second, forever, until
        ``min_available_nodes`` are connected. Polls that keep coming without a push in
        between for longer than ``node_wait_s`` raise :class:`NodesUnavailable` instead.
        """
        ids = self._allowed(self._grid.get_node_ids())
        if self.node_wait_s is not None:
            now = time.monotonic()
            if self._waiting_since is None:
                self._waiting_since = now
            elif now - self._waiting_since > self.node_wait_s:
                raise NodesUnavailable(
                    f"waited {self.node_wait_s:.0f} s (simulation.node_wait_s) for "
                    "nodes; "
                    f"{len(ids)} connected, fewer than the strategy's "
                    "min_available_nodes"
                )
        return ids

    def _allowed(self, ids: Iterable[int]) -> list[int]:
        """``ids`` without the nodes outside ``simulation.node_ids`` (each named once,
        at WARNING)."""
        ids = list(ids)
        if self.node_ids is None:
            return ids
        for node in ids:
            if node not in self.node_ids and node not in self.ignored_nodes:
                self.ignored_nodes.add(node)
                log(
                    WARNING,
                    "node %d is connected but not in simulation.node_ids: it is "
                    "never sampled "
                    "and nothing is sent to it",
                    node,
                )
        return [n for n in ids if n in self.node_ids]

    def get_nodes(self) -> Iterable[Any]:  # type: ignore[override]
        nodes = list(self._grid.get_nodes())
        if self.node_ids is None:
            return nodes
        allowed = set(self._allowed(getattr(n, "node_id", n) for n in nodes))
        return [n for n in nodes if getattr(n, "node_id", n) in allowed]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    # --- metering ------------------------------------------------------------
    def wait_for_nodes(
        self, num_nodes: int, timeout_s: float, poll_s: float = 0.5
    ) -> int:
        """Wait until ``num_nodes`` nodes are connected; return how many are.

        Raises
        ------
        NodesUnavailable
            If fewer are connected after ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            have = len(self._allowed(self._grid.get_node_ids()))
            if have >= num_nodes:
                return have
            if time.monotonic() >= deadline:
                raise NodesUnavailable(
                    f"only {have} of the {num_nodes} nodes the strategy needs "
                    "(min_available_nodes) "
                    f"connected within {timeout_s:.0f} s (simulation.node_wait_s); "
                    "start more "
                    "SuperNodes or lower simulation.num_clients"
                )
            time.sleep(poll_s)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._waiting_since = None
        messages = list(messages)
        if self.node_ids is not None:
            outside = sorted({m.metadata.dst_node_id for m in messages} - self.node_ids)
            if outside:  # a strategy that did not sample through get_node_ids()
                raise ValueError(
                    f"refusing to send to node(s) {outside}: not in simulation.node_ids"
                )
        ids = list(self._grid.push_messages(messages))
        for msg, mid in zip(messages, ids, strict=False):
            b = message_array_bytes(msg)
            self.period.bytes_down += b
            self.total.bytes_down += b
            if msg.metadata.message_type == MessageType.TRAIN and mid:
                self._pending_train.add(mid)
                self.period.train_messages += 1
                self.total.train_messages += 1
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            self._count_reply(reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        # Implemented with our own push/pull so every byte is metered.
        ids = [mid for mid in self.push_messages(messages) if mid]
        pending = set(ids)
        replies: list[Message] = []
        end = None if timeout is None else time.time() + timeout
        pause = PULL_PAUSE_S[0]
        while pending and (end is None or time.time() < end):
            got = list(self.pull_messages(pending))
            for r in got:
                pending.discard(r.metadata.reply_to_message_id)
            replies.extend(got)
            # replies come in bursts: ask again soon after one, back off while none come
            if pending:
                pause = PULL_PAUSE_S[0] if got else min(2 * pause, PULL_PAUSE_S[1])
                time.sleep(pause)
        self.abandon(pending)
        return replies

    def abandon(self, message_ids: Iterable[str]) -> None:
        """Count train messages that will not be waited for any more as failed."""
        for mid in message_ids:
            if mid in self._pending_train:
                self._pending_train.discard(mid)
                self.period.clients_failed += 1
                self.total.clients_failed += 1

    def _count_reply(self, reply: Message) -> None:
        b = message_array_bytes(reply)
        self.period.bytes_up += b
        self.total.bytes_up += b
        mid = reply.metadata.reply_to_message_id
        if mid not in self._pending_train:
            return
        self._pending_train.discard(mid)
        now = time.perf_counter()
        for p in (self.period, self.total):
            if p.first_reply_at is None:
                p.first_reply_at = now
            if reply.has_error():
                p.clients_failed += 1
                if len(p.error_reasons) < MAX_REASONS:
                    p.error_reasons.append(str(reply.error.reason)[:300])
                continue
            p.clients_ok += 1
            for rec in reply.content.metric_records.values():
                n = rec.get(keys.NUM_EXAMPLES, 0)
                loss = rec.get(keys.TRAIN_LOSS)
                train_s = rec.get(keys.TRAIN_TIME, 0.0)
                p.client_train_s += (
                    float(train_s) if isinstance(train_s, int | float) else 0.0
                )
                if isinstance(n, (int, float)) and isinstance(loss, (int, float)):
                    p.train_loss_sum += float(loss) * float(n)
                    p.train_examples += int(n)

    def take_period(self) -> Period:
        """Return the counters since the last call and start a new period."""
        period, self.period = self.period, Period()
        return period
