"""MeteredGrid counts the bytes of real Array payloads and client outcomes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import RecordDict

from bouquet.simulations.run.metering import MeteredGrid
from bouquet.simulations.run.metering import message_array_bytes


class FakeGrid:
    """Replies to train messages with a scripted reply per node."""

    def __init__(self, replies: dict[int, Message]) -> None:
        self.replies = replies
        self.pushed: list[Message] = []

    def get_node_ids(self):
        return list(self.replies)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            self.pushed.append(msg)
            ids.append(f"m{msg.metadata.dst_node_id}")
        return ids

    def pull_messages(self, message_ids):
        return [
            self.replies[int(m[1:])]
            for m in list(message_ids)
            if int(m[1:]) in self.replies and self.replies[int(m[1:])] is not None
        ]


def _train_msg(node: int, arr: np.ndarray) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(arr)}), "config": ConfigRecord()}
    )
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


def test_bytes_and_outcomes_counted() -> None:
    arr = np.zeros(100, dtype=np.float32)
    ok = make_reply(
        {"w": np.ones(10, dtype=np.float32)},
        7,
        {"train-loss": 2.0, "train-time-s": 0.5},
        node_id=1,
    )
    failed = make_reply(None, 1, node_id=2, error="boom")
    grid = MeteredGrid(FakeGrid({1: ok, 2: failed, 3: None}))  # node 3 never answers
    replies = grid.send_and_receive(
        [_train_msg(n, arr) for n in (1, 2, 3)], timeout=0.3
    )
    assert len(replies) == 2
    period = grid.take_period()
    per_msg = message_array_bytes(_train_msg(1, arr))
    assert per_msg == len(Array(arr).data) and per_msg > 400
    assert period.bytes_down == 3 * per_msg
    assert period.bytes_up == len(Array(np.ones(10, dtype=np.float32)).data)
    assert (period.clients_ok, period.clients_failed) == (1, 2)
    assert period.train_loss == 2.0 and period.client_train_s == 0.5
    assert grid.take_period().bytes_down == 0  # a new period starts empty
    assert grid.total.clients_failed == 2


def test_first_train_reply_time_is_kept_for_the_run_and_per_period() -> None:
    import time

    arr = np.zeros(10, dtype=np.float32)
    ok = make_reply({"w": np.ones(10, dtype=np.float32)}, 7, node_id=1)
    grid = MeteredGrid(FakeGrid({1: ok}))
    assert grid.total.first_reply_at is None
    before = time.perf_counter()
    grid.send_and_receive([_train_msg(1, arr)], timeout=0.3)
    first = grid.total.first_reply_at
    assert first is not None and before <= first <= time.perf_counter()
    assert grid.take_period().first_reply_at == first
    grid.send_and_receive([_train_msg(1, arr)], timeout=0.3)
    assert grid.total.first_reply_at == first  # the run's first reply does not move
    later = grid.take_period().first_reply_at
    assert later is not None and later > first


def test_node_ids_pin_the_federation_and_name_each_outsider_once() -> None:
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    arr = np.zeros(4, dtype=np.float32)
    replies = {
        n: make_reply({"w": np.ones(4, dtype=np.float32)}, 1, node_id=n)
        for n in (1, 2, 66)
    }
    grid = MeteredGrid(FakeGrid(replies), node_ids=[1, 2])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    FLOWER_LOGGER.addHandler(handler)
    try:
        assert list(grid.get_node_ids()) == [1, 2]
        assert list(grid.get_node_ids()) == [1, 2]
        assert grid.wait_for_nodes(2, timeout_s=0.1) == 2
    finally:
        FLOWER_LOGGER.removeHandler(handler)
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warned == [
        "node 66 is connected but not in simulation.node_ids: it is never sampled "
        "and nothing is sent to it"
    ]
    with pytest.raises(ValueError, match=r"refusing to send to node\(s\) \[66\]"):
        grid.push_messages([_train_msg(1, arr), _train_msg(66, arr)])
    assert grid.push_messages([_train_msg(2, arr)]) == ["m2"]
    unpinned = MeteredGrid(FakeGrid(replies))
    assert list(unpinned.get_node_ids()) == [1, 2, 66]
