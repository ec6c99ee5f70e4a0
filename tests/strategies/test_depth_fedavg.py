"""DepthFedAvg: per-node sub-models, per-name aggregation, rejection of bad replies (method S2)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from bouquet import keys
from bouquet.models.early_exit import DEPTH_PATTERN, build_early_exit, depth_names, name_depth
from bouquet.models.training import get_weights
from bouquet.strategies.depth_fedavg import (
    DEFAULT_DEPTH_PATTERN,
    DepthFedAvg,
    aggregate_by_name,
    name_depths,
    submodel_names,
)

# A tiny "model": a shared stem and two depths of stage + exit arrays.
GLOBAL = {
    "stem.w": np.array([1.0, 1.0], dtype=np.float32),
    "stages.d1.w": np.array([2.0], dtype=np.float32),
    "stages.d2.w": np.array([3.0, 3.0, 3.0], dtype=np.float32),
    "exits.d1.w": np.array([4.0], dtype=np.float32),
    "exits.d2.w": np.array([5.0], dtype=np.float32),
}
DEPTH1 = ["stem.w", "stages.d1.w", "exits.d1.w"]


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _record(arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _configure(strategy, nodes, arrays=GLOBAL):
    msgs = list(strategy.configure_train(1, _record(arrays), ConfigRecord(), FakeGrid(nodes)))
    return {m.metadata.dst_node_id: m for m in msgs}


def _replace(arrays, **new):
    out = {k: v.copy() for k, v in arrays.items()}
    out.update({k.replace("__", "."): np.asarray(v, dtype=np.float32) for k, v in new.items()})
    return out


def test_name_depths_and_submodels():
    depths = name_depths(GLOBAL)
    assert depths == {"stem.w": 0, "stages.d1.w": 1, "stages.d2.w": 2, "exits.d1.w": 1, "exits.d2.w": 2}
    assert submodel_names(depths, 1) == DEPTH1
    assert submodel_names(depths, 2) == list(GLOBAL)


def test_strategy_and_model_agree_on_depth_tags():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    names = list(model.state_dict())
    assert DEFAULT_DEPTH_PATTERN == DEPTH_PATTERN
    assert name_depths(names) == {n: name_depth(n) for n in names}
    for d in (1, 2, 3):
        assert submodel_names(name_depths(names), d) == depth_names(model, d)


def test_aggregate_by_name_by_hand():
    a = {"stem.w": np.array([0.0, 2.0], np.float32), "stages.d1.w": np.array([1.0], np.float32)}
    b = {"stem.w": np.array([4.0, 6.0], np.float32), "stages.d1.w": np.array([5.0], np.float32),
         "stages.d2.w": np.array([9.0, 9.0, 9.0], np.float32)}
    out = aggregate_by_name(GLOBAL, [(a, 1.0), (b, 3.0)])
    np.testing.assert_allclose(out["stem.w"], [3.0, 5.0])  # (0*1 + 4*3)/4, (2*1 + 6*3)/4
    np.testing.assert_allclose(out["stages.d1.w"], [4.0])  # (1*1 + 5*3)/4
    np.testing.assert_allclose(out["stages.d2.w"], [9.0, 9.0, 9.0])  # only b trained it
    np.testing.assert_array_equal(out["exits.d2.w"], GLOBAL["exits.d2.w"])  # nobody: unchanged
    assert list(out) == list(GLOBAL)


def test_each_node_gets_only_its_depth():
    strategy = DepthFedAvg(depths=[1, 2], seed=3, min_available_nodes=4, fraction_evaluate=0.0)
    msgs = _configure(strategy, [11, 12, 13, 14])
    for node, msg in msgs.items():
        depth = strategy.assigned[node]
        assert list(msg.content["arrays"].keys()) == submodel_names(name_depths(GLOBAL), depth)
        assert msg.content["config"][keys.SUBMODEL_DEPTH] == depth
        assert msg.metadata.message_type == MessageType.TRAIN
    again = DepthFedAvg(depths=[1, 2], seed=3, min_available_nodes=4, fraction_evaluate=0.0)
    _configure(again, [14, 13, 12, 11])
    assert again.assigned == strategy.assigned  # seeded per node id, order does not matter
    many = DepthFedAvg(seed=0, min_available_nodes=40, fraction_evaluate=0.0)
    _configure(many, range(100, 140))
    assert set(many.assigned.values()) == {1, 2}


def test_mixed_depth_round_aggregates_by_name():
    strategy = DepthFedAvg(depths=[1, 2], seed=0, min_available_nodes=2, fraction_evaluate=0.0)
    strategy.assigned = {1: 1, 2: 2}
    _configure(strategy, [1, 2])
    r1 = {n: GLOBAL[n] + 1.0 for n in DEPTH1}
    r2 = {n: v + 3.0 for n, v in GLOBAL.items()}
    arrays, metrics = strategy.aggregate_train(1, [make_reply(r1, 10, node_id=1), make_reply(r2, 30, node_id=2)])
    out = {k: v.numpy() for k, v in arrays.items()}
    np.testing.assert_allclose(out["stem.w"], GLOBAL["stem.w"] + 2.5)  # (1*10 + 3*30)/40
    np.testing.assert_allclose(out["exits.d1.w"], GLOBAL["exits.d1.w"] + 2.5)
    np.testing.assert_allclose(out["stages.d2.w"], GLOBAL["stages.d2.w"] + 3.0)  # node 2 only
    assert list(out) == list(GLOBAL)
    assert strategy.round_report() == {"clients_dropped": 0, "nodes_per_depth": [1, 1]}


def test_all_full_depth_is_exactly_fedavg():
    rng = np.random.default_rng(0)
    replies = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in GLOBAL.items()} for _ in range(3)]
    weights = [7, 13, 29]
    strategy = DepthFedAvg(depths=[2], min_available_nodes=3, fraction_evaluate=0.0)
    _configure(strategy, [1, 2, 3])
    msgs = [make_reply(r, w, node_id=i + 1) for i, (r, w) in enumerate(zip(replies, weights, strict=True))]
    ours, _ = strategy.aggregate_train(1, msgs)
    flower, _ = FedAvg(min_available_nodes=3).aggregate_train(1, msgs)
    reference = aggregate_arrayrecords([m.content for m in msgs], keys.NUM_EXAMPLES)
    for name in GLOBAL:
        np.testing.assert_array_equal(ours[name].numpy(), flower[name].numpy())
        np.testing.assert_array_equal(ours[name].numpy(), reference[name].numpy())


@pytest.mark.parametrize(
    "bad",
    [
        "outside",  # depth-1 node returns a depth-2 array
        "incomplete",  # not a whole sub-model
        "shape",
        "nan",
        "weight",
        "dtype",
    ],
)
def test_bad_reply_is_dropped_and_counted(bad):
    strategy = DepthFedAvg(depths=[1, 2], min_available_nodes=2, fraction_evaluate=0.0)
    strategy.assigned = {1: 1, 2: 2}
    _configure(strategy, [1, 2])
    good = {n: GLOBAL[n] + 1.0 for n in DEPTH1}
    evil = {n: GLOBAL[n] + 100.0 for n in DEPTH1}
    weight = 10
    if bad == "outside":
        evil["stages.d2.w"] = GLOBAL["stages.d2.w"] + 100.0
    elif bad == "incomplete":
        del evil["exits.d1.w"]
    elif bad == "shape":
        evil["stem.w"] = np.zeros(3, np.float32)
    elif bad == "nan":
        evil["stages.d1.w"] = np.array([np.nan], np.float32)
    elif bad == "weight":
        weight = 0
    elif bad == "dtype":
        evil["stem.w"] = evil["stem.w"].astype(np.float64)
    strategy.assigned[1] = 2 if bad == "incomplete" else 1
    strategy.sent = {1: strategy.assigned[1], 2: 2}
    replies = [make_reply(evil, weight, node_id=1), make_reply({**GLOBAL, **good}, 10, node_id=2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = {k: v.numpy() for k, v in arrays.items()}
    for name in GLOBAL:  # only node 2's reply counted
        np.testing.assert_allclose(out[name], GLOBAL[name] + 1.0 if name in good else GLOBAL[name])
    assert strategy.round_report()["clients_dropped"] == 1


def test_only_bad_replies_keep_the_global_model():
    strategy = DepthFedAvg(depths=[1], min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
    _configure(strategy, [1])
    evil = {n: GLOBAL[n] for n in DEPTH1} | {"stages.d2.w": GLOBAL["stages.d2.w"]}
    assert strategy.aggregate_train(1, [make_reply(evil, 5, node_id=1)]) == (None, None)
    assert strategy.round_report()["clients_dropped"] == 1


def test_reported_capacity_caps_the_next_depth():
    strategy = DepthFedAvg(depths=[2], min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
    _configure(strategy, [1])
    reply = make_reply({n: GLOBAL[n] for n in DEPTH1}, 5, {keys.MAX_DEPTH: 1}, node_id=1)
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert arrays is not None and strategy.capacity == {1: 1}
    msgs = _configure(strategy, [1])
    assert list(msgs[1].content["arrays"].keys()) == DEPTH1


def test_invalid_settings_name_the_key():
    with pytest.raises(ValueError, match="strategy.depths"):
        DepthFedAvg(depths=[0])
    with pytest.raises(ValueError, match="strategy.depth_probs"):
        DepthFedAvg(depths=[1, 2], depth_probs=[1.0])
    with pytest.raises(ValueError, match="depth_pattern"):
        DepthFedAvg(depth_pattern="no-group")
    strategy = DepthFedAvg(depths=[5], min_available_nodes=1, min_train_nodes=1)
    with pytest.raises(ValueError, match="only 2 depths"):
        _configure(strategy, [1])


def test_real_model_round_trip_names():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    weights = dict(get_weights(model))
    strategy = DepthFedAvg(depths=[1, 2, 3], seed=1, min_available_nodes=6, fraction_evaluate=0.0)
    msgs = _configure(strategy, range(1, 7), weights)
    replies = []
    for node, msg in msgs.items():
        sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        assert list(sent) == depth_names(model, strategy.assigned[node])
        replies.append(make_reply({k: v + 1.0 for k, v in sent.items()}, 10, node_id=node))
    arrays, _ = strategy.aggregate_train(1, replies)
    for name, value in arrays.items():  # every array that anyone trained moved by exactly +1
        trained = any(name in m.content["arrays"] for m in msgs.values())
        np.testing.assert_allclose(value.numpy(), weights[name] + (1.0 if trained else 0.0), rtol=1e-6, atol=1e-6)
