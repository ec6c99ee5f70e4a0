"""simulations/run/engine_poll.py: Flower's simulation message loop, visiting only nodes
with mail."""

from __future__ import annotations

import random
import threading
from queue import Queue
from types import SimpleNamespace

from bouquet.simulations.run import engine_poll


class OneTick:
    """An f_stop that lets the loop run exactly ``ticks`` times."""

    def __init__(self, ticks: int = 1) -> None:
        self.left = ticks

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0

    def wait(self, _s: float) -> None:
        pass


class StoreState:
    """The parts of Flower's InMemoryLinkState the loops use: a message store, its lock,
    and ``get_message_ins`` with Flower's semantics (undelivered, for that node, marked
    delivered)."""

    def __init__(self, messages: list[tuple[str, int]]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {
            mid: SimpleNamespace(
                mid=mid, metadata=SimpleNamespace(dst_node_id=node, delivered_at="")
            )
            for mid, node in messages
        }
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int | None = None) -> list:
        self.asked.append(node_id)
        out = []
        with self.lock:
            for msg in self.message_ins_store.values():
                if (
                    msg.metadata.dst_node_id == node_id
                    and msg.metadata.delivered_at == ""
                ):
                    out.append(msg)
                if limit and len(out) == limit:
                    break
        for msg in out:
            msg.metadata.delivered_at = "now"
        return out


def _flowers_loop():
    loop = engine_poll.flowers_loop()
    assert loop is not engine_poll.add_pending_messages_to_queue
    assert loop.__module__ == "flwr.server.superlink.fleet.vce.vce_api"
    return loop


def _deliver(loop, messages, nodes, ticks):
    state = StoreState(messages)
    queue: Queue = Queue()
    loop(state, queue, {n: i for i, n in enumerate(nodes)}, OneTick(ticks))
    return [m.mid for m in list(queue.queue)], state.asked


def test_same_messages_in_the_same_order_as_flowers_loop() -> None:
    flowers = _flowers_loop()
    rng = random.Random(0)
    for trial in range(30):
        nodes = rng.sample(range(1, 10**6), rng.randint(1, 300))
        messages = [
            (f"m{trial}-{i}", rng.choice(nodes + [999_999_999]))
            for i in range(rng.randint(0, 40))
        ]
        for ticks in (1, 2, 5):
            theirs, asked_all = _deliver(flowers, messages, nodes, ticks)
            ours, asked_pending = _deliver(
                engine_poll.add_pending_messages_to_queue, messages, nodes, ticks
            )
            assert ours == theirs, (trial, ticks)
            assert len(asked_all) == ticks * len(nodes)
            # only nodes with mail
            assert set(asked_pending) <= {n for _, n in messages}


def test_a_state_it_cannot_read_falls_back_to_every_node() -> None:
    state = StoreState([("a", 5)])
    del state.message_ins_store
    state.get_message_ins = lambda node_id, limit=None: []  # type: ignore[method-assign]
    assert engine_poll.pending_destinations(state) is None
    queue: Queue = Queue()
    engine_poll.add_pending_messages_to_queue(state, queue, {1: 0, 2: 1}, OneTick())
    assert queue.empty()


def test_installs_only_over_the_loop_it_knows(monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    original = engine_poll.flowers_loop()
    monkeypatch.setattr(vce_api, "add_messages_to_queue", original)
    assert engine_poll.install() is True
    assert vce_api.add_messages_to_queue is engine_poll.add_pending_messages_to_queue
    assert engine_poll.install() is True  # idempotent

    def changed(state, queue, nodes_mapping, f_stop):  # a different flwr's loop
        pass

    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    assert engine_poll.install() is False
    assert vce_api.add_messages_to_queue is changed
