"""AsyncFedAvg on a scripted fake Grid: version and staleness bookkeeping, failures,
policies, stopping."""

from __future__ import annotations

import numpy as np
import pytest
from async_grid import Behaviour
from async_grid import FakeGrid
from async_grid import initial_arrays
from async_grid import learner_reports
from async_grid import run_async
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import MetricRecord

from bouquet import keys
from bouquet.strategies.async_fedavg import AsyncFedAvg
from bouquet.strategies.async_rules import buffered_step
from bouquet.strategies.async_rules import mix
from bouquet.strategies.async_rules import plateaued


def test_versions_and_staleness_in_arrival_order() -> None:
    # Node 1 answers every tick, node 2 every 3 ticks: node 2's updates are stale.
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 3, 10.0)})
    strategy = AsyncFedAvg(
        policy="constant", alpha=0.5, max_updates=5, eval_every=2, poll_interval_s=0.0
    )
    result = run_async(strategy, grid)
    st = strategy.state
    # Tick 1: node 1 (sent v0) -> v1. Tick 2: node 1 (sent v1) -> v2. Tick 3: node 2
    # (sent v0, now v2: tau 2) -> v3, then node 1 (sent v2, tau 1 since v3) -> v4. Tick
    # 4: node 1 (v4) -> v5.
    assert st.staleness_log == [0, 0, 2, 1, 0]
    assert st.applied_versions == [1, 2, 3, 4, 5]
    # The exact model: x <- x + 0.5 (x_start + delta - x), by hand.
    x, snaps = 0.0, {0: 0.0}
    for start, delta in [(0, 1.0), (1, 1.0), (0, 10.0), (2, 1.0), (4, 1.0)]:
        x = x + 0.5 * (snaps[start] + delta - x)
        snaps[len(snaps)] = x
    np.testing.assert_allclose(
        result.arrays["w"].numpy(), np.full(3, x, dtype=np.float32), rtol=1e-6
    )
    assert st.stop_reason == "update budget 5 reached"
    # Every pushed message carries the version of the model it holds, never decreasing.
    versions = [v for _, v in grid.pushed]
    assert versions == sorted(versions)


def test_stale_updates_are_down_weighted_and_cut_off() -> None:
    # Node 2 takes 3 ticks for its first task (tau 2: accepted), 5 for the next (tau 4:
    # cut off).
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: lambda n: ("ok", 3 if n == 1 else 5, 1.0)})
    strategy = AsyncFedAvg(
        policy="polynomial",
        exponent=1.0,
        alpha=1.0,
        max_staleness=2,
        max_updates=12,
        poll_interval_s=0.0,
    )
    run_async(strategy, grid)
    st = strategy.state
    assert max(st.staleness_log) <= 2  # staler ones were rejected, not applied
    assert any("max_staleness" in r for r in st.dropped)
    # polynomial with a = 1: scale = 1 / (1 + tau) for every accepted update
    assert st.scale_log == pytest.approx([1.0 / (1 + t) for t in st.staleness_log])
    assert 2 in st.staleness_log and min(st.scale_log) == pytest.approx(1.0 / 3)


def test_failing_and_silent_nodes_do_not_stop_the_others() -> None:
    # A tick takes 10 ms: 40 updates of node 1 take >= 0.4 s, node 3 times out after
    # 0.05 s twice.
    grid = FakeGrid(
        {1: ("ok", 1, 1.0), 2: ("error", 1, None), 3: ("hang", 0, None)}, tick_s=0.01
    )
    strategy = AsyncFedAvg(
        policy="constant",
        alpha=0.5,
        max_updates=40,
        reply_timeout_s=0.05,
        max_node_failures=2,
        poll_interval_s=0.01,
    )
    result = run_async(strategy, grid)
    st = strategy.state
    assert st.updates == 40 and st.stop_reason == "update budget 40 reached"
    assert st.excluded == {2, 3}  # failed twice in a row each: no longer used
    # re-dispatched once after its first error
    assert sum(1 for n, _ in grid.pushed if n == 2) == 2
    # abandoned after the timeout, retried once
    assert sum(1 for n, _ in grid.pushed if n == 3) == 2
    assert len(grid.abandoned) == 2
    assert np.all(np.isfinite(result.arrays["w"].numpy()))


def test_bad_reply_never_reaches_the_model() -> None:
    def corrupt(n: int) -> Behaviour:
        return ("ok", 1, float("nan"))

    grid = FakeGrid({1: ("ok", 1, 1.0), 2: corrupt})
    strategy = AsyncFedAvg(
        policy="constant", alpha=1.0, max_updates=4, poll_interval_s=0.0
    )
    result = run_async(strategy, grid)
    assert np.all(np.isfinite(result.arrays["w"].numpy()))
    assert strategy.state.excluded == {2}
    # only node 1's +1 updates, alpha=1
    np.testing.assert_allclose(result.arrays["w"].numpy(), 4.0)


def test_fedbuff_applies_the_mean_of_k_updates() -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 1, 3.0)})
    strategy = AsyncFedAvg(
        policy="fedbuff",
        buffer_size=2,
        exponent=0.0,
        server_lr=1.0,
        max_updates=4,
        poll_interval_s=0.0,
    )
    result = run_async(strategy, grid)
    # Both answer every tick: tick 1 -> buffer [1, 3] -> +2 (v1); tick 2 -> both sent at
    # v1 -> +2.
    assert strategy.state.applied_versions == [1, 2]
    assert strategy.state.staleness_log == [0, 0, 0, 0]
    np.testing.assert_allclose(result.arrays["w"].numpy(), 4.0)


def test_eval_every_and_plateau_stop() -> None:
    evals: list[int] = []
    grid = FakeGrid({1: ("ok", 1, 1.0)})
    strategy = AsyncFedAvg(
        policy="constant", max_updates=10, eval_every=3, poll_interval_s=0.0
    )
    run_async(strategy, grid, evals)
    assert evals == [0, 3, 6, 9, 10]
    assert plateaued([0.5, 0.6, 0.6, 0.6], window=2, min_delta=0.01)
    assert not plateaued([0.5, 0.6, 0.61, 0.7], window=2, min_delta=0.01)
    assert plateaued([1.0, 0.9, 0.95, 0.91], window=2, min_delta=0.05, mode="min")
    assert not plateaued([0.5, 0.6], window=2, min_delta=0.01)

    strategy = AsyncFedAvg(
        policy="constant",
        max_updates=1000,
        eval_every=1,
        plateau_window=3,
        poll_interval_s=0.0,
    )
    flat_evals: list[int] = []

    def flat_fn(step: int, arrays: ArrayRecord) -> MetricRecord:
        flat_evals.append(step)
        return MetricRecord({"accuracy": 0.5})

    strategy.start(
        FakeGrid({1: ("ok", 1, 1.0)}), initial_arrays(), timeout=60, evaluate_fn=flat_fn
    )
    assert "plateaued" in strategy.state.stop_reason
    # the 4th flat evaluation (after update 3) shows no gain over the window of 3: stop
    # at once
    assert strategy.state.updates == 3
    assert flat_evals == [0, 1, 2, 3]


def test_pure_update_rules() -> None:
    x = {"a": np.array([0.0, 2.0])}
    np.testing.assert_allclose(
        mix(x, {"a": np.array([4.0, 4.0])}, 0.25)["a"], [1.0, 2.5]
    )
    out = buffered_step(
        x, [{"a": np.array([2.0, 0.0])}, {"a": np.array([0.0, 4.0])}], [1.0, 0.5], 2.0
    )
    np.testing.assert_allclose(out["a"], [2.0, 4.0])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        AsyncFedAvg(alpha=0.0)
    with pytest.raises(ValueError, match="policy"):
        AsyncFedAvg(policy="nope")
    with pytest.raises(ValueError, match="eval_every"):
        AsyncFedAvg(eval_every=0)


def test_keyword_settings_are_one_frozen_object_shown_as_attributes() -> None:
    import dataclasses

    from bouquet.strategies.async_nodes import NodeSteps
    from bouquet.strategies.async_rules import AsyncSettings

    strategy = AsyncFedAvg(
        alpha=1,
        max_updates=7.0,
        eval_every=2.0,
        plateau_window=4.0,
        max_node_failures=2.0,
        poll_interval_s=0,
        reply_timeout_s=5,
        plateau_metric="loss",
        plateau_mode="min",
    )
    s = strategy.settings
    assert isinstance(s, AsyncSettings) and dataclasses.is_dataclass(s)
    assert (
        s.alpha,
        s.max_updates,
        s.eval_every,
        s.plateau_window,
        s.max_node_failures,
        s.poll_interval_s,
    ) == (1.0, 7, 2, 4, 2, 0.0)
    assert [
        type(v) for v in (s.alpha, s.max_updates, s.eval_every, s.poll_interval_s)
    ] == [float, int, int, float]
    assert s.reply_timeout_s == 5 and type(s.reply_timeout_s) is int  # kept as given
    # every setting reads as an attribute of the strategy
    for field in dataclasses.fields(AsyncSettings):
        assert getattr(strategy, field.name) == getattr(s, field.name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.alpha = 0.5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen setting"):
        strategy.alpha = 0.5
    assert AsyncSettings() == AsyncFedAvg().settings  # the same defaults
    # the per-node steps are a collaborator built on the run's state, not a base class
    assert not isinstance(strategy, NodeSteps)
    run_async(strategy, FakeGrid({1: ("ok", 1, 1.0)}))
    assert strategy._steps.state is strategy.state and strategy._steps.settings is s


def test_reply_update_checks_echo_and_payload(reply_factory) -> None:
    from bouquet.strategies.async_messages import reply_update

    base = {"w": np.ones(3, dtype=np.float32)}
    ok = reply_factory(
        {"w": np.full(3, 3.0, dtype=np.float32)}, 5, {keys.MODEL_VERSION: 7}
    )
    delta, reason = reply_update(ok, base, sent_version=7)
    assert reason is None
    np.testing.assert_allclose(delta["w"], 2.0)
    # a client claiming a fresher model
    _, reason = reply_update(ok, base, sent_version=6)
    assert "echoed model version 7" in reason
    wrong_shape = reply_factory({"w": np.ones(4, dtype=np.float32)}, 5)
    assert "shape" in reply_update(wrong_shape, base, sent_version=0)[1]
    no_weight = reply_factory({"w": np.ones(3, dtype=np.float32)}, 0)
    assert "num-examples" in reply_update(no_weight, base, sent_version=0)[1]
    odd = ArrayRecord(
        {"w": Array(dtype="float32", shape=(3,), stype="bouquet.nope/1", data=b"xx")}
    )
    garbage = reply_factory(None, 5, array_record=odd)
    delta, reason = reply_update(garbage, base, sent_version=0)
    assert delta == {} and reason.startswith("cannot decode")


# -------------------------------------------------------------- stopping on convergence
def test_default_plateau_window_by_hand() -> None:
    from bouquet.strategies.async_rules import plateau_evaluations

    # at least 5 evaluations
    assert plateau_evaluations(None, num_nodes=1, eval_every=10) == 5
    # 5 updates per node = 100 updates
    assert plateau_evaluations(None, num_nodes=20, eval_every=10) == 10
    # ceil(15 / 4) = 4 < 5
    assert plateau_evaluations(None, num_nodes=3, eval_every=4) == 5
    assert plateau_evaluations(None, num_nodes=30, eval_every=4) == 38  # ceil(150 / 4)
    assert (
        plateau_evaluations(3, num_nodes=20, eval_every=10) == 3
        and plateau_evaluations(0, 20, 10) == 0
    )


def _flat(step: int, arrays: ArrayRecord) -> MetricRecord:
    return MetricRecord({"accuracy": 0.5})


def test_a_flat_metric_stops_the_run_by_default_and_the_budget_caps_it_otherwise() -> (
    None
):
    # 2 nodes, evaluated every update: default window max(5, ceil(5 * 2 / 1)) = 10
    # evaluations
    strategy = AsyncFedAvg(
        policy="sliding_window", max_updates=1000, eval_every=1, poll_interval_s=0.0
    )
    strategy.start(
        FakeGrid(
            {1: ("ok", 1, 1.0), 2: ("ok", 1, 1.0)}, extra=learner_reports(lambda t: 1.0)
        ),
        initial_arrays(),
        timeout=60,
        evaluate_fn=_flat,
    )
    assert strategy.state.stop_reason == "accuracy plateaued over 10 evaluations"
    # the 11th flat evaluation (after update 10) shows no gain
    assert strategy.state.updates == 10
    # a metric that keeps improving by more than plateau_min_delta runs to the update
    # budget
    strategy = AsyncFedAvg(
        policy="sliding_window",
        max_updates=40,
        eval_every=1,
        plateau_min_delta=0.5,
        poll_interval_s=0.0,
    )
    strategy.start(
        FakeGrid({1: ("ok", 1, 1.0)}, extra=learner_reports(lambda t: 1.0)),
        initial_arrays(),
        timeout=60,
        evaluate_fn=lambda step, arrays: MetricRecord({"accuracy": float(step)}),
    )
    assert strategy.state.stop_reason == "update budget 40 reached"
    # plateau_window=0 switches the stop off
    strategy = AsyncFedAvg(
        policy="constant",
        max_updates=30,
        eval_every=1,
        plateau_window=0,
        poll_interval_s=0.0,
    )
    strategy.start(
        FakeGrid({1: ("ok", 1, 1.0)}), initial_arrays(), timeout=60, evaluate_fn=_flat
    )
    assert strategy.state.stop_reason == "update budget 30 reached"
    with pytest.raises(
        ValueError, match="plateau_min_delta=nan must be a finite number >= 0"
    ):
        AsyncFedAvg(plateau_min_delta=float("nan"))
