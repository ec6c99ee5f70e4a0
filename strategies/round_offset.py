"""``RoundOffset``: number a strategy's rounds from ``offset + 1`` (used to resume a
run).

Flower's ``Strategy.start()`` always counts rounds from 1. A resumed run that continues
after round ``k`` wraps its strategy in ``RoundOffset(strategy, k)``, so that the inner
strategy, the clients (through ``server-round`` in the train config) and round-dependent
schedules (e.g. the top-k attenuation ``rho ** round``) see the same round numbers as an
uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet.strategies.wrapper import StrategyWrapper


class RoundOffset(StrategyWrapper):
    """Forward every call to ``strategy`` with ``server_round + offset``."""

    def __init__(self, strategy: Strategy, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset={offset} must be >= 0")
        super().__init__(strategy)
        self.offset = offset

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(
            server_round + self.offset, arrays, config, grid
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(
            server_round + self.offset, arrays, config, grid
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)
