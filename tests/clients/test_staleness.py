"""The learner-side sliding window (``staleness_window_mod``): the window and scale a
node keeps in ``context.state`` over several train messages, driven with hand-built
Messages and a fake inner app that records the learning rate it was given."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_train_message
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.app import RecordDict

from bouquet import keys
from bouquet.clients import staleness as learner_side
from bouquet.clients import staleness_window_mod
from bouquet.clients.staleness import CONTEXTS
from bouquet.clients.staleness import window_context
from bouquet.strategies import staleness as server_side

BASE_LR = 0.1


def _context(node: int = 7) -> Context:
    return Context(
        run_id=1,
        node_id=node,
        node_config={keys.PARTITION_ID: 0},
        state=RecordDict(),
        run_config={},
    )


def _train(
    applied: int | None,
    prev: int | None = None,
    *,
    version: int = 0,
    lr: float | None = BASE_LR,
    task: int = 1,
) -> Message:
    config: dict = {keys.MODEL_VERSION: version}
    if applied is not None:
        config[keys.APPLIED_UPDATES] = applied
    if prev is not None:
        config[keys.PREV_STALENESS] = prev
    if lr is not None:
        config[keys.LR] = lr
    return make_train_message(
        {"w": np.zeros(2, dtype=np.float32)}, task, config, node_id=7
    )


class FakeApp:
    """The inner ClientApp: records the ``lr`` of every train config it gets, replies as
    a client."""

    def __init__(self) -> None:
        self.lrs: list[float | None] = []

    def __call__(self, msg: Message, context: Context) -> Message:
        self.lrs.append(msg.content[keys.CONFIG].get(keys.LR))
        content = RecordDict(
            {
                keys.ARRAYS: msg.content[keys.ARRAYS],
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 4}),
            }
        )
        return Message(content, reply_to=msg)


def _window(context: Context) -> dict:
    return dict(context.state.config_records[keys.STALENESS_WINDOW])


def test_window_and_scale_in_context_state_over_several_messages() -> None:
    mod, app, ctx = (
        staleness_window_mod(window=3, context="mean", exponent=1.0, max_scale=2.0),
        FakeApp(),
        _context(),
    )
    # (applied-updates, prev-staleness) the server sends; expected scale by hand:
    #   c = mean of the samples *before* the new one, s = min(2, ((1 + c) / (1 +
    # tau_prev))^1)
    steps = [
        ((0, None), 1.0, []),  # first task: no sample, empty window -> 1
        ((1, 2), 1.0, [2.0]),  # first sample: empty window before it -> 1
        ((2, 2), 1.0, [2.0, 2.0]),  # c = 2: (3 / 3) = 1
        # c = 2: 3 / 6 = 0.5 (staler than usual: damped)
        ((3, 5), 0.5, [2.0, 2.0, 5.0]),
        # same count (the last update was rejected): no sample, same scale
        ((3, 5), 0.5, [2.0, 2.0, 5.0]),
        # c = 3: 4 / 1 = 4, capped at 2; the window keeps W = 3
        ((4, 0), 2.0, [2.0, 5.0, 0.0]),
        ((5, 1), 5 / 3, [5.0, 0.0, 1.0]),  # c = (2 + 5 + 0) / 3 = 7/3: (10/3) / 2 = 5/3
    ]
    for task, ((applied, prev), scale, samples) in enumerate(steps, start=1):
        reply = mod(_train(applied, prev, version=10 + task, task=task), ctx, app)
        assert not reply.has_error()
        metrics = reply.content[keys.METRICS]
        assert metrics[keys.LR_SCALE] == pytest.approx(scale), task
        # the inner app trained with s * lr
        assert app.lrs[-1] == pytest.approx(BASE_LR * scale), task
        assert metrics[keys.NUM_EXAMPLES] == 4  # the app's own metrics stay
        # the reply echoes what its message carried
        assert (metrics[keys.MODEL_VERSION], metrics[keys.APPLIED_UPDATES]) == (
            10 + task,
            applied,
        )
        assert metrics.get(keys.PREV_STALENESS) == prev
        state = _window(ctx)
        assert (
            state["samples"] == pytest.approx(samples) and state["count"] == applied
        ), task
        # -1: no scale computed yet
        assert state["scale"] == pytest.approx(scale if applied else -1.0)


def test_median_context_and_defaults_from_the_module() -> None:
    mod, app, ctx = (
        staleness_window_mod(window=5, context="median", exponent=0.5),
        FakeApp(),
        _context(),
    )
    for applied, prev in [(1, 0), (2, 0), (3, 9), (4, 3)]:
        reply = mod(_train(applied, prev, task=applied), ctx, app)
    # before tau = 3 the window is [0, 0, 9]: median 0, s = min(1, (1 / 4)^0.5) = 0.5
    assert reply.content[keys.METRICS][keys.LR_SCALE] == pytest.approx(0.5)
    assert app.lrs[-1] == pytest.approx(0.05)
    assert (
        window_context([0, 0, 9], "median") == 0
        and window_context([0, 9], "median") == 4.5
    )


def test_the_learner_rule_is_the_server_rule() -> None:
    """One scale function serves both sides; the learner's context of a window is the
    server's."""
    assert CONTEXTS == server_side.CONTEXTS
    assert learner_side.window_scale is server_side.window_scale
    rng = np.random.default_rng(0)
    for _ in range(200):
        samples = [float(t) for t in rng.integers(0, 12, size=int(rng.integers(0, 6)))]
        kind = str(rng.choice(CONTEXTS))
        assert window_context(samples, kind) == server_side.staleness_context(
            samples, kind
        )


def test_base_lr_when_the_config_has_none_and_a_refusal_without_either() -> None:
    ctx, app = _context(), FakeApp()
    mod = staleness_window_mod(window=4, base_lr=0.2)
    mod(_train(1, 0, lr=None), ctx, app)
    mod(_train(2, 3, lr=None, task=2), ctx, app)  # c = 0: 1 / 4
    assert app.lrs == pytest.approx([0.2, 0.05])
    with pytest.raises(ValueError, match="needs the learning rate"):
        staleness_window_mod()(_train(1, 0, lr=None), _context(), FakeApp())


def test_report_only_leaves_the_learning_rate() -> None:
    ctx, app = _context(), FakeApp()
    mod = staleness_window_mod(window=4, scale_lr=False)
    mod(_train(1, 0), ctx, app)
    reply = mod(_train(2, 3, task=2), ctx, app)
    assert reply.content[keys.METRICS][keys.LR_SCALE] == pytest.approx(0.25)
    assert app.lrs == [BASE_LR, BASE_LR]


def test_other_messages_pass_untouched() -> None:
    mod, ctx, app = staleness_window_mod(), _context(), FakeApp()
    plain = mod(_train(None), ctx, app)  # a train message of a synchronous strategy
    assert app.lrs == [BASE_LR] and keys.LR_SCALE not in plain.content[keys.METRICS]
    assert keys.STALENESS_WINDOW not in ctx.state
    evaluate = _train(1, 4)
    evaluate.metadata.__dict__["_message_type"] = MessageType.EVALUATE
    mod(evaluate, ctx, app)
    assert app.lrs == [BASE_LR, BASE_LR] and keys.STALENESS_WINDOW not in ctx.state


def test_a_new_run_or_a_corrupt_state_starts_a_new_window() -> None:
    mod, ctx, app = staleness_window_mod(window=4), _context(), FakeApp()
    for applied, prev in [(1, 0), (2, 0), (3, 0)]:
        mod(_train(applied, prev), ctx, app)
    mod(_train(1, 6), ctx, app)  # the count went down: a new run of the server
    assert _window(ctx)["samples"] == [6.0] and _window(ctx)["count"] == 1
    ctx.state[keys.STALENESS_WINDOW] = ConfigRecord({"samples": [1.0], "count": "x"})
    reply = mod(_train(2, 2), ctx, app)
    assert reply.content[keys.METRICS][keys.LR_SCALE] == 1.0 and _window(ctx)[
        "samples"
    ] == [2.0]


@pytest.mark.parametrize(
    "config",
    [
        {keys.APPLIED_UPDATES: -1},
        {keys.APPLIED_UPDATES: 1.5},
        {keys.APPLIED_UPDATES: 2},
    ],
)
def test_bad_train_config_is_refused(config: dict) -> None:
    msg = _train(None)
    for k, v in config.items():
        msg.content[keys.CONFIG][k] = v
    with pytest.raises(ValueError, match=r"applied-updates|prev-staleness"):
        staleness_window_mod()(msg, _context(), FakeApp())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window=0 must be an integer >= 1"),
        ({"context": "mode"}, "context='mode' is unknown; allowed: mean, median"),
        ({"exponent": -1.0}, "exponent=-1.0 must be >= 0"),
        ({"max_scale": 0.0}, "max_scale=0.0 must be > 0"),
        ({"base_lr": math.nan}, "base_lr=nan must be > 0"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        staleness_window_mod(**kwargs)
