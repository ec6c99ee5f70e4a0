"""``ServerMomentum(Compressed(..., server_lr=eta), momentum=beta)``: heavy-ball
momentum on the aggregate step, m <- beta m + eta u_bar, w <- w + m, kept across a
checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdam
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy import FedAvgM

from bouquet.clients.compressed import encoded_arrayrecord
from bouquet.codecs import TopKCompressor
from bouquet.simulations.run.checkpoint import load_checkpoint
from bouquet.simulations.run.checkpoint import load_strategy_state
from bouquet.simulations.run.checkpoint import save_checkpoint
from bouquet.simulations.run.checkpoint import strategy_state
from bouquet.strategies import Compressed
from bouquet.strategies import ReplyGuard
from bouquet.strategies import ServerMomentum

W0 = {
    "w": np.array([1.0, 1.0], np.float32),
    "bn.running_var": np.array([1.0, 1.0], np.float32),
}
# (client 1 with 1 example, client 2 with 3) updates of "w" per round; weighted means
# [2, -1], [1, 4], [0, -3]
UPDATES = [
    ([2.0, -4.0], [2.0, 0.0]),
    ([-2.0, 4.0], [2.0, 4.0]),
    ([0.0, 0.0], [0.0, -4.0]),
]
# by hand, server_lr 0.5, beta 0.9, steps 0.5 * mean: m1 = [1, -.5]; m2 = .9 m1 + [.5,
# 2] = [1.4, 1.55]; m3 = .9 m2 + [0, -1.5] = [1.26, -.105]
EXPECTED_W = [[2.0, 0.5], [3.4, 2.05], [4.66, 1.945]]
EXPECTED_M = [[1.0, -0.5], [1.4, 1.55], [1.26, -0.105]]


class _Grid:
    def get_node_ids(self):
        return [1, 2]


def _fedavg() -> FedAvg:
    return FedAvg(fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2)


def _reply(node: int, examples: int, update: dict[str, np.ndarray]):
    names = list(update)
    enc, _ = TopKCompressor(alpha=1.0, residual_decay=0.0).compress(
        [update[n] for n in names]
    )
    return make_reply(
        None, examples, node_id=node, array_record=encoded_arrayrecord(names, enc)
    )


def _momentum(
    inner, server_lr: float = 0.5, beta: float = 0.9, fast_path: bool = True
) -> ServerMomentum:
    return ServerMomentum(
        Compressed(inner, server_lr=server_lr, fast_path=fast_path), momentum=beta
    )


def _round(
    strategy, rnd: int, w: dict[str, np.ndarray]
) -> dict[str, np.ndarray] | None:
    list(
        strategy.configure_train(
            rnd,
            ArrayRecord({k: Array(v) for k, v in w.items()}),
            ConfigRecord(),
            _Grid(),
        )
    )
    a, b = UPDATES[rnd - 1]
    stats = np.ones(2, np.float32)  # a running variance, updated by +1 by both clients
    replies = [
        _reply(1, 1, {"w": np.array(a, np.float32), "bn.running_var": stats}),
        _reply(2, 3, {"w": np.array(b, np.float32), "bn.running_var": stats}),
    ]
    agg, _ = strategy.aggregate_train(rnd, replies)
    return None if agg is None else {k: v.numpy() for k, v in agg.items()}


@pytest.mark.parametrize("fast_path", [True, False])
def test_server_momentum_by_hand_over_3_rounds(fast_path):
    strategy = _momentum(_fedavg(), fast_path=fast_path)
    w = dict(W0)
    for rnd in (1, 2, 3):
        w = _round(strategy, rnd, w)
        np.testing.assert_allclose(w["w"], EXPECTED_W[rnd - 1], rtol=1e-6)
        np.testing.assert_allclose(
            strategy.state_dict()["velocity"]["w"],
            EXPECTED_M[rnd - 1],
            rtol=1e-6,
            atol=1e-6,
        )
        # a normalisation statistic takes the plain aggregate: w + 0.5 * 1 per round
        np.testing.assert_allclose(w["bn.running_var"], 1.0 + 0.5 * rnd, rtol=1e-6)
        assert w["w"].dtype == np.float32
    assert strategy.last_path == ("fast" if fast_path else "dense")
    assert set(strategy.state_dict()["velocity"]) == {"w"}


def test_without_momentum_the_step_is_the_plain_mean():
    strategy = Compressed(_fedavg(), server_lr=0.5)
    w = dict(W0)
    for rnd in (1, 2, 3):
        w = _round(strategy, rnd, w)
    np.testing.assert_allclose(
        w["w"], [1 + 0.5 * (2 + 1 + 0), 1 + 0.5 * (-1 + 4 - 3)], rtol=1e-6
    )
    # one job: decoding
    assert strategy.state_dict() == {} and not hasattr(strategy, "momentum")
    # an older bouquet's, without momentum
    strategy.load_state_dict({"server_momentum": 0.0, "momentum": {}})
    with pytest.raises(ValueError, match="ServerMomentum"):
        strategy.load_state_dict(
            {"server_momentum": 0.9, "momentum": {"w": np.ones(2, np.float32)}}
        )


def test_server_momentum_survives_a_checkpoint_round_trip(tmp_path: Path):
    a = _momentum(ReplyGuard(_fedavg()))
    w = dict(W0)
    for rnd in (1, 2):
        w = _round(a, rnd, w)
    save_checkpoint(tmp_path, {"round": 2, "arrays": w, "strategy": strategy_state(a)})
    ckpt = load_checkpoint(tmp_path)
    b = _momentum(ReplyGuard(_fedavg()))
    load_strategy_state(b, ckpt["strategy"])
    w3 = _round(b, 3, ckpt["arrays"])
    np.testing.assert_allclose(w3["w"], EXPECTED_W[2], rtol=1e-6)
    np.testing.assert_allclose(_round(a, 3, w)["w"], w3["w"], rtol=0, atol=0)
    # a resume that lost the momentum would step by the plain mean update instead
    fresh = _round(_momentum(ReplyGuard(_fedavg())), 3, ckpt["arrays"])
    np.testing.assert_allclose(fresh["w"], [3.4, 2.05 - 1.5], rtol=1e-6)


def test_a_non_finite_momentum_step_skips_the_round_and_keeps_the_momentum(caplog):
    strategy = _momentum(_fedavg(), server_lr=2.0)
    huge = np.array([3e38, 0.0], np.float32)
    strategy.load_state_dict({"momentum": 0.9, "velocity": {"w": huge}})
    # w + 0.9 * 3e38 overflows float32 when w is 3e38
    with caplog.at_level(logging.WARNING):
        assert (
            _round(strategy, 1, {**W0, "w": np.array([3e38, 1.0], np.float32)}) is None
        )
    assert "non-finite" in caplog.text
    np.testing.assert_array_equal(strategy.state_dict()["velocity"]["w"], huge)


def test_bad_settings_and_states_are_refused():
    for bad in (1.0, 0.0, -0.5, float("nan"), True):
        with pytest.raises(ValueError, match="momentum"):
            ServerMomentum(_fedavg(), momentum=bad)
    with pytest.raises(ValueError, match="FedAdam"):
        ServerMomentum(Compressed(FedAdam()), momentum=0.9)
    with pytest.raises(ValueError, match="FedAvgM"):
        ServerMomentum(
            Compressed(ReplyGuard(FedAvgM(server_momentum=0.5))), momentum=0.9
        )
    with pytest.raises(ValueError, match="once"):
        ServerMomentum(ServerMomentum(_fedavg()), momentum=0.9)
    with pytest.raises(TypeError):
        Compressed(_fedavg(), server_momentum=0.9)  # type: ignore[call-arg]  # not Compressed's job any more
    # FedAvgM without momentum: nothing stacked
    wrapped = ServerMomentum(FedAvgM(server_momentum=0.0), momentum=0.9)
    assert wrapped.server_momentum == 0.0 and wrapped.momentum == 0.9
    strategy = ServerMomentum(_fedavg(), momentum=0.9)
    for state in (
        {"velocity": {"w": np.array([np.nan], np.float32)}},
        {"velocity": [1.0]},
        {},
    ):
        with pytest.raises(ValueError, match="velocity"):
            strategy.load_state_dict(state)


def test_d2_compressed_no_longer_shadows_fedavgm():
    """Issue 31, D2: FedAvgM's own server_momentum is read and written through
    Compressed."""
    inner = FedAvgM(server_momentum=0.9)
    comp = Compressed(inner)
    assert comp.server_momentum == 0.9
    comp.server_momentum = 0.5
    assert inner.server_momentum == 0.5 and "server_momentum" not in vars(comp)


def test_wrap_compression_reads_server_momentum():
    from bouquet.simulations.methods.compression import wrap_compression

    cfg = {
        "client": {"_target_": "bouquet.clients.TopKClient"},
        "compression": {"server_lr": 0.5, "server_momentum": 0.9},
    }
    wrapped = wrap_compression(cfg, None, ReplyGuard(_fedavg()))
    assert isinstance(wrapped, ServerMomentum) and wrapped.momentum == 0.9
    assert (
        isinstance(wrapped.strategy, Compressed) and wrapped.strategy.server_lr == 0.5
    )
    cfg = {"client": {"_target_": "bouquet.clients.STCClient"}}
    assert isinstance(wrap_compression(cfg, None, ReplyGuard(_fedavg())), Compressed)
