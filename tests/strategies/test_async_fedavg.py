"""AsyncFedAvg: version/staleness bookkeeping on a scripted fake Grid, and a real short run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from bouquet import keys
from bouquet.strategies.async_fedavg import AsyncFedAvg, buffered_step, mix
from bouquet.strategies.async_rules import plateaued

ROOT = Path(__file__).resolve().parents[2]

# A node's behaviour: ("ok", latency_in_polls, delta) | ("error", latency, None) | ("hang", 0, None)
Behaviour = tuple[str, int, float | None]


class FakeGrid:
    """In-memory Grid: each pull is one tick; replies become ready after the node's latency.

    Replies are built as a ClientApp would: the received arrays plus a per-node constant, the
    echoed model version and ``num-examples``. Replies ready in the same tick are returned in
    the order their messages were pushed (their ``created_at`` follows that order).
    ``extra(node, config, task)`` adds metrics to a reply (``config`` the train config its
    message carried, ``task`` that node's message count), e.g. a learner's ``lr-scale`` and echoes.
    """

    def __init__(
        self,
        behaviours: dict[int, Behaviour | Callable[[int], Behaviour]],
        tick_s: float = 0.0,
        extra: Callable[[int, dict, int], dict] | None = None,
    ) -> None:
        self.behaviours = behaviours
        self.tick_s = tick_s
        self.extra = extra
        self.configs: list[tuple[int, dict]] = []  # (node, train config) per train message
        self.tick = 0
        self.counter = 0
        self.pending: dict[str, tuple[int, Message]] = {}
        self.abandoned: list[str] = []
        self.pushed: list[tuple[int, int]] = []  # (node, version) per train message

    def get_node_ids(self) -> Iterable[int]:
        return list(self.behaviours)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            self.counter += 1
            mid = f"m{self.counter}"
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            version = int(msg.content["config"][keys.MODEL_VERSION])
            self.pushed.append((node, version))
            self.configs.append((node, dict(msg.content["config"])))
            self.pending[mid] = (self.tick, msg)
            ids.append(mid)
        return ids

    def _behaviour(self, node: int) -> Behaviour:
        b = self.behaviours[node]
        return b(sum(1 for n, _ in self.pushed if n == node)) if callable(b) else b

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.tick += 1
        time.sleep(self.tick_s)
        out = []
        for mid in list(message_ids):
            if mid not in self.pending:
                continue
            sent, msg = self.pending[mid]
            kind, latency, delta = self._behaviour(msg.metadata.dst_node_id)
            if kind == "hang" or self.tick - sent < latency:
                continue
            del self.pending[mid]
            if kind == "error":
                out.append(Message(Error(code=1, reason="boom"), reply_to=msg))
                continue
            arrays = {k: v.numpy() + delta for k, v in msg.content["arrays"].items()}
            version = int(msg.content["config"][keys.MODEL_VERSION])
            metrics = {keys.NUM_EXAMPLES: 10, keys.MODEL_VERSION: version}
            if self.extra is not None:
                node = msg.metadata.dst_node_id
                task = sum(1 for n, _ in self.pushed[: self._index(mid)] if n == node) + 1
                metrics.update(self.extra(node, dict(msg.content["config"]), task))
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                    "metrics": MetricRecord({k: v for k, v in metrics.items() if v is not None}),
                }
            )
            out.append(Message(content, reply_to=msg))
        return out

    def _index(self, mid: str) -> int:
        return int(mid[1:]) - 1  # message ids are m1, m2, ... in push order

    def abandon(self, message_ids: Iterable[str]) -> None:
        self.abandoned.extend(message_ids)


def _initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32)), "b": Array(np.zeros(1, dtype=np.float32))})


def _run(strategy: AsyncFedAvg, grid: FakeGrid, evals: list[int] | None = None, num_rounds: int = 3):
    def evaluate_fn(step: int, arrays: ArrayRecord) -> MetricRecord:
        if evals is not None:
            evals.append(step)
        return MetricRecord({"accuracy": float(step)})

    return strategy.start(grid, _initial(), num_rounds=num_rounds, timeout=60, evaluate_fn=evaluate_fn)


def test_versions_and_staleness_in_arrival_order() -> None:
    # Node 1 answers every tick, node 2 every 3 ticks: node 2's updates are stale.
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 3, 10.0)})
    strategy = AsyncFedAvg(policy="constant", alpha=0.5, max_updates=5, eval_every=2, poll_interval_s=0.0)
    result = _run(strategy, grid)
    st = strategy.state
    # Tick 1: node 1 (sent v0) -> v1. Tick 2: node 1 (sent v1) -> v2. Tick 3: node 2 (sent v0,
    # now v2: tau 2) -> v3, then node 1 (sent v2, tau 1 since v3) -> v4. Tick 4: node 1 (v4) -> v5.
    assert st.staleness_log == [0, 0, 2, 1, 0]
    assert st.applied_versions == [1, 2, 3, 4, 5]
    # The exact model: x <- x + 0.5 (x_start + delta - x), by hand.
    x, snaps = 0.0, {0: 0.0}
    for start, delta in [(0, 1.0), (1, 1.0), (0, 10.0), (2, 1.0), (4, 1.0)]:
        x = x + 0.5 * (snaps[start] + delta - x)
        snaps[len(snaps)] = x
    np.testing.assert_allclose(result.arrays["w"].numpy(), np.full(3, x, dtype=np.float32), rtol=1e-6)
    assert st.stop_reason == "update budget 5 reached"
    # Every pushed message carries the version of the model it holds, never decreasing.
    versions = [v for _, v in grid.pushed]
    assert versions == sorted(versions)


def test_stale_updates_are_down_weighted_and_cut_off() -> None:
    # Node 2 takes 3 ticks for its first task (tau 2: accepted), 5 for the next (tau 4: cut off).
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: lambda n: ("ok", 3 if n == 1 else 5, 1.0)})
    strategy = AsyncFedAvg(policy="polynomial", exponent=1.0, alpha=1.0, max_staleness=2, max_updates=12, poll_interval_s=0.0)
    _run(strategy, grid)
    st = strategy.state
    assert max(st.staleness_log) <= 2  # staler ones were rejected, not applied
    assert any("max_staleness" in r for r in st.dropped)
    # polynomial with a = 1: scale = 1 / (1 + tau) for every accepted update
    assert st.scale_log == pytest.approx([1.0 / (1 + t) for t in st.staleness_log])
    assert 2 in st.staleness_log and min(st.scale_log) == pytest.approx(1.0 / 3)


def test_failing_and_silent_nodes_do_not_stop_the_others() -> None:
    # A tick takes 10 ms: 40 updates of node 1 take >= 0.4 s, node 3 times out after 0.05 s twice.
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("error", 1, None), 3: ("hang", 0, None)}, tick_s=0.01)
    strategy = AsyncFedAvg(
        policy="constant", alpha=0.5, max_updates=40, reply_timeout_s=0.05, max_node_failures=2, poll_interval_s=0.01
    )
    result = _run(strategy, grid)
    st = strategy.state
    assert st.updates == 40 and st.stop_reason == "update budget 40 reached"
    assert st.excluded == {2, 3}  # failed twice in a row each: no longer used
    assert sum(1 for n, _ in grid.pushed if n == 2) == 2  # re-dispatched once after its first error
    assert sum(1 for n, _ in grid.pushed if n == 3) == 2  # abandoned after the timeout, retried once
    assert len(grid.abandoned) == 2
    assert np.all(np.isfinite(result.arrays["w"].numpy()))


def test_bad_reply_never_reaches_the_model() -> None:
    def corrupt(n: int) -> Behaviour:
        return ("ok", 1, float("nan"))

    grid = FakeGrid({1: ("ok", 1, 1.0), 2: corrupt})
    strategy = AsyncFedAvg(policy="constant", alpha=1.0, max_updates=4, poll_interval_s=0.0)
    result = _run(strategy, grid)
    assert np.all(np.isfinite(result.arrays["w"].numpy()))
    assert strategy.state.excluded == {2}
    np.testing.assert_allclose(result.arrays["w"].numpy(), 4.0)  # only node 1's +1 updates, alpha=1


def test_fedbuff_applies_the_mean_of_k_updates() -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 1, 3.0)})
    strategy = AsyncFedAvg(policy="fedbuff", buffer_size=2, exponent=0.0, server_lr=1.0, max_updates=4, poll_interval_s=0.0)
    result = _run(strategy, grid)
    # Both answer every tick: tick 1 -> buffer [1, 3] -> +2 (v1); tick 2 -> both sent at v1 -> +2.
    assert strategy.state.applied_versions == [1, 2]
    assert strategy.state.staleness_log == [0, 0, 0, 0]
    np.testing.assert_allclose(result.arrays["w"].numpy(), 4.0)


def test_eval_every_and_plateau_stop() -> None:
    evals: list[int] = []
    grid = FakeGrid({1: ("ok", 1, 1.0)})
    strategy = AsyncFedAvg(policy="constant", max_updates=10, eval_every=3, poll_interval_s=0.0)
    _run(strategy, grid, evals)
    assert evals == [0, 3, 6, 9, 10]
    assert plateaued([0.5, 0.6, 0.6, 0.6], window=2, min_delta=0.01)
    assert not plateaued([0.5, 0.6, 0.61, 0.7], window=2, min_delta=0.01)
    assert plateaued([1.0, 0.9, 0.95, 0.91], window=2, min_delta=0.05, mode="min")
    assert not plateaued([0.5, 0.6], window=2, min_delta=0.01)

    strategy = AsyncFedAvg(policy="constant", max_updates=1000, eval_every=1, plateau_window=3, poll_interval_s=0.0)
    flat_evals: list[int] = []

    def flat_fn(step: int, arrays: ArrayRecord) -> MetricRecord:
        flat_evals.append(step)
        return MetricRecord({"accuracy": 0.5})

    strategy.start(FakeGrid({1: ("ok", 1, 1.0)}), _initial(), timeout=60, evaluate_fn=flat_fn)
    assert "plateaued" in strategy.state.stop_reason
    # the 4th flat evaluation (after update 3) shows no gain over the window of 3: stop at once
    assert strategy.state.updates == 3
    assert flat_evals == [0, 1, 2, 3]


def test_pure_update_rules() -> None:
    x = {"a": np.array([0.0, 2.0])}
    np.testing.assert_allclose(mix(x, {"a": np.array([4.0, 4.0])}, 0.25)["a"], [1.0, 2.5])
    out = buffered_step(x, [{"a": np.array([2.0, 0.0])}, {"a": np.array([0.0, 4.0])}], [1.0, 0.5], 2.0)
    np.testing.assert_allclose(out["a"], [2.0, 4.0])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        AsyncFedAvg(alpha=0.0)
    with pytest.raises(ValueError, match="policy"):
        AsyncFedAvg(policy="nope")
    with pytest.raises(ValueError, match="eval_every"):
        AsyncFedAvg(eval_every=0)


def test_reply_update_checks_echo_and_payload(reply_factory) -> None:
    from bouquet.strategies.async_messages import reply_update

    base = {"w": np.ones(3, dtype=np.float32)}
    ok = reply_factory({"w": np.full(3, 3.0, dtype=np.float32)}, 5, {keys.MODEL_VERSION: 7})
    delta, reason = reply_update(ok, base, sent_version=7)
    assert reason is None
    np.testing.assert_allclose(delta["w"], 2.0)
    _, reason = reply_update(ok, base, sent_version=6)  # a client claiming a fresher model
    assert "echoed model version 7" in reason
    wrong_shape = reply_factory({"w": np.ones(4, dtype=np.float32)}, 5)
    assert "shape" in reply_update(wrong_shape, base, sent_version=0)[1]
    no_weight = reply_factory({"w": np.ones(3, dtype=np.float32)}, 0)
    assert "num-examples" in reply_update(no_weight, base, sent_version=0)[1]
    odd = ArrayRecord({"w": Array(dtype="float32", shape=(3,), stype="bouquet.nope/1", data=b"xx")})
    garbage = reply_factory(None, 5, array_record=odd)
    delta, reason = reply_update(garbage, base, sent_version=0)
    assert delta == {} and reason.startswith("cannot decode")


# ------------------------------------------------------------ learner-side sliding window
def _learner(scales: Callable[[int], object] | list, *, echo: dict[int, Callable[[dict], dict]] | None = None):
    """``FakeGrid.extra`` of learners that report ``scales`` (per task, 1-based) and echo what
    their message carried (node ``n`` in ``echo``: what ``echo[n](config)`` returns instead)."""

    def extra(node: int, config: dict, task: int) -> dict:
        scale = scales(task) if callable(scales) else scales[task - 1]
        echoed = {k: config.get(k) for k in (keys.PREV_STALENESS, keys.APPLIED_UPDATES)}
        if echo and node in echo:
            echoed = echo[node](config)
        return {keys.LR_SCALE: scale, **echoed}

    return extra


class _Recorder:
    """What ``bind_recorder`` needs; one row per evaluation with the strategy's round report."""

    def __init__(self, strategy: AsyncFedAvg) -> None:
        self.strategy, self.rows, self.last_arrays = strategy, [], None

    def evaluate_arrays(self, arrays: dict) -> dict:
        return {"accuracy": 0.0}

    def record(self, step: int, metrics: dict, step_key: str) -> None:
        self.rows.append({step_key: step, **metrics, **self.strategy.round_report()})


def _run_recorded(strategy: AsyncFedAvg, grid: FakeGrid) -> list[dict]:
    recorder = _Recorder(strategy)
    strategy.bind_recorder(recorder)
    strategy.start(grid, _initial(), timeout=60)
    return recorder.rows


def test_train_messages_carry_each_nodes_previous_staleness() -> None:
    # test_versions_and_staleness_in_arrival_order's schedule: node 1 every tick (tau 0, 0, 1, 0),
    # node 2 every 3 ticks (its first update, sent at v0, applied at v2: tau 2)
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 3, 10.0)}, extra=_learner(lambda task: 1.0))
    strategy = AsyncFedAvg(policy="sliding_window", alpha=0.5, max_updates=5, poll_interval_s=0.0)
    _run(strategy, grid)
    assert strategy.state.staleness_log == [0, 0, 2, 1, 0]
    sent = {node: [(c[keys.APPLIED_UPDATES], c.get(keys.PREV_STALENESS)) for n, c in grid.configs if n == node] for node in (1, 2)}
    assert sent[1] == [(0, None), (1, 0), (2, 0), (3, 1)]  # its 4th update ends the run
    assert sent[2] == [(0, None), (1, 2)]
    assert strategy.state.fallbacks == []


def test_server_applies_the_reported_rate() -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=_learner([0.5, 0.25, 1.0]))
    strategy = AsyncFedAvg(policy="sliding_window", alpha=0.5, max_updates=3, poll_interval_s=0.0)
    result = _run(strategy, grid)
    # x <- x + alpha s (x_sent + 1 - x), by hand: the node always trained on the newest model
    x = 0.0
    for s in (0.5, 0.25, 1.0):
        x = x + 0.5 * s * 1.0
    np.testing.assert_allclose(result.arrays["w"].numpy(), x, rtol=1e-6)
    assert strategy.state.scale_log == [0.5, 0.25, 1.0] and strategy.state.fallbacks == []


@pytest.mark.parametrize(("learner_rate", "expected"), [("both", 0.25), ("server", 0.25), ("local", 0.5)])
def test_learner_rate_decides_where_the_scale_acts(learner_rate: str, expected: float) -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=_learner([0.5]))
    strategy = AsyncFedAvg(policy="sliding_window", alpha=0.5, learner_rate=learner_rate, max_updates=1, poll_interval_s=0.0)
    result = _run(strategy, grid)
    np.testing.assert_allclose(result.arrays["w"].numpy(), expected)  # 0 + rate (0 + 1 - 0)
    assert strategy.state.scale_log == [0.5]  # the scale in effect, reported as lr_scale


def test_bad_reported_scale_falls_back_to_the_server_rule_and_is_counted() -> None:
    # one node, staleness always 0: the server's window rule gives ((1 + 0) / (1 + 0))^1 = 1
    reported = [float("nan"), -0.5, 1.5, [0.5], None, 0.5]
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=_learner(reported))
    strategy = AsyncFedAvg(policy="sliding_window", alpha=0.5, max_scale=1.0, max_updates=6, eval_every=3, poll_interval_s=0.0)
    rows = _run_recorded(strategy, grid)
    st = strategy.state
    assert st.scale_log == [1.0, 1.0, 1.0, 1.0, 1.0, 0.5]
    assert [r["lr_scale_fallbacks"] for r in rows] == [0, 3, 2]  # evaluations after updates 0, 3, 6
    reasons = " | ".join(st.fallbacks)
    for why in ("nan", "-0.5", "1.5 is outside [0, 1.0]", "[0.5] is not a number", "no lr-scale"):
        assert why in reasons
    assert st.dropped == []  # a bad scale is not a bad update: it is applied with the server's rule
    x = 0.0
    for s in st.scale_log:
        x = x + 0.5 * s * (x + 1.0 - x)
    np.testing.assert_allclose(st.arrays["w"], x, rtol=1e-6)


@pytest.mark.parametrize(
    ("echo", "reason"),
    [
        (lambda c: {keys.PREV_STALENESS: (c.get(keys.PREV_STALENESS) or 0) + 1, keys.APPLIED_UPDATES: c[keys.APPLIED_UPDATES]},
         "echoed prev staleness"),
        (lambda c: {keys.PREV_STALENESS: c.get(keys.PREV_STALENESS), keys.APPLIED_UPDATES: c[keys.APPLIED_UPDATES] + 1},
         "echoed applied updates"),
    ],
)
def test_staleness_echo_from_another_message_is_rejected(echo: Callable[[dict], dict], reason: str) -> None:
    # node 2's learner echoes values its message did not carry (a scale computed for another message)
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 1, 100.0)}, extra=_learner(lambda task: 1.0, echo={2: echo}))
    strategy = AsyncFedAvg(policy="sliding_window", alpha=1.0, max_updates=4, max_node_failures=1, poll_interval_s=0.0)
    result = _run(strategy, grid)
    assert strategy.state.excluded == {2}
    assert any(reason in r for r in strategy.state.dropped), strategy.state.dropped
    np.testing.assert_allclose(result.arrays["w"].numpy(), 4.0)  # node 1's four +1 updates, alpha 1; node 2's +100 never



def test_check_echo_by_hand(reply_factory) -> None:
    from bouquet.strategies.async_messages import check_echo

    sent = {keys.MODEL_VERSION: 3, keys.PREV_STALENESS: 2, keys.APPLIED_UPDATES: 5}
    echo = {keys.MODEL_VERSION: 3, keys.PREV_STALENESS: 2, keys.APPLIED_UPDATES: 5}
    assert check_echo(reply_factory({"w": np.ones(1)}, 1, echo), sent) is None
    assert check_echo(reply_factory({"w": np.ones(1)}, 1), sent) is None  # nothing echoed: nothing to check
    wrong = reply_factory({"w": np.ones(1)}, 1, {**echo, keys.PREV_STALENESS: 1})
    assert check_echo(wrong, sent) == "echoed prev staleness 1 != sent 2"
    fraction = reply_factory({"w": np.ones(1)}, 1, {**echo, keys.APPLIED_UPDATES: 5.5})
    assert check_echo(fraction, sent) == "echoed applied updates 5.5 != sent 5"
    unsent = reply_factory({"w": np.ones(1)}, 1, {keys.PREV_STALENESS: 0})
    assert check_echo(unsent, {**sent, keys.PREV_STALENESS: None}) == "echoed prev staleness 0 but the message carried none"


def test_server_side_window_sends_no_sample_and_ignores_reported_scales() -> None:
    # node 2 is stale (tau 2) once: the shared server-side window damps it, whatever the node says
    grid = FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 3, 10.0)}, extra=lambda node, config, task: {keys.LR_SCALE: 0.125})
    strategy = AsyncFedAvg(policy="sliding_window", window_side="server", alpha=0.5, max_updates=5, poll_interval_s=0.0)
    rows = _run_recorded(strategy, grid)
    assert all(keys.PREV_STALENESS not in c and keys.APPLIED_UPDATES not in c for _, c in grid.configs)
    # shared window, mean context, a = 1: taus 0, 0, 2, 1, 0 -> 1, 1, (1+0)/(1+2), min(1, (1+2/3)/2), 1
    assert strategy.state.scale_log == pytest.approx([1.0, 1.0, 1 / 3, (1 + 2 / 3) / 2, 1.0])
    assert "lr_scale_fallbacks" not in rows[-1] and strategy.state.fallbacks == []


def test_staleness_echo_to_a_server_side_window_is_rejected() -> None:
    grid = FakeGrid({1: ("ok", 1, 1.0)}, extra=lambda node, config, task: {keys.PREV_STALENESS: 0})
    strategy = AsyncFedAvg(policy="sliding_window", window_side="server", max_updates=2, max_node_failures=1, poll_interval_s=0.0)
    _run(strategy, grid)
    assert strategy.state.stop_reason == "no usable node left"
    assert strategy.state.dropped == ["node 1: reply rejected: echoed prev staleness 0 but the message carried none"]


def test_learner_side_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="window_side='nope' is unknown; allowed: learner, server"):
        AsyncFedAvg(policy="sliding_window", window_side="nope")
    with pytest.raises(ValueError, match="learner_rate='nope' is unknown; allowed: both, local, server"):
        AsyncFedAvg(policy="sliding_window", learner_rate="nope")
    assert AsyncFedAvg(policy="sliding_window").learner_side
    assert not AsyncFedAvg(policy="polynomial", window_side="learner").learner_side  # no window to move


# ------------------------------------------- the learner-side window through the real loop
def test_learner_side_window_through_the_real_loop_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``strategy=async policy=sliding_window`` (learner side, the default) run by ``run_server``
    with the ClientApp of ``make_client_app`` (TorchClient + the staleness mod, the real wiring)
    on an in-process grid whose nodes answer after seeded delays: every node's scale follows
    its own window, the client trained with that rate, the server applied it."""
    from collections import Counter, defaultdict

    from hydra import compose, initialize_config_module
    from inprocess_grid import InProcessGrid
    from omegaconf import OmegaConf

    from bouquet.clients import torch_client
    from bouquet.simulations import results, server
    from bouquet.strategies import async_state

    class LaggedGrid(InProcessGrid):
        """Replies are computed at push time but released after ``lag(node index, task)`` pulls."""

        def __init__(self, app, num_nodes: int, lag: Callable[[int, int], int]) -> None:
            super().__init__(app, num_nodes)
            self.lag, self.tick, self.due, self.sent = lag, 0, {}, Counter()

        def push_messages(self, messages):
            messages = list(messages)
            ids = list(super().push_messages(messages))
            for msg, mid in zip(messages, ids, strict=True):
                node = msg.metadata.dst_node_id
                self.sent[node] += 1
                self.due[mid] = self.tick + self.lag(self.node_ids.index(node), self.sent[node])
            return ids

        def pull_messages(self, message_ids):
            self.tick += 1
            return super().pull_messages([m for m in message_ids if self.due.get(m, 0) <= self.tick])

    window, updates = 4, 24
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[
            "dataset=digits", "model=mlp", "client=plain", "client.local_epochs=1", "strategy=async",
            "simulation.num_clients=3", "seed=0", f"strategy.max_updates={updates}", "strategy.eval_every=8",
            f"strategy.window={window}", "strategy.alpha=0.5",
        ]), resolve=True)  # fmt: skip
    assert cfg["strategy"]["policy"] == "sliding_window" and cfg["strategy"]["window_side"] == "learner"
    base_lr = float(cfg["client"]["lr"])

    trained_lrs: list[float] = []
    original_train = torch_client.train

    def spy_train(*args, **kwargs):
        trained_lrs.append(kwargs["lr"])
        return original_train(*args, **kwargs)

    applied: dict[int, list[tuple[int, float]]] = defaultdict(list)  # node -> (tau, scale) per accepted update
    original_accept = async_state.AsyncState.accept

    def spy_accept(self, staleness, scale, node_id=None):
        applied[node_id].append((staleness, scale))
        return original_accept(self, staleness, scale, node_id)

    monkeypatch.setattr(torch_client, "train", spy_train)
    monkeypatch.setattr(async_state.AsyncState, "accept", spy_accept)
    monkeypatch.setattr(results, "plot_curves", lambda rows, path: None)
    # node 0 answers every pull, node 1 every 2nd, node 2 usually at once but twice very late
    grid = LaggedGrid(server.make_client_app(cfg), 3, lambda i, task: [1, 2, 5 if task in (3, 7) else 1][i])
    server.run_server(grid, cfg, tmp_path)

    assert grid.errors == []
    rows = results.read_rows(tmp_path)
    assert rows[-1]["stop_reason"] == f"update budget {updates} reached"
    assert sum(r["lr_scale_fallbacks"] for r in rows) == 0 and sum(r["clients_failed"] for r in rows) == 0
    train = grid.deliveries("train")
    assert len(trained_lrs) == len(train)
    scales = []
    for node in grid.node_ids:
        mine = [(d, lr) for d, lr in zip(train, trained_lrs, strict=True) if d.node_id == node]
        taus = [tau for tau, _ in applied[node]]
        samples: list[float] = []
        scale = 1.0
        for k, (d, lr) in enumerate(mine):
            # the server sends the staleness of this node's previous applied update
            assert d.config[keys.APPLIED_UPDATES] == k and d.config.get(keys.PREV_STALENESS) == (taus[k - 1] if k else None)
            if k:  # the learner's rule, by hand: the sample against the mean of the W before it
                before = samples[-window:]
                scale = min(1.0, (1 + sum(before) / len(before)) / (1 + taus[k - 1])) if before else 1.0
                samples.append(float(taus[k - 1]))
            assert lr == pytest.approx(base_lr * scale)  # the client trained with the scaled rate
            assert d.reply_metrics[keys.LR_SCALE] == pytest.approx(scale)  # and reported it
            if k < len(applied[node]):
                assert applied[node][k][1] == pytest.approx(scale)  # the server applied that rate
            scales.append(scale)
        state = grid.contexts[node].state.config_records[keys.STALENESS_WINDOW]
        assert state["samples"] == pytest.approx(samples[-window:]) and state["count"] == len(mine) - 1
    assert min(scales) < 0.5 and max(scales) == 1.0  # the late node's window damped it, the others not
    # the end-to-end tests' hand computation from metrics.jsonl agrees with this one
    from async_checks import learner_scales, update_log

    log = update_log(rows)
    assert len(log) == updates and [s for *_, s in log] == pytest.approx(learner_scales(log, window))


# ------------------------------------------------------------------ stopping on convergence
def test_default_plateau_window_by_hand() -> None:
    from bouquet.strategies.async_rules import plateau_evaluations

    assert plateau_evaluations(None, num_nodes=1, eval_every=10) == 5  # at least 5 evaluations
    assert plateau_evaluations(None, num_nodes=20, eval_every=10) == 10  # 5 updates per node = 100 updates
    assert plateau_evaluations(None, num_nodes=3, eval_every=4) == 5  # ceil(15 / 4) = 4 < 5
    assert plateau_evaluations(None, num_nodes=30, eval_every=4) == 38  # ceil(150 / 4)
    assert plateau_evaluations(3, num_nodes=20, eval_every=10) == 3 and plateau_evaluations(0, 20, 10) == 0


def _flat(step: int, arrays: ArrayRecord) -> MetricRecord:
    return MetricRecord({"accuracy": 0.5})


def test_a_flat_metric_stops_the_run_by_default_and_the_budget_caps_it_otherwise() -> None:
    # 2 nodes, evaluated every update: default window max(5, ceil(5 * 2 / 1)) = 10 evaluations
    strategy = AsyncFedAvg(policy="sliding_window", max_updates=1000, eval_every=1, poll_interval_s=0.0)
    strategy.start(FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 1, 1.0)}, extra=_learner(lambda t: 1.0)), _initial(), timeout=60, evaluate_fn=_flat)
    assert strategy.state.stop_reason == "accuracy plateaued over 10 evaluations"
    assert strategy.state.updates == 10  # the 11th flat evaluation (after update 10) shows no gain
    # a metric that keeps improving by more than plateau_min_delta runs to the update budget
    strategy = AsyncFedAvg(policy="sliding_window", max_updates=40, eval_every=1, plateau_min_delta=0.5, poll_interval_s=0.0)
    strategy.start(FakeGrid({1: ("ok", 1, 1.0)}, extra=_learner(lambda t: 1.0)), _initial(), timeout=60,
                   evaluate_fn=lambda step, arrays: MetricRecord({"accuracy": float(step)}))  # fmt: skip
    assert strategy.state.stop_reason == "update budget 40 reached"
    # plateau_window=0 switches the stop off
    strategy = AsyncFedAvg(policy="constant", max_updates=30, eval_every=1, plateau_window=0, poll_interval_s=0.0)
    strategy.start(FakeGrid({1: ("ok", 1, 1.0)}), _initial(), timeout=60, evaluate_fn=_flat)
    assert strategy.state.stop_reason == "update budget 30 reached"
    with pytest.raises(ValueError, match="plateau_min_delta=nan must be a finite number >= 0"):
        AsyncFedAvg(plateau_min_delta=float("nan"))


# ------------------------------------------------------------------ checkpoints and resume
def _checkpoints(strategy: AsyncFedAvg, every: int) -> list[tuple[int, dict, dict]]:
    """Bind a checkpoint callable that keeps (updates, model, state_dict) of every call."""
    import copy

    saved: list[tuple[int, dict, dict]] = []

    def save(updates: int, arrays: dict) -> None:
        saved.append((updates, {k: v.copy() for k, v in arrays.items()}, copy.deepcopy(strategy.state_dict())))

    strategy.bind_checkpoint(save, every)
    return saved


def _continue(strategy: AsyncFedAvg, grid: FakeGrid, arrays: dict, state: dict, evals: list[int] | None = None):
    strategy.load_state_dict(state)

    def evaluate_fn(step: int, record: ArrayRecord) -> MetricRecord:
        if evals is not None:
            evals.append(step)
        return MetricRecord({"accuracy": float(step)})

    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return strategy.start(grid, record, num_rounds=3, timeout=60, evaluate_fn=evaluate_fn)


def _loop_warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The warnings AsyncFedAvg logs from now on (its own and its per-node steps'), as strings."""
    from bouquet.strategies import async_fedavg, async_nodes

    warnings: list[str] = []
    for module in (async_fedavg, async_nodes):
        monkeypatch.setattr(module, "log", lambda level, msg, *a: warnings.append(msg % a) if level >= 30 else None)
    return warnings


@pytest.mark.parametrize("policy", [{"policy": "constant", "alpha": 0.5}, {"policy": "fedbuff", "buffer_size": 3, "exponent": 0.0}])
def test_checkpoint_every_n_applied_updates_and_resume_continues_the_run(policy: dict) -> None:
    # One node answering every tick has nothing in flight at a checkpoint (it is re-dispatched
    # after), so the resumed run must end exactly where the uninterrupted one did.
    def make() -> AsyncFedAvg:
        return AsyncFedAvg(**policy, max_updates=12, eval_every=2, plateau_window=0, poll_interval_s=0.0)

    full = make()
    saved = _checkpoints(full, 5)
    expected = _run(full, FakeGrid({1: ("ok", 1, 1.0)}))
    assert [u for u, _, _ in saved] == [5, 10, 12]  # every 5 applied updates, and when the run stops
    updates, arrays, state = saved[0]
    assert state["run"]["updates"] == 5 and state["run"]["checkpointed"] == 5
    if policy["policy"] == "fedbuff":
        assert state["run"]["version"] == 1 and len(state["run"]["buffer"]) == 2  # 3 applied as v1, 2 buffered

    resumed, evals = make(), []
    result = _continue(resumed, FakeGrid({1: ("ok", 1, 1.0)}), arrays, state, evals)
    assert evals == [6, 8, 10, 12]  # no evaluation at the start: the line of update 4 exists
    st = resumed.state
    assert st.updates == 12 and st.stop_reason == "update budget 12 reached"
    assert st.applied_versions == full.state.applied_versions and st.version == full.state.version
    assert st.staleness_log == full.state.staleness_log and st.tasks == full.state.tasks
    np.testing.assert_array_equal(result.arrays["w"].numpy(), expected.arrays["w"].numpy())


def test_resume_sends_the_learner_window_values_on_and_warns_about_unknown_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def make() -> AsyncFedAvg:
        return AsyncFedAvg(policy="sliding_window", max_updates=12, eval_every=4, plateau_window=0, poll_interval_s=0.0)

    behaviours: dict[int, Behaviour | Callable[[int], Behaviour]] = {1: ("ok", 1, 1.0), 2: ("ok", 2, 1.0)}
    full = make()
    saved = _checkpoints(full, 6)
    _run(full, FakeGrid(behaviours, extra=_learner(lambda t: 1.0)))
    _, arrays, state = saved[0]
    applied, staleness = state["run"]["node_applied"], state["run"]["node_staleness"]
    assert sum(applied.values()) == 6 and set(applied) == {1, 2}

    grid = FakeGrid(behaviours, extra=_learner(lambda t: 1.0))
    warnings = _loop_warnings(monkeypatch)
    _continue(make(), grid, arrays, state)
    assert warnings == []
    first = {node: next(c for n, c in grid.configs if n == node) for node in (1, 2)}
    for node in (1, 2):  # each node's count and last staleness go on from the checkpoint
        assert first[node][keys.APPLIED_UPDATES] == applied[node]
        assert first[node][keys.PREV_STALENESS] == staleness[node]

    # nodes with other ids (a simulation's new nodes): their counters start afresh, with a warning
    other = FakeGrid({7: ("ok", 1, 1.0), 8: ("ok", 1, 1.0)}, extra=_learner(lambda t: 1.0))
    resumed = make()
    _continue(resumed, other, arrays, state)
    assert [w for w in warnings if "2 of the 2 nodes in the checkpoint are not connected" in w]
    assert [c[keys.APPLIED_UPDATES] for n, c in other.configs[:2]] == [0, 0]
    assert resumed.state.updates == 12 and resumed.state.applied_versions[:6] == list(range(1, 7))


def test_resumed_budgets_count_what_happened_before_the_checkpoint() -> None:
    full = AsyncFedAvg(policy="constant", max_updates=6, eval_every=1, plateau_window=0, poll_interval_s=0.0)
    saved = _checkpoints(full, 3)
    _run(full, FakeGrid({1: ("ok", 1, 1.0)}))
    _, arrays, state = saved[0]
    # the wall time spent before the checkpoint counts: a 10 s budget already used up stops at once
    state["run"]["elapsed_s"] = 11.0
    grid = FakeGrid({1: ("ok", 1, 1.0)})
    late = AsyncFedAvg(policy="constant", max_updates=6, max_wall_s=10, eval_every=1, plateau_window=0, poll_interval_s=0.0)
    _continue(late, grid, arrays, state)
    assert late.state.stop_reason == "wall-time budget 10 s reached" and late.state.updates == 3 and grid.pushed == []
    # a larger update budget on resume extends the run
    more = AsyncFedAvg(policy="constant", max_updates=9, eval_every=1, plateau_window=0, poll_interval_s=0.0)
    _continue(more, FakeGrid({1: ("ok", 1, 1.0)}), arrays, state)
    assert more.state.updates == 9 and more.state.version == 9


def test_a_failed_checkpoint_write_is_logged_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def save(updates: int, arrays: dict) -> None:
        calls.append(updates)
        if updates == 2:
            raise OSError("disk full")

    warnings = _loop_warnings(monkeypatch)
    strategy = AsyncFedAvg(policy="constant", max_updates=6, plateau_window=0, poll_interval_s=0.0).bind_checkpoint(save, 2)
    _run(strategy, FakeGrid({1: ("ok", 1, 1.0)}))
    assert calls == [2, 4, 6] and strategy.state.updates == 6
    assert warnings == ["async: checkpoint after 2 updates skipped: disk full"]


def test_checkpoint_settings_and_foreign_states_are_refused() -> None:
    with pytest.raises(ValueError, match="every=-1 must be an integer >= 0"):
        AsyncFedAvg().bind_checkpoint(lambda u, a: None, -1)
    state = AsyncFedAvg(policy="polynomial").state_dict()
    with pytest.raises(ValueError, match="the checkpoint's policy is 'polynomial', this strategy's 'sliding_window'"):
        AsyncFedAvg(policy="sliding_window").load_state_dict(state)
    with pytest.raises(ValueError, match="not an AsyncFedAvg state"):
        AsyncFedAvg().load_state_dict({"round": 3})
    broken = AsyncFedAvg(policy="constant").state_dict()
    del broken["run"]["version"]
    strategy = AsyncFedAvg(policy="constant", max_updates=2, poll_interval_s=0.0)
    strategy.load_state_dict(broken)
    with pytest.raises(ValueError, match="async checkpoint state lacks version"):
        _run(strategy, FakeGrid({1: ("ok", 1, 1.0)}))


def test_update_log_lists_every_accepted_update_with_the_scale_of_its_window() -> None:
    from async_checks import server_scales, update_log

    def schedule() -> FakeGrid:  # node 3 is slow on every third task: staleness varies by node
        return FakeGrid({1: ("ok", 1, 1.0), 2: ("ok", 2, 1.0), 3: lambda n: ("ok", 4 if n % 3 == 0 else 1, 1.0)})

    for per_node in (True, False):
        strategy = AsyncFedAvg(policy="sliding_window", window_side="server", per_node=per_node, window=3, max_updates=30,
                               eval_every=4, plateau_window=0, poll_interval_s=0.0)  # fmt: skip
        log = update_log(_run_recorded(strategy, schedule()))
        assert [t for _, t, _ in log] == strategy.state.staleness_log and [s for *_, s in log] == strategy.state.scale_log
        assert {n for n, _, _ in log} == {1, 2, 3}
        scales = [s for *_, s in log]
        assert scales == pytest.approx(server_scales(log, 3, per_node))
        assert scales != pytest.approx(server_scales(log, 3, not per_node))  # per node or shared: it shows
        assert min(scales) < 0.6
