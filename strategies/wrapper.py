"""``StrategyWrapper``: the base of bouquet's strategy wrappers.

A wrapper adds one feature around any Message-API strategy (the way Flower's DP wrappers
do): :class:`~bouquet.strategies.ReplyGuard`, :class:`~bouquet.strategies.Compressed`,
:class:`~bouquet.strategies.ServerMomentum`,
:class:`~bouquet.strategies.ServerAdjusted`, ``RoundOffset``, ... This base forwards
every phase to the wrapped strategy, runs Flower's synchronous loop on the wrapper (so
the wrapper's phases are used) unless the innermost strategy has its own ``start()``
loop, and merges ``round_report()`` of the inner strategy with the wrapper's own
(:meth:`own_report`). Subclasses override only the phases they change.

Attributes, one owner each:

* a *read* of a name the wrapper does not have is forwarded to the wrapped strategy
  (``wrapper.fraction_train`` reads the inner value), except the hooks of
  :data:`bouquet.strategies.hooks.LOCAL_MEMBERS`, which say how a strategy itself
  aggregates;
* a *write* of a name the wrapper owns (its instance attributes, set in ``__init__``,
  and names starting with ``_``) stays on the wrapper; a write of any other name goes to
  the wrapped strategy if it has that name, and is refused (``AttributeError``)
  otherwise, so a value is never split between the two;
* a wrapper whose own public attribute has the name of one of the wrapped strategy's is
  refused at construction (``ValueError``): it would shadow it.
"""

from __future__ import annotations

import logging
from abc import ABCMeta
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from bouquet import keys
from bouquet.strategies.hooks import LOCAL_MEMBERS
from bouquet.strategies.reports import inner_report
from bouquet.strategies.reports import merge_reports

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


def nested(strategy: Any) -> list[Any]:
    """``strategy`` and every strategy below it through any wrapper that keeps its inner
    strategy in ``.strategy`` (bouquet's wrappers and Flower's DP wrappers), outermost
    first."""
    out = [strategy]
    while len(out) < 64:
        inner = vars(out[-1]).get("strategy") if hasattr(out[-1], "__dict__") else None
        if not isinstance(inner, Strategy):
            break
        out.append(inner)
    return out


def weight_key_of(strategy: Any) -> str:
    """The weight metric (Flower's ``weighted_by_key``) of the first strategy in the
    chain that defines one, looking through Flower's DP wrappers too (``num-examples``
    if none does)."""
    for level in nested(strategy):
        key = vars(level).get("weighted_by_key") if hasattr(level, "__dict__") else None
        if isinstance(key, str):
            return key
    return keys.NUM_EXAMPLES


def refuse_byte_models(strategy: Strategy, wrapper: str) -> None:
    """``ValueError`` if ``strategy`` aggregates byte-array models whose length changes
    (Flower's XGBoost strategies): ``wrapper`` checks replies against the global arrays'
    shapes."""
    from flwr.serverapp.strategy import FedXgbBagging
    from flwr.serverapp.strategy import FedXgbCyclic

    for level in nested(strategy):
        if isinstance(level, (FedXgbBagging, FedXgbCyclic)):
            raise ValueError(
                f"{wrapper} cannot wrap {type(level).__name__}: its model is a "
                "serialised booster whose "
                "byte length changes every round, not tensors of fixed shape; use it "
                "unwrapped"
            )


def refuse_twice(strategy: Strategy, cls: type, advice: str) -> None:
    """``ValueError`` if a ``cls`` is already in ``strategy``'s chain; ``advice`` says
    what to do instead."""
    if any(isinstance(s, cls) for s in nested(strategy)):
        raise ValueError(f"{cls.__name__} is already in this chain: {advice}")


def log_summary(wrapper: StrategyWrapper, line: str) -> None:
    """Log ``line`` (the wrapper and its settings) and the name of the strategy it
    wraps, then that strategy's own summary."""
    log(logging.INFO, "\t├──> %s around %s", line, type(wrapper.strategy).__name__)
    wrapper.strategy.summary()


class _SealedAfterInit(ABCMeta):
    """Marks a wrapper as built once its ``__init__`` returns, and refuses a wrapper
    whose own
    public attribute would shadow one of the wrapped strategy's."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        inner = vars(obj).get("strategy")
        if inner is not None:
            clash = sorted(
                n
                for n in vars(obj)
                if not n.startswith("_") and n != "strategy" and hasattr(inner, n)
            )
            if clash:
                raise ValueError(
                    f"{cls.__name__} would shadow {type(inner).__name__}'s "
                    f"attribute(s) {clash}: a wrapper "
                    "never hides an attribute of the strategy it wraps"
                )
        object.__setattr__(obj, "_built", True)
        return obj


class StrategyWrapper(Strategy, metaclass=_SealedAfterInit):
    """Forward everything to ``strategy`` (see module docstring)."""

    def __init__(self, strategy: Strategy) -> None:
        if not isinstance(strategy, Strategy):
            raise ValueError(
                f"strategy={strategy!r} is not a flwr.serverapp.strategy.Strategy"
            )
        self.strategy = strategy

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found on the wrapper: read them from the wrapped
        # strategy.
        if name == "strategy" or name in LOCAL_MEMBERS or "strategy" not in vars(self):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # see the module docstring: one owner per name, never split between wrapper and
        # inner strategy
        own = (
            name.startswith("_")
            or name == "strategy"
            or name in vars(self)
            or hasattr(type(self), name)
            or not vars(self).get("_built", False)
        )
        if own:
            object.__setattr__(self, name, value)
        elif hasattr(self.strategy, name):
            setattr(self.strategy, name, value)
        else:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r} and neither has "
                "the strategy it wraps "
                f"({type(self.strategy).__name__}); refusing to add one"
            )

    def start(
        self, grid: Grid, initial_arrays: ArrayRecord, *args: Any, **kwargs: Any
    ) -> Any:
        """Flower's synchronous loop; a strategy with its own ``start()`` keeps it."""
        base = innermost(self.strategy)
        if type(base).start is not Strategy.start:
            return self.strategy.start(grid, initial_arrays, *args, **kwargs)
        return Strategy.start(self, grid, initial_arrays, *args, **kwargs)

    def summary(self) -> None:
        log_summary(self, type(self).__name__)

    def inner_round(self, server_round: int) -> int:
        """The round number the wrapped strategy is called with (the same;
        ``RoundOffset`` shifts it)."""
        return server_round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        inner = self.inner_round(server_round)
        return self.strategy.configure_train(inner, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(self.inner_round(server_round), replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        inner = self.inner_round(server_round)
        return self.strategy.configure_evaluate(inner, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        inner = self.inner_round(server_round)
        return self.strategy.aggregate_evaluate(inner, replies)

    def own_report(self) -> dict[str, Any]:
        """This wrapper's values for the round's metrics line (read once, then
        reset)."""
        return {}

    def round_report(self) -> dict[str, Any]:
        return merge_reports(inner_report(self.strategy), self.own_report())
