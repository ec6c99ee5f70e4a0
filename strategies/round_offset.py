"""``RoundOffset``: number a strategy's rounds from ``offset + 1`` (used to resume a
run).

Flower's ``Strategy.start()`` always counts rounds from 1. A resumed run that continues
after round ``k`` wraps its strategy in ``RoundOffset(strategy, k)``, so that the inner
strategy, the clients (through ``server-round`` in the train config) and round-dependent
schedules (e.g. the top-k attenuation ``rho ** round``) see the same round numbers as an
uninterrupted run.
"""

from __future__ import annotations

from flwr.serverapp.strategy import Strategy

from bouquet.strategies.wrapper import StrategyWrapper


class RoundOffset(StrategyWrapper):
    """Forward every call to ``strategy`` with ``server_round + offset``."""

    def __init__(self, strategy: Strategy, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset={offset} must be >= 0")
        super().__init__(strategy)
        self.offset = offset

    def inner_round(self, server_round: int) -> int:
        return server_round + self.offset
