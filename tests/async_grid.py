"""A scripted in-memory Grid for ``AsyncFedAvg`` unit tests, and the helpers that drive
it.

``FakeGrid`` replays each node's behaviour tick by tick; ``run_async`` runs a strategy
on it, ``learner_reports`` makes its nodes report a learner-side rate and echo their
message's staleness values, and ``run_recorded`` keeps one row per evaluation with the
round report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterable

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Error
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict

from bouquet import keys
from bouquet.strategies.async_fedavg import AsyncFedAvg

# A node's behaviour: ("ok", latency_in_polls, delta) | ("error", latency, None) |
# ("hang", 0, None)
Behaviour = tuple[str, int, float | None]


class FakeGrid:
    """In-memory Grid: each pull is one tick; replies become ready after the node's
    latency.

    Replies are built as a ClientApp would: the received arrays plus a per-node
    constant, the echoed model version and ``num-examples``. Replies ready in the same
    tick are returned in the order their messages were pushed (their ``created_at``
    follows that order). ``extra(node, config, task)`` adds metrics to a reply
    (``config`` the train config its message carried, ``task`` that node's message
    count), e.g. a learner's ``lr-scale`` and echoes.
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
        # (node, train config) per train message
        self.configs: list[tuple[int, dict]] = []
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
                task = (
                    sum(1 for n, _ in self.pushed[: self._index(mid)] if n == node) + 1
                )
                metrics.update(self.extra(node, dict(msg.content["config"]), task))
            content = RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                    "metrics": MetricRecord(
                        {k: v for k, v in metrics.items() if v is not None}
                    ),
                }
            )
            out.append(Message(content, reply_to=msg))
        return out

    def _index(self, mid: str) -> int:
        return int(mid[1:]) - 1  # message ids are m1, m2, ... in push order

    def abandon(self, message_ids: Iterable[str]) -> None:
        self.abandoned.extend(message_ids)


def initial_arrays() -> ArrayRecord:
    """A two-tensor model of zeros."""
    return ArrayRecord(
        {
            "w": Array(np.zeros(3, dtype=np.float32)),
            "b": Array(np.zeros(1, dtype=np.float32)),
        }
    )


def run_async(
    strategy: AsyncFedAvg,
    grid: FakeGrid,
    evals: list[int] | None = None,
    num_rounds: int = 3,
):
    def evaluate_fn(step: int, arrays: ArrayRecord) -> MetricRecord:
        if evals is not None:
            evals.append(step)
        return MetricRecord({"accuracy": float(step)})

    return strategy.start(
        grid,
        initial_arrays(),
        num_rounds=num_rounds,
        timeout=60,
        evaluate_fn=evaluate_fn,
    )


def learner_reports(
    scales: Callable[[int], object] | list,
    *,
    echo: dict[int, Callable[[dict], dict]] | None = None,
):
    """``FakeGrid.extra`` of learners that report ``scales`` (per task, 1-based) and
    echo what their message carried (node ``n`` in ``echo``: what ``echo[n](config)``
    returns instead)."""

    def extra(node: int, config: dict, task: int) -> dict:
        scale = scales(task) if callable(scales) else scales[task - 1]
        echoed = {k: config.get(k) for k in (keys.PREV_STALENESS, keys.APPLIED_UPDATES)}
        if echo and node in echo:
            echoed = echo[node](config)
        return {keys.LR_SCALE: scale, **echoed}

    return extra


class Recorder:
    """What ``bind_recorder`` needs; one row per evaluation with the strategy's round
    report."""

    def __init__(self, strategy: AsyncFedAvg) -> None:
        self.strategy, self.rows, self.last_arrays = strategy, [], None

    def evaluate_arrays(self, arrays: dict) -> dict:
        return {"accuracy": 0.0}

    def record(self, step: int, metrics: dict, step_key: str) -> None:
        self.rows.append({step_key: step, **metrics, **self.strategy.round_report()})


def run_recorded(strategy: AsyncFedAvg, grid: FakeGrid) -> list[dict]:
    recorder = Recorder(strategy)
    strategy.bind_recorder(recorder)
    strategy.start(grid, initial_arrays(), timeout=60)
    return recorder.rows
