"""AsyncFedAvg's sliding window on a scripted fake Grid: learner-side rates, staleness
echoes, the real loop in process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from async_grid import FakeGrid
from async_grid import learner_reports
from async_grid import run_async
from async_grid import run_recorded

from bouquet import keys
from bouquet.strategies.async_fedavg import AsyncFedAvg


def test_train_messages_carry_each_nodes_previous_staleness() -> None:
    # test_versions_and_staleness_in_arrival_order's schedule: node 1 every tick (tau 0,
    # 0, 1, 0), node 2 every 3 ticks (its first update, sent at v0, applied at v2: tau
    # 2)
    grid = FakeGrid(
        {1: ("ok", 1, 1.0), 2: ("ok", 3, 10.0)}, extra=learner_reports(lambda task: 1.0)
    )
    strategy = AsyncFedAvg(
        policy="sliding_window", alpha=0.5, max_updates=5, poll_interval_s=0.0
    )
    run_async(strategy, grid)
    assert strategy.state.staleness_log == [0, 0, 2, 1, 0]
    sent = {
        node: [
            (c[keys.APPLIED_UPDATES], c.get(keys.PREV_STALENESS))
            for n, c in grid.configs
            if n == node
        ]
        for node in (1, 2)
    }
    assert sent[1] == [(0, None), (1, 0), (2, 0), (3, 1)]  # its 4th update ends the run
    assert sent[2] == [(0, None), (1, 2)]
    assert strategy.state.fallbacks == []


def test_server_applies_the_reported_rate() -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=learner_reports([0.5, 0.25, 1.0]))
    strategy = AsyncFedAvg(
        policy="sliding_window", alpha=0.5, max_updates=3, poll_interval_s=0.0
    )
    result = run_async(strategy, grid)
    # x <- x + alpha s (x_sent + 1 - x), by hand: the node always trained on the newest
    # model
    x = 0.0
    for s in (0.5, 0.25, 1.0):
        x = x + 0.5 * s * 1.0
    np.testing.assert_allclose(result.arrays["w"].numpy(), x, rtol=1e-6)
    assert (
        strategy.state.scale_log == [0.5, 0.25, 1.0] and strategy.state.fallbacks == []
    )


@pytest.mark.parametrize(
    ("learner_rate", "expected"), [("both", 0.25), ("server", 0.25), ("local", 0.5)]
)
def test_learner_rate_decides_where_the_scale_acts(
    learner_rate: str, expected: float
) -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=learner_reports([0.5]))
    strategy = AsyncFedAvg(
        policy="sliding_window",
        alpha=0.5,
        learner_rate=learner_rate,
        max_updates=1,
        poll_interval_s=0.0,
    )
    result = run_async(strategy, grid)
    # 0 + rate (0 + 1 - 0)
    np.testing.assert_allclose(result.arrays["w"].numpy(), expected)
    # the scale in effect, reported as lr_scale
    assert strategy.state.scale_log == [0.5]


def test_bad_reported_scale_falls_back_to_the_server_rule_and_is_counted() -> None:
    # one node, staleness always 0: the server's window rule gives ((1 + 0) / (1 +
    # 0))^1 = 1
    reported = [float("nan"), -0.5, 1.5, [0.5], None, 0.5]
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=learner_reports(reported))
    strategy = AsyncFedAvg(
        policy="sliding_window",
        alpha=0.5,
        max_scale=1.0,
        max_updates=6,
        eval_every=3,
        poll_interval_s=0.0,
    )
    rows = run_recorded(strategy, grid)
    st = strategy.state
    assert st.scale_log == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    # evaluations after updates 0, 3, 6
    assert [r["lr_scale_fallbacks"] for r in rows] == [0, 3, 2]
    reasons = " | ".join(st.fallbacks)
    for why in (
        "nan",
        "-0.5",
        "1.5 is outside [0, 1.0]",
        "[0.5] is not a number",
        "no lr-scale",
    ):
        assert why in reasons
    # a bad scale is not a bad update: it is applied with the server's rule
    assert st.dropped == []
    x = 0.0
    for s in st.scale_log:
        x = x + 0.5 * s * (x + 1.0 - x)
    np.testing.assert_allclose(st.arrays["w"], x, rtol=1e-6)


@pytest.mark.parametrize(
    ("echo", "reason"),
    [
        (
            lambda c: {
                keys.PREV_STALENESS: (c.get(keys.PREV_STALENESS) or 0) + 1,
                keys.APPLIED_UPDATES: c[keys.APPLIED_UPDATES],
            },
            "echoed prev staleness",
        ),
        (
            lambda c: {
                keys.PREV_STALENESS: c.get(keys.PREV_STALENESS),
                keys.APPLIED_UPDATES: c[keys.APPLIED_UPDATES] + 1,
            },
            "echoed applied updates",
        ),
    ],
)
def test_staleness_echo_from_another_message_is_rejected(
    echo: Callable[[dict], dict], reason: str
) -> None:
    # node 2's learner echoes values its message did not carry (a scale computed for
    # another message)
    grid = FakeGrid(
        {1: ("ok", 1, 1.0), 2: ("ok", 1, 100.0)},
        extra=learner_reports(lambda task: 1.0, echo={2: echo}),
    )
    strategy = AsyncFedAvg(
        policy="sliding_window",
        alpha=1.0,
        max_updates=4,
        max_node_failures=1,
        poll_interval_s=0.0,
    )
    result = run_async(strategy, grid)
    assert strategy.state.excluded == {2}
    assert any(reason in r for r in strategy.state.dropped), strategy.state.dropped
    # node 1's four +1 updates, alpha 1; node 2's +100 never
    np.testing.assert_allclose(result.arrays["w"].numpy(), 4.0)


def test_check_echo_by_hand(reply_factory) -> None:
    from bouquet.strategies.async_messages import check_echo

    sent = {keys.MODEL_VERSION: 3, keys.PREV_STALENESS: 2, keys.APPLIED_UPDATES: 5}
    echo = {keys.MODEL_VERSION: 3, keys.PREV_STALENESS: 2, keys.APPLIED_UPDATES: 5}
    assert check_echo(reply_factory({"w": np.ones(1)}, 1, echo), sent) is None
    # nothing echoed: nothing to check
    assert check_echo(reply_factory({"w": np.ones(1)}, 1), sent) is None
    wrong = reply_factory({"w": np.ones(1)}, 1, {**echo, keys.PREV_STALENESS: 1})
    assert check_echo(wrong, sent) == "echoed prev staleness 1 != sent 2"
    fraction = reply_factory({"w": np.ones(1)}, 1, {**echo, keys.APPLIED_UPDATES: 5.5})
    assert check_echo(fraction, sent) == "echoed applied updates 5.5 != sent 5"
    unsent = reply_factory({"w": np.ones(1)}, 1, {keys.PREV_STALENESS: 0})
    assert (
        check_echo(unsent, {**sent, keys.PREV_STALENESS: None})
        == "echoed prev staleness 0 but the message carried none"
    )


def test_server_side_window_sends_no_sample_and_ignores_reported_scales() -> None:
    # node 2 is stale (tau 2) once: the shared server-side window damps it, whatever the
    # node says
    grid = FakeGrid(
        {1: ("ok", 1, 1.0), 2: ("ok", 3, 10.0)},
        extra=lambda node, config, task: {keys.LR_SCALE: 0.125},
    )
    strategy = AsyncFedAvg(
        policy="sliding_window",
        window_side="server",
        alpha=0.5,
        max_updates=5,
        poll_interval_s=0.0,
    )
    rows = run_recorded(strategy, grid)
    assert all(
        keys.PREV_STALENESS not in c and keys.APPLIED_UPDATES not in c
        for _, c in grid.configs
    )
    # shared window, mean context, a = 1: taus 0, 0, 2, 1, 0 -> 1, 1, (1+0)/(1+2),
    # min(1, (1+2/3)/2), 1
    assert strategy.state.scale_log == pytest.approx(
        [1.0, 1.0, 1 / 3, (1 + 2 / 3) / 2, 1.0]
    )
    assert "lr_scale_fallbacks" not in rows[-1] and strategy.state.fallbacks == []


def test_staleness_echo_to_a_server_side_window_is_rejected() -> None:
    grid = FakeGrid(
        {1: ("ok", 1, 1.0)}, extra=lambda node, config, task: {keys.PREV_STALENESS: 0}
    )
    strategy = AsyncFedAvg(
        policy="sliding_window",
        window_side="server",
        max_updates=2,
        max_node_failures=1,
        poll_interval_s=0.0,
    )
    run_async(strategy, grid)
    assert strategy.state.stop_reason == "no usable node left"
    assert strategy.state.dropped == [
        "node 1: reply rejected: echoed prev staleness 0 but the message carried none"
    ]


def test_learner_side_settings_are_checked() -> None:
    with pytest.raises(
        ValueError, match="window_side='nope' is unknown; allowed: learner, server"
    ):
        AsyncFedAvg(policy="sliding_window", window_side="nope")
    with pytest.raises(
        ValueError, match="learner_rate='nope' is unknown; allowed: both, local, server"
    ):
        AsyncFedAvg(policy="sliding_window", learner_rate="nope")
    assert AsyncFedAvg(policy="sliding_window").learner_side
    # no window to move
    assert not AsyncFedAvg(policy="polynomial", window_side="learner").learner_side


# ---------------------------------------- the learner-side window through the real loop
def test_learner_side_window_through_the_real_loop_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``strategy=async policy=sliding_window`` (learner side, the default) run by
    ``run_server`` with the ClientApp of ``make_client_app`` (TorchClient + the
    staleness mod, the real wiring) on an in-process grid whose nodes answer after
    seeded delays: every node's scale follows its own window, the client trained with
    that rate, the server applied it."""
    from collections import Counter
    from collections import defaultdict

    from hydra import compose
    from hydra import initialize_config_module
    from inprocess_grid import InProcessGrid
    from omegaconf import OmegaConf

    from bouquet.clients import torch_client
    from bouquet.simulations.run import results
    from bouquet.simulations.run import serverapp as server
    from bouquet.strategies import async_state

    class LaggedGrid(InProcessGrid):
        """Replies are computed at push time but released after ``lag(node index,
        task)`` pulls."""

        def __init__(self, app, num_nodes: int, lag: Callable[[int, int], int]) -> None:
            super().__init__(app, num_nodes)
            self.lag, self.tick, self.due, self.sent = lag, 0, {}, Counter()

        def push_messages(self, messages):
            messages = list(messages)
            ids = list(super().push_messages(messages))
            for msg, mid in zip(messages, ids, strict=True):
                node = msg.metadata.dst_node_id
                self.sent[node] += 1
                self.due[mid] = self.tick + self.lag(
                    self.node_ids.index(node), self.sent[node]
                )
            return ids

        def pull_messages(self, message_ids):
            self.tick += 1
            return super().pull_messages(
                [m for m in message_ids if self.due.get(m, 0) <= self.tick]
            )

    window, updates = 4, 24
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(
            compose(
                "config",
                overrides=[
                    "dataset=digits",
                    "model=mlp",
                    "client=plain",
                    "client.local_epochs=1",
                    "strategy=async",
                    "simulation.num_clients=3",
                    "seed=0",
                    f"strategy.max_updates={updates}",
                    "strategy.eval_every=8",
                    f"strategy.window={window}",
                    "strategy.alpha=0.5",
                ],
            ),
            resolve=True,
        )
    assert (
        cfg["strategy"]["policy"] == "sliding_window"
        and cfg["strategy"]["window_side"] == "learner"
    )
    base_lr = float(cfg["client"]["lr"])

    trained_lrs: list[float] = []
    original_train = torch_client.train

    def spy_train(*args, **kwargs):
        trained_lrs.append(kwargs["lr"])
        return original_train(*args, **kwargs)

    # node -> (tau, scale) per accepted update
    applied: dict[int, list[tuple[int, float]]] = defaultdict(list)
    original_accept = async_state.AsyncState.accept

    def spy_accept(self, staleness, scale, node_id=None):
        applied[node_id].append((staleness, scale))
        return original_accept(self, staleness, scale, node_id)

    monkeypatch.setattr(torch_client, "train", spy_train)
    monkeypatch.setattr(async_state.AsyncState, "accept", spy_accept)
    monkeypatch.setattr(results, "plot_curves", lambda rows, path: None)
    # node 0 answers every pull, node 1 every 2nd, node 2 usually at once but twice very
    # late
    grid = LaggedGrid(
        server.make_client_app(cfg),
        3,
        lambda i, task: [1, 2, 5 if task in (3, 7) else 1][i],
    )
    server.run_server(grid, cfg, tmp_path)

    assert grid.errors == []
    rows = results.read_rows(tmp_path)
    assert rows[-1]["stop_reason"] == f"update budget {updates} reached"
    assert (
        sum(r["lr_scale_fallbacks"] for r in rows) == 0
        and sum(r["clients_failed"] for r in rows) == 0
    )
    train = grid.deliveries("train")
    assert len(trained_lrs) == len(train)
    scales = []
    for node in grid.node_ids:
        mine = [
            (d, lr)
            for d, lr in zip(train, trained_lrs, strict=True)
            if d.node_id == node
        ]
        taus = [tau for tau, _ in applied[node]]
        samples: list[float] = []
        scale = 1.0
        for k, (d, lr) in enumerate(mine):
            # the server sends the staleness of this node's previous applied update
            assert d.config[keys.APPLIED_UPDATES] == k and d.config.get(
                keys.PREV_STALENESS
            ) == (taus[k - 1] if k else None)
            # the learner's rule, by hand: the sample against the mean of the W before
            # it
            if k:
                before = samples[-window:]
                scale = (
                    min(1.0, (1 + sum(before) / len(before)) / (1 + taus[k - 1]))
                    if before
                    else 1.0
                )
                samples.append(float(taus[k - 1]))
            # the client trained with the scaled rate
            assert lr == pytest.approx(base_lr * scale)
            # and reported it
            assert d.reply_metrics[keys.LR_SCALE] == pytest.approx(scale)
            if k < len(applied[node]):
                # the server applied that rate
                assert applied[node][k][1] == pytest.approx(scale)
            scales.append(scale)
        state = grid.contexts[node].state.config_records[keys.STALENESS_WINDOW]
        assert (
            state["samples"] == pytest.approx(samples[-window:])
            and state["count"] == len(mine) - 1
        )
    # the late node's window damped it, the others not
    assert min(scales) < 0.5 and max(scales) == 1.0
    # the end-to-end tests' hand computation from metrics.jsonl agrees with this one
    from async_checks import learner_scales
    from async_checks import update_log

    log = update_log(rows)
    assert len(log) == updates and [s for *_, s in log] == pytest.approx(
        learner_scales(log, window)
    )
