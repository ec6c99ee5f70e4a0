"""Staleness policies: each scale on hand-made staleness sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bouquet.clients.slow import speed_factors
from bouquet.staleness_window import window_scale
from bouquet.strategies.staleness import POLICIES
from bouquet.strategies.staleness import ConstantPolicy
from bouquet.strategies.staleness import FedBuffPolicy
from bouquet.strategies.staleness import HingePolicy
from bouquet.strategies.staleness import PolynomialPolicy
from bouquet.strategies.staleness import SlidingWindowPolicy
from bouquet.strategies.staleness import hinge_scale
from bouquet.strategies.staleness import make_policy
from bouquet.strategies.staleness import polynomial_scale
from bouquet.strategies.staleness import staleness_context

SEQUENCE = [0, 1, 3, 0, 7, 2]


def test_constant_is_one() -> None:
    policy = ConstantPolicy()
    assert [policy(t) for t in SEQUENCE] == [1.0] * len(SEQUENCE)


def test_polynomial_by_hand() -> None:
    policy = PolynomialPolicy(exponent=0.5)
    assert [policy(t) for t in SEQUENCE] == pytest.approx(
        [1.0, 1 / math.sqrt(2), 0.5, 1.0, 1 / math.sqrt(8), 1 / math.sqrt(3)]
    )
    assert polynomial_scale(3, 1.0) == pytest.approx(0.25)
    assert polynomial_scale(5, 0.0) == 1.0


def test_hinge_by_hand() -> None:
    policy = HingePolicy(hinge_a=10, hinge_b=4)
    # 1 up to b = 4, then 1 / (10 (tau - 4) + 1)
    assert [policy(t) for t in [0, 4, 5, 7]] == pytest.approx(
        [1.0, 1.0, 1 / 11, 1 / 31]
    )
    assert hinge_scale(6, 0.5, 2) == pytest.approx(1 / 3)


def test_fedbuff_scales_and_buffers() -> None:
    policy = FedBuffPolicy(buffer_size=3, exponent=0.5, server_lr=0.8)
    assert policy.buffer_size == 3 and policy.server_lr == 0.8
    assert policy(3) == pytest.approx(0.5)
    assert FedBuffPolicy(exponent=0.0)(9) == 1.0  # scaling switched off


def test_sliding_window_by_hand() -> None:
    policy = SlidingWindowPolicy(window=3, exponent=1.0)
    got = [policy(t) for t in SEQUENCE]
    # context = mean of the last <= 3 samples before each one; scale = min(1, (1 + c) /
    # (1 + tau))
    expected = [
        1.0,  # empty window: scale 1
        min(1.0, (1 + 0) / (1 + 1)),  # window [0]
        min(1.0, (1 + 0.5) / (1 + 3)),  # window [0, 1]
        # window [0, 1, 3]: fresher than usual, capped at 1
        min(1.0, (1 + 4 / 3) / (1 + 0)),
        min(1.0, (1 + 4 / 3) / (1 + 7)),  # window [1, 3, 0]
        # window [3, 0, 7]: tau 2 below the context -> 1
        min(1.0, (1 + 10 / 3) / (1 + 2)),
    ]
    assert got == pytest.approx(expected)
    assert policy.samples() == [0.0, 7.0, 2.0]


def test_sliding_window_relative_not_absolute() -> None:
    """Under uniformly high staleness the window gives full rate where FedAsync damps
    all."""
    window = SlidingWindowPolicy(window=5)
    poly = PolynomialPolicy(exponent=0.5)
    steady = [10] * 8
    assert [window(t) for t in steady][1:] == pytest.approx([1.0] * 7)
    assert poly(10) == pytest.approx(11**-0.5)
    assert window(30) == pytest.approx(11 / 31)  # a straggler relative to the context


def test_sliding_window_median_and_per_node() -> None:
    policy = SlidingWindowPolicy(window=4, context="median", per_node=True)
    for t in [0, 0, 10]:
        policy(t, node_id=1)
    policy(5, node_id=2)
    assert policy.samples(1) == [0, 0, 10] and policy.samples(2) == [5]
    assert policy.context(1) == 0.0
    assert policy.scale(1, policy.context(1)) == pytest.approx(0.5)
    assert staleness_context([1, 3, 5, 100], "median") == 4.0
    assert staleness_context([], "mean") is None
    boosted = SlidingWindowPolicy(window=2, max_scale=2.0)
    boosted(4)
    # fresher than the context: boosted up to the cap
    assert boosted(0) == pytest.approx(2.0)


def test_max_staleness_cutoff() -> None:
    for name in POLICIES:
        policy = make_policy(name, max_staleness=3)
        assert policy.accepts(3) and not policy.accepts(4)
        assert policy(4) == 0.0
    window = make_policy("sliding_window", max_staleness=3, window=4)
    window(9)
    assert window.samples() == []  # a rejected update does not enter the window


@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=60))
def test_scales_stay_in_range(taus: list[int]) -> None:
    for name in POLICIES:
        policy = make_policy(name, window=7)
        for t in taus:
            s = policy(t)
            assert 0.0 < s <= 1.0
    # monotone: a staler update never gets a larger scale under the same context
    for a, b in zip(sorted(taus), sorted(taus)[1:], strict=False):
        assert polynomial_scale(b, 0.5) <= polynomial_scale(a, 0.5)
        assert hinge_scale(b, 10, 4) <= hinge_scale(a, 10, 4)
        assert window_scale(b, 5.0) <= window_scale(a, 5.0)


def test_make_policy_takes_each_policys_own_settings_and_defaults() -> None:
    assert make_policy("polynomial").exponent == 0.5
    assert make_policy("fedbuff", exponent=None).exponent == 0.5
    assert make_policy("sliding_window").exponent == 1.0
    hinge = make_policy("hinge", window=3, exponent=2.0, hinge_a=2.0)
    assert isinstance(hinge, HingePolicy) and (hinge.a, hinge.b) == (2.0, 4.0)
    buffered = make_policy("fedbuff", buffer_size=3, server_lr=0.5, max_scale=2.0)
    assert (buffered.buffer_size, buffered.server_lr) == (3, 0.5)
    with pytest.raises(TypeError, match="windw"):
        make_policy("sliding_window", windw=3)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="policy='fifo'"):
        make_policy("fifo")
    with pytest.raises(ValueError, match="window=0"):
        SlidingWindowPolicy(window=0)
    with pytest.raises(ValueError, match="context='max'"):
        SlidingWindowPolicy(context="max")
    with pytest.raises(ValueError, match="buffer_size=0"):
        FedBuffPolicy(buffer_size=0)
    with pytest.raises(ValueError, match="staleness=-1"):
        PolynomialPolicy()(-1)
    with pytest.raises(ValueError, match="max_staleness=-2"):
        ConstantPolicy(max_staleness=-2)


def test_speed_factors_are_seeded_and_heterogeneous() -> None:
    a = speed_factors(20, 0.5, 0.2, 5.0, seed=3)
    b = speed_factors(20, 0.5, 0.2, 5.0, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, speed_factors(20, 0.5, 0.2, 5.0, seed=4))
    base = speed_factors(20, 0.5, 0.0, 5.0, seed=3)
    slow = np.flatnonzero(~np.isclose(a, base))
    assert len(slow) == 4  # exactly round(0.2 * 20) stragglers, each 5x slower
    np.testing.assert_allclose(a[slow], 5.0 * base[slow])
    np.testing.assert_allclose(speed_factors(5, 0.0, 0.0, 1.0, seed=0), 1.0)
    with pytest.raises(ValueError, match="slow_fraction"):
        speed_factors(5, 0.5, 1.5, 5.0, seed=0)


def test_sliding_window_state_round_trip() -> None:
    policy = SlidingWindowPolicy(window=3, per_node=True)
    for node, tau in [(1, 0), (2, 4), (1, 2), (1, 5), (2, 1), (1, 1)]:
        policy(tau, node)
    state = policy.state_dict()
    assert state == {"windows": [[1, [2.0, 5.0, 1.0]], [2, [4.0, 1.0]]]}
    copy = SlidingWindowPolicy(window=3, per_node=True)
    copy.load_state_dict(state)
    assert [copy(t, n) for n, t in [(1, 3), (2, 0), (3, 2)]] == [
        policy(t, n) for n, t in [(1, 3), (2, 0), (3, 2)]
    ]
    shared = SlidingWindowPolicy(window=2)
    shared.load_state_dict({"windows": [[None, [1, 2, 3]]]})
    assert shared.samples() == [2.0, 3.0]  # cut to this policy's window
    with pytest.raises(ValueError, match="is not \\[node_id or None, \\[samples\\]\\]"):
        shared.load_state_dict({"windows": [["a", [1]]]})
    with pytest.raises(ValueError, match="staleness=-1"):
        shared.load_state_dict({"windows": [[None, [-1]]]})
    assert PolynomialPolicy().state_dict() == {}
    with pytest.raises(ValueError, match="policy 'constant' keeps no state"):
        ConstantPolicy().load_state_dict({"windows": []})


def test_one_default_window_everywhere() -> None:
    # DEFAULT_WINDOW is the default of every window in Python and the value of
    # conf/strategy/async.yaml
    import inspect
    from pathlib import Path

    import yaml

    from bouquet.clients.staleness import staleness_window_mod
    from bouquet.staleness_window import DEFAULT_WINDOW
    from bouquet.strategies.async_fedavg import AsyncFedAvg

    conf = yaml.safe_load(
        (
            Path(__file__).resolve().parents[2] / "conf" / "strategy" / "async.yaml"
        ).read_text()
    )
    assert conf["window"] == DEFAULT_WINDOW
    for fn in (SlidingWindowPolicy, AsyncFedAvg, staleness_window_mod):
        assert inspect.signature(fn).parameters["window"].default == DEFAULT_WINDOW, fn
    assert SlidingWindowPolicy().window == DEFAULT_WINDOW
    assert make_policy("sliding_window").window == DEFAULT_WINDOW  # the class's default
