"""``SpilledState``: a node's ``context.state`` on disk between messages, versioned by
round (issue 32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_train_message
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict

from bouquet import keys
from bouquet.clients.state_store import SpilledState
from bouquet.clients.state_store import load_state
from bouquet.clients.state_store import node_rounds
from bouquet.clients.state_store import prune
from bouquet.clients.state_store import save_state


def _ctx(pid: int, node: int = 900) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config={keys.PARTITION_ID: pid},
        state=RecordDict(),
        run_config={},
    )


def _counting_app(msg: Message, context: Context) -> Message:
    """Adds the received weights to a residual kept in context.state; counts its
    calls."""
    seen = context.state.array_records.get("acc")
    acc = seen["x"].numpy() if seen is not None else np.zeros(3, np.float32)
    acc = acc + msg.content["arrays"]["x"].numpy()
    context.state["acc"] = ArrayRecord({"x": Array(acc)})
    calls = int(context.state.config_records.get("n", ConfigRecord({"c": 0}))["c"]) + 1
    context.state["n"] = ConfigRecord({"c": calls, "raw": b"\x00\x01"})
    return Message(
        RecordDict({"metrics": MetricRecord({"calls": calls})}), reply_to=msg
    )


def test_state_round_trips_through_disk_and_memory_is_emptied(tmp_path: Path) -> None:
    mod = SpilledState(tmp_path)
    ctx = _ctx(7)
    for rnd in (1, 2, 3):
        reply = mod(
            make_train_message({"x": np.ones(3, np.float32)}, rnd), ctx, _counting_app
        )
        assert reply.content["metrics"]["calls"] == rnd
        assert len(ctx.state.keys()) == 0  # nothing stays in the node's memory
    assert node_rounds(tmp_path, 7) == [1, 2, 3]
    state = load_state(tmp_path / "7" / "r3.json")
    np.testing.assert_array_equal(
        state["acc"]["x"].numpy(), np.full(3, 3.0, np.float32)
    )
    assert state["n"]["raw"] == b"\x00\x01"
    # another node id, the same partition (a resumed simulation): the same state
    reply = mod(
        make_train_message({"x": np.ones(3, np.float32)}, 4),
        _ctx(7, node=12345),
        _counting_app,
    )
    assert reply.content["metrics"]["calls"] == 4


def test_prune_keeps_what_a_checkpoint_needs_and_resume_drops_the_future(
    tmp_path: Path,
) -> None:
    for rnd in (1, 2, 4, 5):
        (tmp_path / "3").mkdir(exist_ok=True)
        save_state(
            RecordDict({"c": ConfigRecord({"r": rnd})}), tmp_path / "3" / f"r{rnd}.json"
        )
    prune(tmp_path, 4)
    # the newest at or before the checkpoint, and the newer one
    assert node_rounds(tmp_path, 3) == [4, 5]
    prune(tmp_path, 4, resuming=True)
    assert node_rounds(tmp_path, 3) == [4]


def test_a_failed_message_writes_nothing(tmp_path: Path) -> None:
    def failing(msg: Message, context: Context) -> Message:
        context.state["acc"] = ArrayRecord({"x": Array(np.zeros(3))})
        raise RuntimeError("boom")

    ctx = _ctx(1)
    try:
        SpilledState(tmp_path)(
            make_train_message({"x": np.ones(3, np.float32)}, 1), ctx, failing
        )
    except RuntimeError:
        pass
    assert node_rounds(tmp_path, 1) == []
