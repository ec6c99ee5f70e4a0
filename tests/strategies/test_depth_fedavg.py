"""DepthFedAvg: per-node sub-models, per-name aggregation, rejection of bad replies
(method S2)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from bouquet import keys
from bouquet.models.early_exit import DEPTH_PATTERN
from bouquet.models.early_exit import build_early_exit
from bouquet.models.early_exit import depth_names
from bouquet.models.early_exit import name_depth
from bouquet.models.training import get_weights
from bouquet.strategies.depth_fedavg import DepthFedAvg
from bouquet.strategies.depth_math import DEFAULT_DEPTH_PATTERN
from bouquet.strategies.depth_math import aggregate_by_name
from bouquet.strategies.depth_math import name_depths
from bouquet.strategies.depth_math import submodel_names

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
    """Nodes answer the ``node-info`` query with ``info[node]`` (metrics; missing = no
    answer);
    by default node ``n`` has partition-id ``n``."""

    def __init__(self, nodes, info=None):
        self.nodes = list(nodes)
        self.info = (
            {n: {keys.PARTITION_ID: n} for n in self.nodes} if info is None else info
        )
        self.queries = []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            assert (
                msg.metadata.message_type == MessageType.QUERY
                and msg.content["config"][keys.NODE_INFO] == 1
            )
            node = msg.metadata.dst_node_id
            self.queries.append(node)
            if node in self.info:
                metrics = {
                    k: v for k, v in self.info[node].items() if k != keys.NUM_EXAMPLES
                }
                reply = make_reply(None, 1, node_id=node)
                reply.content[keys.METRICS] = MetricRecord(metrics)
                replies.append(reply)
        return replies


def _record(arrays):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def _configure(strategy, nodes, arrays=GLOBAL, rnd=1, grid=None):
    grid = grid or FakeGrid(nodes)
    msgs = list(strategy.configure_train(rnd, _record(arrays), ConfigRecord(), grid))
    return {m.metadata.dst_node_id: m for m in msgs}


def _replace(arrays, **new):
    out = {k: v.copy() for k, v in arrays.items()}
    out.update(
        {k.replace("__", "."): np.asarray(v, dtype=np.float32) for k, v in new.items()}
    )
    return out


def test_name_depths_and_submodels():
    depths = name_depths(GLOBAL)
    assert depths == {
        "stem.w": 0,
        "stages.d1.w": 1,
        "stages.d2.w": 2,
        "exits.d1.w": 1,
        "exits.d2.w": 2,
    }
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
    a = {
        "stem.w": np.array([0.0, 2.0], np.float32),
        "stages.d1.w": np.array([1.0], np.float32),
    }
    b = {
        "stem.w": np.array([4.0, 6.0], np.float32),
        "stages.d1.w": np.array([5.0], np.float32),
        "stages.d2.w": np.array([9.0, 9.0, 9.0], np.float32),
    }
    out = aggregate_by_name(GLOBAL, [(a, 1.0), (b, 3.0)])
    # (0*1 + 4*3)/4, (2*1 + 6*3)/4
    np.testing.assert_allclose(out["stem.w"], [3.0, 5.0])
    np.testing.assert_allclose(out["stages.d1.w"], [4.0])  # (1*1 + 5*3)/4
    np.testing.assert_allclose(out["stages.d2.w"], [9.0, 9.0, 9.0])  # only b trained it
    # nobody: unchanged
    np.testing.assert_array_equal(out["exits.d2.w"], GLOBAL["exits.d2.w"])
    assert list(out) == list(GLOBAL)


def test_each_node_gets_only_its_depth():
    strategy = DepthFedAvg(
        depths=[1, 2], seed=3, min_available_nodes=4, fraction_evaluate=0.0
    )
    msgs = _configure(strategy, [11, 12, 13, 14])
    for node, msg in msgs.items():
        depth = strategy.assigned[node]
        assert list(msg.content["arrays"].keys()) == submodel_names(
            name_depths(GLOBAL), depth
        )
        assert msg.content["config"][keys.SUBMODEL_DEPTH] == depth
        assert msg.metadata.message_type == MessageType.TRAIN
    many = DepthFedAvg(seed=0, min_available_nodes=40, fraction_evaluate=0.0)
    _configure(many, range(100, 140))
    assert set(many.assigned.values()) == {1, 2}


def _draws(strategy, nodes, pids, rounds):
    """Depths sent per round, keyed by partition-id (Flower's node ids differ between
    runs)."""
    grid = FakeGrid(
        nodes, {n: {keys.PARTITION_ID: p} for n, p in zip(nodes, pids, strict=True)}
    )
    out = []
    for rnd in rounds:
        msgs = _configure(strategy, nodes, rnd=rnd, grid=grid)
        by_node = {n: m.content["config"][keys.SUBMODEL_DEPTH] for n, m in msgs.items()}
        out.append({p: by_node[n] for n, p in zip(nodes, pids, strict=True)})
    # each node asked once, not every round
    assert sorted(grid.queries) == sorted(nodes)
    return out


def test_same_seed_same_draws_across_runs_with_other_node_ids():
    pids = list(range(12))
    first = _draws(
        DepthFedAvg(seed=5, min_available_nodes=12),
        [1000 + p for p in pids],
        pids,
        range(1, 6),
    )
    # a second run: Flower gives the nodes other ids, in another order
    nodes = [77_000 + 3 * p for p in reversed(pids)]
    second = _draws(
        DepthFedAvg(seed=5, min_available_nodes=12),
        nodes,
        list(reversed(pids)),
        range(1, 6),
    )
    assert first == second
    other_seed = _draws(
        DepthFedAvg(seed=6, min_available_nodes=12),
        [1000 + p for p in pids],
        pids,
        range(1, 6),
    )
    assert other_seed != first


def test_per_round_redraw_changes_assignments_and_fixed_keeps_them():
    pids = list(range(12))
    nodes = [50 + p for p in pids]
    per_round = _draws(
        DepthFedAvg(seed=1, min_available_nodes=12), nodes, pids, range(1, 5)
    )
    # 12 nodes x 2 depths: a change every round
    assert all(per_round[i] != per_round[i + 1] for i in range(3))
    for p in pids:  # and each node sees both depths over a few rounds
        assert {
            r[p]
            for r in _draws(
                DepthFedAvg(seed=1, min_available_nodes=12), nodes, pids, range(1, 21)
            )
        } == {1, 2}
    fixed = _draws(
        DepthFedAvg(seed=1, assignment="fixed", min_available_nodes=12),
        nodes,
        pids,
        range(1, 5),
    )
    assert all(r == fixed[0] for r in fixed) and set(fixed[0].values()) == {1, 2}
    # the public draw is the one the strategy used
    strategy = DepthFedAvg(seed=1, min_available_nodes=12)
    sent = _draws(strategy, nodes, pids, [3])[0]
    assert sent == {p: strategy.draw(p, 3) for p in pids}


def test_capacity_from_node_info_caps_the_first_round():
    strategy = DepthFedAvg(
        depths=[2], min_available_nodes=2, min_train_nodes=2, fraction_evaluate=0.0
    )
    grid = FakeGrid(
        [1, 2],
        {
            1: {keys.PARTITION_ID: 0, keys.MAX_DEPTH: 1},
            2: {keys.PARTITION_ID: 1, keys.MAX_DEPTH: 0},
        },
    )
    msgs = _configure(strategy, [1, 2], grid=grid)
    assert list(msgs[1].content["arrays"].keys()) == DEPTH1
    assert list(msgs[2].content["arrays"].keys()) == list(GLOBAL)


@pytest.mark.parametrize(
    "info",
    [
        None,  # no answer (another ClientApp, a timeout)
        {keys.PARTITION_ID: -1},
        {keys.PARTITION_ID: 2**40},
        {keys.PARTITION_ID: 1.5},
        {keys.PARTITION_ID: [1]},
        {keys.PARTITION_ID: 0, keys.MAX_DEPTH: -3},
        {keys.PARTITION_ID: 0, keys.MAX_DEPTH: 10**9},
        {keys.MAX_DEPTH: 1},
    ],
)
def test_bad_or_missing_node_info_falls_back_to_node_id_with_a_warning(info, caplog):
    grid = FakeGrid(
        [7, 8], {8: {keys.PARTITION_ID: 1}} | ({} if info is None else {7: info})
    )
    strategy = DepthFedAvg(seed=2, min_available_nodes=2, fraction_evaluate=0.0)
    with caplog.at_level("WARNING"):
        _configure(strategy, [7, 8], grid=grid)
    assert strategy.partition == {7: None, 8: 1}
    assert strategy.capacity == {}
    assert "did not report a partition-id" in caplog.text
    again = DepthFedAvg(seed=2, min_available_nodes=2, fraction_evaluate=0.0)
    _configure(again, [7, 8], grid=FakeGrid([7, 8], grid.info))
    # the fallback is still seeded (by node id)
    assert again.assigned == strategy.assigned


def test_invalid_assignment_settings_name_the_key():
    with pytest.raises(ValueError, match="strategy.assignment"):
        DepthFedAvg(assignment="sometimes")
    with pytest.raises(ValueError, match="strategy.node_info_timeout"):
        DepthFedAvg(node_info_timeout=0)


def test_mixed_depth_round_aggregates_by_name():
    strategy = DepthFedAvg(
        depths=[1, 2], seed=0, min_available_nodes=2, fraction_evaluate=0.0
    )
    _configure(strategy, [1, 2])
    strategy.sent = {1: 1, 2: 2}
    r1 = {n: GLOBAL[n] + 1.0 for n in DEPTH1}
    r2 = {n: v + 3.0 for n, v in GLOBAL.items()}
    arrays, metrics = strategy.aggregate_train(
        1, [make_reply(r1, 10, node_id=1), make_reply(r2, 30, node_id=2)]
    )
    out = {k: v.numpy() for k, v in arrays.items()}
    # (1*10 + 3*30)/40
    np.testing.assert_allclose(out["stem.w"], GLOBAL["stem.w"] + 2.5)
    np.testing.assert_allclose(out["exits.d1.w"], GLOBAL["exits.d1.w"] + 2.5)
    # node 2 only
    np.testing.assert_allclose(out["stages.d2.w"], GLOBAL["stages.d2.w"] + 3.0)
    assert list(out) == list(GLOBAL)
    assert strategy.round_report() == {"clients_dropped": 0, "nodes_per_depth": [1, 1]}


def test_all_full_depth_is_exactly_fedavg():
    rng = np.random.default_rng(0)
    replies = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in GLOBAL.items()}
        for _ in range(3)
    ]
    weights = [7, 13, 29]
    strategy = DepthFedAvg(depths=[2], min_available_nodes=3, fraction_evaluate=0.0)
    _configure(strategy, [1, 2, 3])
    msgs = [
        make_reply(r, w, node_id=i + 1)
        for i, (r, w) in enumerate(zip(replies, weights, strict=True))
    ]
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
    strategy.sent = {1: 2 if bad == "incomplete" else 1, 2: 2}
    replies = [
        make_reply(evil, weight, node_id=1),
        make_reply({**GLOBAL, **good}, 10, node_id=2),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = {k: v.numpy() for k, v in arrays.items()}
    for name in GLOBAL:  # only node 2's reply counted
        np.testing.assert_allclose(
            out[name], GLOBAL[name] + 1.0 if name in good else GLOBAL[name]
        )
    assert strategy.round_report()["clients_dropped"] == 1


def test_only_bad_replies_keep_the_global_model():
    strategy = DepthFedAvg(
        depths=[1], min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0
    )
    _configure(strategy, [1])
    evil = {n: GLOBAL[n] for n in DEPTH1} | {"stages.d2.w": GLOBAL["stages.d2.w"]}
    assert strategy.aggregate_train(1, [make_reply(evil, 5, node_id=1)]) == (None, None)
    assert strategy.round_report()["clients_dropped"] == 1


def test_reported_capacity_caps_the_next_depth():
    strategy = DepthFedAvg(
        depths=[2], min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0
    )
    _configure(strategy, [1])
    reply = make_reply(
        {n: GLOBAL[n] for n in DEPTH1}, 5, {keys.MAX_DEPTH: 1}, node_id=1
    )
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert arrays is not None and strategy.capacity == {1: 1}
    msgs = _configure(strategy, [1], rnd=2)
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
    strategy = DepthFedAvg(
        depths=[1, 2, 3], seed=1, min_available_nodes=6, fraction_evaluate=0.0
    )
    msgs = _configure(strategy, range(1, 7), weights)
    replies = []
    for node, msg in msgs.items():
        sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        assert (
            list(sent)
            == depth_names(model, strategy.assigned[node])
            == depth_names(model, strategy.draw(node, 1))
        )
        replies.append(
            make_reply({k: v + 1.0 for k, v in sent.items()}, 10, node_id=node)
        )
    arrays, _ = strategy.aggregate_train(1, replies)
    # every array that anyone trained moved by exactly +1
    for name, value in arrays.items():
        trained = any(name in m.content["arrays"] for m in msgs.values())
        np.testing.assert_allclose(
            value.numpy(),
            weights[name] + (1.0 if trained else 0.0),
            rtol=1e-6,
            atol=1e-6,
        )
