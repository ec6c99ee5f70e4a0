"""AsyncFedAvg checkpoints and resume on a scripted fake Grid."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from async_grid import Behaviour
from async_grid import FakeGrid
from async_grid import learner_reports
from async_grid import run_async
from async_grid import run_recorded
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import MetricRecord

from bouquet import keys
from bouquet.strategies.async_fedavg import AsyncFedAvg


def _checkpoints(strategy: AsyncFedAvg, every: int) -> list[tuple[int, dict, dict]]:
    """Bind a checkpoint callable that keeps (updates, model, state_dict) of every
    call."""
    import copy

    saved: list[tuple[int, dict, dict]] = []

    def save(updates: int, arrays: dict) -> None:
        saved.append(
            (
                updates,
                {k: v.copy() for k, v in arrays.items()},
                copy.deepcopy(strategy.state_dict()),
            )
        )

    strategy.bind_checkpoint(save, every)
    return saved


def _continue(
    strategy: AsyncFedAvg,
    grid: FakeGrid,
    arrays: dict,
    state: dict,
    evals: list[int] | None = None,
):
    strategy.load_state_dict(state)

    def evaluate_fn(step: int, record: ArrayRecord) -> MetricRecord:
        if evals is not None:
            evals.append(step)
        return MetricRecord({"accuracy": float(step)})

    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return strategy.start(
        grid, record, num_rounds=3, timeout=60, evaluate_fn=evaluate_fn
    )


def _loop_warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The warnings AsyncFedAvg logs from now on (its own, its run loop's and its
    per-node steps'), as strings."""
    from bouquet.strategies import async_fedavg
    from bouquet.strategies import async_nodes
    from bouquet.strategies import async_run

    warnings: list[str] = []
    for module in (async_fedavg, async_nodes, async_run):
        monkeypatch.setattr(
            module,
            "log",
            lambda level, msg, *a: warnings.append(msg % a) if level >= 30 else None,
        )
    return warnings


@pytest.mark.parametrize(
    "policy",
    [
        {"policy": "constant", "alpha": 0.5},
        {"policy": "fedbuff", "buffer_size": 3, "exponent": 0.0},
    ],
)
def test_checkpoint_every_n_applied_updates_and_resume_continues_the_run(
    policy: dict,
) -> None:
    # One node answering every tick has nothing in flight at a checkpoint (it is
    # re-dispatched after), so the resumed run must end exactly where the uninterrupted
    # one did.
    def make() -> AsyncFedAvg:
        return AsyncFedAvg(
            **policy,
            max_updates=12,
            eval_every=2,
            plateau_window=0,
            poll_interval_s=0.0,
        )

    full = make()
    saved = _checkpoints(full, 5)
    expected = run_async(full, FakeGrid({1: ("ok", 1, 1.0)}))
    # every 5 applied updates, and when the run stops
    assert [u for u, _, _ in saved] == [5, 10, 12]
    updates, arrays, state = saved[0]
    assert state["run"]["updates"] == 5 and state["run"]["checkpointed"] == 5
    if policy["policy"] == "fedbuff":
        # 3 applied as v1, 2 buffered
        assert state["run"]["version"] == 1 and len(state["run"]["buffer"]) == 2

    resumed, evals = make(), []
    result = _continue(resumed, FakeGrid({1: ("ok", 1, 1.0)}), arrays, state, evals)
    # no evaluation at the start: the line of update 4 exists
    assert evals == [6, 8, 10, 12]
    st = resumed.state
    assert st.updates == 12 and st.stop_reason == "update budget 12 reached"
    assert (
        st.applied_versions == full.state.applied_versions
        and st.version == full.state.version
    )
    assert st.staleness_log == full.state.staleness_log and st.tasks == full.state.tasks
    np.testing.assert_array_equal(
        result.arrays["w"].numpy(), expected.arrays["w"].numpy()
    )


def test_resume_sends_the_learner_window_values_on_and_warns_about_unknown_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def make() -> AsyncFedAvg:
        return AsyncFedAvg(
            policy="sliding_window",
            max_updates=12,
            eval_every=4,
            plateau_window=0,
            poll_interval_s=0.0,
        )

    behaviours: dict[int, Behaviour | Callable[[int], Behaviour]] = {
        1: ("ok", 1, 1.0),
        2: ("ok", 2, 1.0),
    }
    full = make()
    saved = _checkpoints(full, 6)
    run_async(full, FakeGrid(behaviours, extra=learner_reports(lambda t: 1.0)))
    _, arrays, state = saved[0]
    applied, staleness = state["run"]["node_applied"], state["run"]["node_staleness"]
    assert sum(applied.values()) == 6 and set(applied) == {1, 2}

    grid = FakeGrid(behaviours, extra=learner_reports(lambda t: 1.0))
    warnings = _loop_warnings(monkeypatch)
    _continue(make(), grid, arrays, state)
    assert warnings == []
    first = {node: next(c for n, c in grid.configs if n == node) for node in (1, 2)}
    # each node's count and last staleness go on from the checkpoint
    for node in (1, 2):
        assert first[node][keys.APPLIED_UPDATES] == applied[node]
        assert first[node][keys.PREV_STALENESS] == staleness[node]

    # nodes with other ids (a simulation's new nodes): their counters start afresh, with
    # a warning
    other = FakeGrid(
        {7: ("ok", 1, 1.0), 8: ("ok", 1, 1.0)}, extra=learner_reports(lambda t: 1.0)
    )
    resumed = make()
    _continue(resumed, other, arrays, state)
    assert [
        w
        for w in warnings
        if "2 of the 2 nodes in the checkpoint are not connected" in w
    ]
    assert [c[keys.APPLIED_UPDATES] for n, c in other.configs[:2]] == [0, 0]
    assert resumed.state.updates == 12 and resumed.state.applied_versions[:6] == list(
        range(1, 7)
    )


def test_resumed_budgets_count_what_happened_before_the_checkpoint() -> None:
    full = AsyncFedAvg(
        policy="constant",
        max_updates=6,
        eval_every=1,
        plateau_window=0,
        poll_interval_s=0.0,
    )
    saved = _checkpoints(full, 3)
    run_async(full, FakeGrid({1: ("ok", 1, 1.0)}))
    _, arrays, state = saved[0]
    # the wall time spent before the checkpoint counts: a 10 s budget already used up
    # stops at once
    state["run"]["elapsed_s"] = 11.0
    grid = FakeGrid({1: ("ok", 1, 1.0)})
    late = AsyncFedAvg(
        policy="constant",
        max_updates=6,
        max_wall_s=10,
        eval_every=1,
        plateau_window=0,
        poll_interval_s=0.0,
    )
    _continue(late, grid, arrays, state)
    assert (
        late.state.stop_reason == "wall-time budget 10 s reached"
        and late.state.updates == 3
        and grid.pushed == []
    )
    # a larger update budget on resume extends the run
    more = AsyncFedAvg(
        policy="constant",
        max_updates=9,
        eval_every=1,
        plateau_window=0,
        poll_interval_s=0.0,
    )
    _continue(more, FakeGrid({1: ("ok", 1, 1.0)}), arrays, state)
    assert more.state.updates == 9 and more.state.version == 9


def test_a_failed_checkpoint_write_is_logged_and_the_run_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def save(updates: int, arrays: dict) -> None:
        calls.append(updates)
        if updates == 2:
            raise OSError("disk full")

    warnings = _loop_warnings(monkeypatch)
    strategy = AsyncFedAvg(
        policy="constant", max_updates=6, plateau_window=0, poll_interval_s=0.0
    ).bind_checkpoint(save, 2)
    run_async(strategy, FakeGrid({1: ("ok", 1, 1.0)}))
    assert calls == [2, 4, 6] and strategy.state.updates == 6
    assert warnings == ["async: checkpoint after 2 updates skipped: disk full"]


def test_checkpoint_settings_and_foreign_states_are_refused() -> None:
    with pytest.raises(ValueError, match="every=-1 must be an integer >= 0"):
        AsyncFedAvg().bind_checkpoint(lambda u, a: None, -1)
    state = AsyncFedAvg(policy="polynomial").state_dict()
    with pytest.raises(
        ValueError,
        match="the checkpoint's policy is 'polynomial', this strategy's "
        "'sliding_window'",
    ):
        AsyncFedAvg(policy="sliding_window").load_state_dict(state)
    with pytest.raises(ValueError, match="not an AsyncFedAvg state"):
        AsyncFedAvg().load_state_dict({"round": 3})
    broken = AsyncFedAvg(policy="constant").state_dict()
    del broken["run"]["version"]
    strategy = AsyncFedAvg(policy="constant", max_updates=2, poll_interval_s=0.0)
    strategy.load_state_dict(broken)
    with pytest.raises(ValueError, match="async checkpoint state lacks version"):
        run_async(strategy, FakeGrid({1: ("ok", 1, 1.0)}))


def test_update_log_lists_every_accepted_update_with_the_scale_of_its_window() -> None:
    from async_checks import server_scales
    from async_checks import update_log

    # node 3 is slow on every third task: staleness varies by node
    def schedule() -> FakeGrid:
        return FakeGrid(
            {
                1: ("ok", 1, 1.0),
                2: ("ok", 2, 1.0),
                3: lambda n: ("ok", 4 if n % 3 == 0 else 1, 1.0),
            }
        )

    for per_node in (True, False):
        strategy = AsyncFedAvg(
            policy="sliding_window",
            window_side="server",
            per_node=per_node,
            window=3,
            max_updates=30,
            eval_every=4,
            plateau_window=0,
            poll_interval_s=0.0,
        )
        log = update_log(run_recorded(strategy, schedule()))
        assert [t for _, t, _ in log] == strategy.state.staleness_log and [
            s for *_, s in log
        ] == strategy.state.scale_log
        assert {n for n, _, _ in log} == {1, 2, 3}
        scales = [s for *_, s in log]
        assert scales == pytest.approx(server_scales(log, 3, per_node))
        # per node or shared: it shows
        assert scales != pytest.approx(server_scales(log, 3, not per_node))
        assert min(scales) < 0.6
