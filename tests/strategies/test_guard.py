"""ReplyGuard: malformed replies are dropped and counted; valid ones give FedAvg's
result."""

from __future__ import annotations

import numpy as np
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from bouquet.strategies import ReplyGuard

GLOBAL = {"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


class _Grid:
    def get_node_ids(self):
        return list(range(1, 10))


def _guarded() -> ReplyGuard:
    guard = ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1))
    guard.configure_train(
        1,
        ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
        ConfigRecord(),
        _Grid(),
    )
    return guard


def _arrays(value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in GLOBAL.items()}


def test_valid_replies_equal_fedavg() -> None:
    replies = [
        make_reply(_arrays(1.0), 10, node_id=1),
        make_reply(_arrays(4.0), 30, node_id=2),
    ]
    guarded, _ = _guarded().aggregate_train(1, replies)
    plain, _ = FedAvg().aggregate_train(1, replies)
    for k in GLOBAL:
        np.testing.assert_array_equal(guarded[k].numpy(), plain[k].numpy())
        np.testing.assert_allclose(guarded[k].numpy(), 3.25)


def test_bad_replies_dropped_counted_and_round_goes_on() -> None:
    nan = _arrays(1.0)
    nan["w"][0, 0] = np.nan
    wrong_shape = _arrays(1.0)
    wrong_shape["b"] = np.zeros(4, dtype=np.float32)
    missing = {"w": GLOBAL["w"]}
    good = make_reply(_arrays(2.0), 5, node_id=1)
    replies = [
        good,
        make_reply(nan, 5, node_id=2),
        make_reply(wrong_shape, 5, node_id=3),
        make_reply(missing, 5, node_id=4),
        make_reply(_arrays(9.0), 0, node_id=5),  # zero weight
        # an extra metric key: kept, the key left out
        make_reply(_arrays(9.0), 5, {"extra": 1.0}, node_id=6),
        make_reply(None, 5, node_id=7, error="client crashed"),
    ]
    guard = _guarded()
    agg, metrics = guard.aggregate_train(1, replies)
    np.testing.assert_allclose(agg["w"].numpy(), 5.5)  # nodes 1 and 6, 5 examples each
    assert "extra" not in metrics
    report = guard.round_report()
    assert report["clients_dropped"] == 4
    reasons = " ".join(report["drop_reasons"])
    for text in ("non-finite", "shape", "names differ", "num-examples"):
        assert text in reasons
    assert guard.round_report() == {}  # reset after reading


def test_all_bad_gives_no_update() -> None:
    nan = _arrays(1.0)
    nan["b"][:] = np.inf
    agg, _ = _guarded().aggregate_train(1, [make_reply(nan, 5, node_id=1)])
    assert agg is None


def test_strategy_that_validates_arrays_gets_sub_model_replies() -> None:
    class SubModelFedAvg(FedAvg):
        validates_arrays = True

    guard = ReplyGuard(SubModelFedAvg(min_available_nodes=1, min_train_nodes=1))
    guard.configure_train(
        1,
        ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
        ConfigRecord(),
        _Grid(),
    )
    # fewer names
    partial = make_reply({"w": np.ones((2, 3), dtype=np.float32)}, 4, node_id=1)
    no_weight = make_reply({"w": np.ones((2, 3), dtype=np.float32)}, 0, node_id=2)
    agg, _ = guard.aggregate_train(1, [partial, no_weight])
    np.testing.assert_allclose(agg["w"].numpy(), 1.0)
    assert guard.round_report()["clients_dropped"] == 1  # the weight is still checked
