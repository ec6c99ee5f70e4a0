"""An in-process Flower ``Grid`` for tests: the real ``ClientApp`` answers every
message, no Ray.

:class:`InProcessGrid` duck-types :class:`flwr.serverapp.Grid` (``get_node_ids``,
``push_messages``, ``pull_messages``, ``send_and_receive``). Every pushed message goes
through Flower's wire format (``message_to_proto`` / ``message_from_proto``) to the
node's ``ClientApp``, called as ``client_app(message, context)`` with one persistent
``Context`` per node (``partition-id`` / ``num-partitions`` in its node config,
``context.state`` kept across messages), and the reply comes back through the wire
format too. An exception in the ``ClientApp`` becomes an error reply, as in Flower's
runtime, and is kept in :attr:`InProcessGrid.errors` so that a test can show it.

Everything the nodes saw and sent is kept in :attr:`InProcessGrid.log` (one
:class:`Delivery` per message) for assertions: the arrays and config each node received,
the reply's arrays (with their ``stype``) and metrics, and how long the ``ClientApp``
took.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from flwr.app import Array
from flwr.app import Context
from flwr.app import Error
from flwr.app import Message
from flwr.app import RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto
from flwr.common.serde import message_to_proto

from bouquet import keys


@dataclass
class Delivery:
    """One message delivered to a node and what the node answered."""

    node_id: int
    message_type: str
    received: dict[str, Array]
    config: dict[str, Any]
    reply_arrays: dict[str, Array] = field(default_factory=dict)
    reply_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def received_bytes(self) -> int:
        """Bytes of the arrays the node received."""
        return sum(len(a.data) for a in self.received.values())

    @property
    def reply_bytes(self) -> int:
        """Bytes of the arrays the node sent back."""
        return sum(len(a.data) for a in self.reply_arrays.values())


def _wire(message: Message) -> Message:
    """``message`` after a trip through Flower's wire format."""
    return message_from_proto(message_to_proto(message))


class InProcessGrid:
    """A ``Grid`` whose nodes run ``client_app`` in this process (see the module
    docstring).

    Parameters
    ----------
    client_app : flwr.clientapp.ClientApp
        The ClientApp every node runs.
    num_nodes : int
        Number of nodes; node ``i`` has ``partition-id`` ``i``.
    first_node_id : int
        Node ids are ``first_node_id + i`` (not the partition ids, so a mix-up shows).
    """

    def __init__(
        self, client_app: ClientApp, num_nodes: int, *, first_node_id: int = 101
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes={num_nodes} must be >= 1")
        self.client_app = client_app
        self.node_ids = [first_node_id + i for i in range(num_nodes)]
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={keys.PARTITION_ID: i, keys.NUM_PARTITIONS: num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self.log: list[Delivery] = []
        self.errors: list[str] = []
        self._ready: dict[str, Message] = {}
        self._count = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver every message to its node now; its reply waits for
        :meth:`pull_messages`."""
        ids = []
        for msg in messages:
            self._count += 1
            mid = f"msg-{self._count}"
            msg.metadata.__dict__["_message_id"] = mid
            self._ready[mid] = self._deliver(_wire(msg))
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids`` that have not been pulled yet."""
        return [self._ready.pop(mid) for mid in list(message_ids) if mid in self._ready]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def deliveries(self, message_type: str) -> list[Delivery]:
        """The deliveries of one message type (``"train"``, ``"evaluate"``)."""
        return [d for d in self.log if d.message_type == message_type]

    def _deliver(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if node not in self.contexts:
            raise ValueError(
                f"message for node {node}; this grid has nodes {self.node_ids}"
            )
        content = msg.content
        config = next(iter(content.config_records.values()), {})
        delivery = Delivery(
            node_id=node,
            message_type=msg.metadata.message_type,
            received={
                k: v for rec in content.array_records.values() for k, v in rec.items()
            },
            config=dict(config),
        )
        self.log.append(delivery)
        start = time.perf_counter()
        try:
            reply = self.client_app(msg, self.contexts[node])
        except Exception as exc:  # noqa: BLE001 - Flower's runtime turns this into an error reply
            delivery.error = f"{type(exc).__name__}: {exc}"
            self.errors.append(
                f"node {node} ({delivery.message_type}): {traceback.format_exc()}"
            )
            reply = Message(Error(code=0, reason=delivery.error), reply_to=msg)
        delivery.seconds = time.perf_counter() - start
        reply = _wire(reply)
        if not reply.has_error():
            delivery.reply_arrays = {
                k: v
                for rec in reply.content.array_records.values()
                for k, v in rec.items()
            }
            delivery.reply_metrics = {
                k: v
                for rec in reply.content.metric_records.values()
                for k, v in rec.items()
            }
        elif delivery.error is None:
            delivery.error = reply.error.reason
        return reply
