"""``StrategyWrapper``: the base of bouquet's strategy wrappers.

A wrapper adds one feature around any Message-API strategy (the way Flower's DP wrappers do):
:class:`~bouquet.strategies.ReplyGuard`, :class:`~bouquet.strategies.Compressed`,
:class:`~bouquet.strategies.ServerAdjusted`, ``RoundOffset``, ... This base forwards every
phase to the wrapped strategy, forwards attribute lookups (so ``wrapper.fraction_train`` reads
the inner value), runs Flower's synchronous loop on the wrapper (so the wrapper's phases are
used) unless the innermost strategy has its own ``start()`` loop, and merges ``round_report()``
of the inner strategy with the wrapper's own (:meth:`own_report`). Subclasses override only the
phases they change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet.strategies.reports import inner_report, merge_reports

logger = logging.getLogger(__name__)


def chain(strategy: Strategy) -> list[Strategy]:
    """``strategy`` and every strategy it wraps, outermost first."""
    out = [strategy]
    while isinstance(out[-1], StrategyWrapper):
        out.append(out[-1].strategy)
    return out


def innermost(strategy: Strategy) -> Strategy:
    """The strategy at the bottom of a wrapper chain."""
    while isinstance(strategy, StrategyWrapper):
        strategy = strategy.strategy
    return strategy


class StrategyWrapper(Strategy):
    """Forward everything to ``strategy`` (see module docstring)."""

    def __init__(self, strategy: Strategy) -> None:
        if not isinstance(strategy, Strategy):
            raise ValueError(f"strategy={strategy!r} is not a flwr.serverapp.strategy.Strategy")
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found on the wrapper: read them from the wrapped strategy.
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # A write of a name the wrapper does not own but the wrapped strategy has (e.g.
        # ``fraction_train``) goes to the wrapped strategy, so reads and writes see one value.
        own = name.startswith("_") or name in self.__dict__ or hasattr(type(self), name) or "strategy" not in self.__dict__
        if not own and hasattr(innermost(self.__dict__["strategy"]), name):
            setattr(self.__dict__["strategy"], name, value)
            return
        object.__setattr__(self, name, value)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any) -> Any:
        """Flower's synchronous loop; a strategy with its own ``start()`` keeps it."""
        base = innermost(self.strategy)
        if type(base).start is not Strategy.start:
            return self.strategy.start(grid, initial_arrays, *args, **kwargs)
        return Strategy.start(self, grid, initial_arrays, *args, **kwargs)

    def summary(self) -> None:
        log(logging.INFO, "%s around %s", type(self).__name__, type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def own_report(self) -> dict[str, Any]:
        """This wrapper's values for the round's metrics line (read once, then reset)."""
        return {}

    def round_report(self) -> dict[str, Any]:
        return merge_reports(inner_report(self.strategy), self.own_report())
