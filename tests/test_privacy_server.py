"""Server side of DP with compression (issue 34): Flower's DP wrappers see decoded
updates inside ``Compressed``; ``DPAccountant`` equalises weights, enforces the bound
and accounts epsilon."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideAdaptiveClipping
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy import FedAvg

from bouquet.clients.compressed import encoded_arrayrecord
from bouquet.codecs import TopKCompressor
from bouquet.strategies import Compressed
from bouquet.strategies.privacy import EPSILON
from bouquet.strategies.privacy import DPAccountant
from bouquet.strategies.rdp import adaptive_release_multiplier
from bouquet.strategies.rdp import epsilon_of

W = {"a": np.array([1.0, 2.0, 3.0, 4.0], np.float32), "b": np.zeros(3, np.float32)}
# a noise multiplier whose noise cannot show in float32 (DPAccountant needs z > 0)
TINY = 1e-12


class Grid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def _arrays() -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in W.items()})


def _dp(
    z: float = TINY,
    clip: float = 1.0,
    m: int = 2,
    server_side: bool = False,
    n: int = 2,
) -> DPAccountant:
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if server_side
        else DifferentialPrivacyClientSideFixedClipping
    )
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
    return DPAccountant(wrapper(inner, z, clip, m), population_size=n, delta=1e-5)


def _updates() -> dict[int, dict[str, np.ndarray]]:
    # norm 0.5
    return {
        # norm 5
        1: {"a": np.array([3.0, 0, 0, 4.0], np.float32), "b": np.zeros(3, np.float32)},
        2: {"a": np.zeros(4, np.float32), "b": np.array([0.0, 0.5, 0.0], np.float32)},
    }


def _dense(node: int, n: int):
    return make_reply(
        {k: W[k] + u for k, u in _updates()[node].items()}, n, node_id=node
    )


def _topk(node: int, n: int):
    names = list(W)
    enc, _ = TopKCompressor(alpha=1.0, residual_decay=0.0).compress(
        [_updates()[node][k] for k in names], None
    )
    return make_reply(
        None, n, node_id=node, array_record=encoded_arrayrecord(names, enc)
    )


def _expected() -> dict[str, np.ndarray]:
    """Unweighted mean of the updates, node 1's clipped from norm 5 to 1."""
    u1 = {k: v / 5.0 for k, v in _updates()[1].items()}
    return {k: W[k] + (u1[k] + _updates()[2][k]) / 2 for k in W}


def _check(arrays: ArrayRecord | None) -> None:
    assert arrays is not None
    for k, v in _expected().items():
        np.testing.assert_allclose(arrays[k].numpy(), v, rtol=1e-6, atol=1e-6)


def test_epsilon_grows_with_rounds_and_falls_with_noise_and_sampling():
    eps = [epsilon_of([(1.0, 1.0)] * r, 1e-5) for r in (1, 5, 20)]
    assert 0 < eps[0] < eps[1] < eps[2] < math.inf
    assert epsilon_of([(1.0, 2.0)] * 5, 1e-5) < eps[1]
    assert epsilon_of([(0.1, 1.0)] * 5, 1e-5) < eps[1]  # subsampling amplifies
    assert epsilon_of([], 1e-5) == 0.0
    with pytest.raises(ValueError, match="noise multiplier z > 0"):
        epsilon_of([(1.0, 0.0)], 1e-5)


def test_epsilon_is_within_the_classic_rdp_bound_of_the_gaussian():
    """q = 1: T Gaussians of multiplier z have RDP T a / (2 z^2); eps <= min_a RDP +
    log(1/delta) / (a - 1)."""
    t, z, delta = 10, 1.5, 1e-5
    bound = min(
        t * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in range(2, 513)
    )
    got = epsilon_of([(1.0, z)] * t, delta)
    assert 0.5 * bound < got <= bound + 1e-9


@pytest.mark.parametrize("server_side", [False, True])
def test_dense_round_clips_to_the_bound_and_averages_unweighted(server_side):
    dp = _dp(server_side=server_side)
    assert len(list(dp.configure_train(1, _arrays(), ConfigRecord(), Grid(2)))) == 2
    # 1 and 100 examples: weights ignored
    arrays, metrics = dp.aggregate_train(1, [_dense(1, 1), _dense(2, 100)])
    _check(arrays)
    assert metrics is not None and metrics[EPSILON] == pytest.approx(
        epsilon_of([(1.0, TINY)], 1e-5)
    )
    report = dp.round_report()
    assert report["dp_clipped_server"] == 1 and report[EPSILON] == metrics[EPSILON]


def test_inside_compressed_dp_sees_decoded_updates():
    outer = Compressed(_dp())
    list(outer.configure_train(1, _arrays(), ConfigRecord(), Grid(2)))
    arrays, _ = outer.aggregate_train(1, [_topk(1, 1), _topk(2, 100)])
    # the sparse fast path would skip the DP wrapper: never taken
    assert outer.last_path == "dense"
    _check(arrays)
    assert outer.round_report()[EPSILON] > 0


def test_compressed_reply_reaching_dp_directly_is_dropped_with_a_reason():
    dp = _dp(m=2)
    list(dp.configure_train(1, _arrays(), ConfigRecord(), Grid(2)))
    arrays, _ = dp.aggregate_train(1, [_topk(1, 1), _dense(2, 1)])
    assert arrays is not None
    np.testing.assert_allclose(
        arrays["b"].numpy(), W["b"] + _updates()[2]["b"], atol=1e-6
    )
    report = dp.round_report()
    assert (
        report["clients_dropped"] == 1
        and "put Compressed outside it" in report["drop_reasons"][0]
    )


def test_a_round_flower_does_not_release_spends_nothing():
    dp = _dp()
    list(dp.configure_train(1, _arrays(), ConfigRecord(), Grid(2)))
    arrays, _ = dp.aggregate_train(
        1, [_dense(1, 1), make_reply(None, 1, node_id=2, error="boom")]
    )
    assert arrays is None  # Flower's DP wrappers skip a round with an error reply
    assert dp.epsilon == 0.0 and dp.round_report()[EPSILON] == 0.0


def test_fewer_replies_than_sampled_are_accounted_with_the_noise_actually_added():
    dp = _dp(z=1.0, m=4, n=8)
    list(dp.configure_train(1, _arrays(), ConfigRecord(), Grid(4)))
    # 2 of 4: noise z C / 4 on a mean of 2 = z/2 on the sum
    dp.aggregate_train(1, [_dense(1, 1), _dense(2, 1)])
    assert dp.state_dict() == {"events": [[0.5, 0.5]]}
    assert dp.epsilon == pytest.approx(epsilon_of([(0.5, 0.5)], 1e-5))


def test_state_round_trip_and_refusals():
    dp = _dp(z=1.0)
    list(dp.configure_train(1, _arrays(), ConfigRecord(), Grid(2)))
    dp.aggregate_train(1, [_dense(1, 1), _dense(2, 1)])
    fresh = _dp(z=1.0)
    fresh.load_state_dict(dp.state_dict())
    assert fresh.epsilon == dp.epsilon > 0
    with pytest.raises(ValueError, match="events"):
        fresh.load_state_dict({"events": [[1.0]]})
    with pytest.raises(ValueError, match="noise multiplier z > 0"):
        fresh.load_state_dict({"events": [[1.0, -1.0]]})
    with pytest.raises(ValueError, match="DPAccountant wraps one of Flower's"):
        DPAccountant(FedAvg(), population_size=2, delta=1e-5)
    noiseless_count = DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(), 0.1, 20, clipped_count_stddev=1.0
    )
    noiseless_count.clipped_count_stddev = (
        0.0  # Flower refuses it only together with z > 0
    )
    with pytest.raises(ValueError, match="clipped count is released without noise"):
        DPAccountant(noiseless_count, population_size=20, delta=1e-5)
    with pytest.raises(ValueError, match="epsilon is infinite"):
        DPAccountant(
            DifferentialPrivacyClientSideFixedClipping(FedAvg(), 0.0, 1.0, 2),
            population_size=2,
            delta=1e-5,
        )
    for bad in (
        {"population_size": 1, "delta": 1e-5},
        {"population_size": 2, "delta": 1.0},
    ):
        with pytest.raises(ValueError):
            DPAccountant(
                DifferentialPrivacyClientSideFixedClipping(FedAvg(), 1.0, 1.0, 2), **bad
            )


# ------------------------------------------------------------------ adaptive clipping
def _adaptive(
    server_side: bool, z: float = TINY, sigma_b: float = 1e-9
) -> DPAccountant:
    wrapper = (
        DifferentialPrivacyServerSideAdaptiveClipping
        if server_side
        else DifferentialPrivacyClientSideAdaptiveClipping
    )
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
    # target quantile 0: the bound moves by exp(-0.2 * clipped fraction), as Flower
    # computes it
    dp = wrapper(
        inner,
        z,
        2,
        initial_clipping_norm=1.0,
        target_clipped_quantile=0.0,
        clip_norm_lr=0.2,
        clipped_count_stddev=sigma_b,
    )
    # the test reads values, not noise; the accounting below uses what it is set to
    dp.noise_multiplier = TINY
    return DPAccountant(dp, population_size=4, delta=1e-5)


def _with_bit(reply, clipped: bool):
    # what Flower's adaptiveclipping_mod adds
    reply.content["metrics"]["norm_bit"] = int(clipped)
    return reply


@pytest.mark.parametrize(
    "server_side", [False, True], ids=["client-side", "server-side"]
)
def test_adaptive_clipping_inside_compressed_sees_decoded_updates_and_is_accounted(
    server_side,
):
    outer = Compressed(_adaptive(server_side))
    list(outer.configure_train(1, _arrays(), ConfigRecord(), Grid(2)))
    replies = [_topk(1, 1), _topk(2, 100)]
    # the clients report whether they clipped (node 1's norm 5 is above C = 1)
    if not server_side:
        replies = [_with_bit(replies[0], True), _with_bit(replies[1], False)]
    arrays, metrics = outer.aggregate_train(1, replies)
    assert outer.last_path == "dense"
    _check(arrays)  # decoded, node 1's update clipped to C = 1, unweighted mean
    dp = outer.strategy.strategy
    # one of two updates was above the bound: the count saw it (not hidden by a clip
    # before it)
    assert dp.clipping_norm == pytest.approx(math.exp(-0.2 * 0.5), rel=1e-6)
    report = outer.round_report()
    # server-side: the wrapper clips, not us
    assert report["dp_clipped_server"] == (0 if server_side else 1)
    z = adaptive_release_multiplier(TINY * 2 / 2, 1e-9)
    assert metrics is not None and metrics[EPSILON] == pytest.approx(
        epsilon_of([(0.5, z)], 1e-5)
    )


def test_adaptive_release_is_one_gaussian_of_both_multipliers():
    assert adaptive_release_multiplier(1.0, 1.0) == pytest.approx(2**-0.5)
    # a count with huge noise costs nothing
    assert adaptive_release_multiplier(0.7, 1e6) == pytest.approx(0.7)
    assert adaptive_release_multiplier(1e6, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="without noise"):
        adaptive_release_multiplier(1.0, 0.0)
