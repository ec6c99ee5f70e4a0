"""Error replies are counted in Compressed's round line, a round without a usable reply
is a WARNING, and a set-up mistake behind an error is named once (issue 35, point 2)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import make_reply
from flwr.serverapp.strategy import FedAvg

from bouquet.strategies import Compressed

MOD_ORDER = (
    "<class 'TypeError'>:<'Unsupported serialization type for numpy conversion: "
    "'bouquet.topk/1''>"
)


class _Records(logging.Handler):
    """Records of Flower's logger itself (caplog depends on propagation, which other
    tests change)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def flwr_records():
    flwr_logger, handler = logging.getLogger("flwr"), _Records()
    level = flwr_logger.level
    flwr_logger.addHandler(handler)
    flwr_logger.setLevel(logging.INFO)
    yield handler
    flwr_logger.removeHandler(handler)
    flwr_logger.setLevel(level)


def _messages(records: _Records) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in records.records
        if "Compressed" in r.getMessage()
    ]


def test_errors_are_counted_and_the_mod_order_is_named_once(flwr_records) -> None:
    strategy = Compressed(FedAvg(min_available_nodes=1, min_train_nodes=1))
    good = make_reply({"w": np.ones(3, np.float32)}, 10, {"train-loss": 1.0}, node_id=1)
    arrays, _ = strategy.aggregate_train(
        1,
        [
            good,
            make_reply(None, 0, error=MOD_ORDER, node_id=2),
            make_reply(None, 0, error=MOD_ORDER, node_id=3),
        ],
    )
    assert arrays is not None
    lines = _messages(flwr_records)
    assert any("round 1: 3 replies, 2 errors, 0 dropped" in m for _, m in lines), lines
    named = [
        m
        for lvl, m in lines
        if lvl == logging.WARNING and "list compression_mod before the mods" in m
    ]
    assert len(named) == 1, lines


def test_a_round_with_no_usable_reply_is_a_warning(flwr_records) -> None:
    strategy = Compressed(FedAvg(min_available_nodes=1, min_train_nodes=1))
    arrays, _ = strategy.aggregate_train(
        1, [make_reply(None, 0, error="<class 'ValueError'>:<'boom'>", node_id=2)]
    )
    assert arrays is None
    assert any(
        lvl == logging.WARNING and "1 errors" in m and "no usable reply" in m
        for lvl, m in _messages(flwr_records)
    )
