"""Server-side adjustment of the aggregated model on a globally shared dataset (method
S3).

``ServerAdjusted(strategy, adjust_fn, every_n_rounds)`` wraps any Message-API strategy.
In every adjusted round :math:`t` (``t % every_n_rounds == 0``) the aggregate of the
inner strategy is passed through ``adjust_fn`` and the result becomes the next global
model:

.. math::

    w_{t+1} = \\mathrm{adjust}(\\bar w_t), \\qquad
    \\bar w_t = \\mathrm{aggregate}_{\\text{inner}}(\\{w_t^{(i)}\\})

In bouquet's simulations ``adjust_fn`` fine-tunes on a small class-balanced slice held
only by the server, optionally with a proximal term :math:`\\mu \\|w - \\bar w_t\\|^2`
(``bouquet.simulations.methods.adjust``). This follows Zhao et al. 2018, "Federated
Learning with Non-IID Data" (arXiv:1806.00582), who show that a small globally shared
dataset recovers much of the accuracy lost to non-IID data; here the shared data stay on
the server, as in FedDF/FedFTG's server-side refinement.

The wrapper never imports torch: ``adjust_fn(arrays, server_round)`` is injected and
returns an ``ArrayRecord`` (or a ``dict`` of numpy arrays), optionally as ``(arrays,
report)`` where ``report`` is a dict merged into :meth:`ServerAdjusted.round_report`
(e.g. ``acc_before_adjust``). It must return the same array names as it received.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.serverapp.strategy import Strategy

from bouquet.strategies.wrapper import StrategyWrapper
from bouquet.strategies.wrapper import log_summary

logger = logging.getLogger(__name__)

AdjustResult = (
    ArrayRecord
    | dict[str, np.ndarray]
    | tuple[ArrayRecord | dict[str, np.ndarray], dict[str, Any]]
)
AdjustFn = Callable[[ArrayRecord, int], AdjustResult]


def as_array_record(arrays: ArrayRecord | dict[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` from an ``ArrayRecord`` or a ``name -> ndarray`` dict."""
    if isinstance(arrays, ArrayRecord):
        return arrays
    if isinstance(arrays, dict):
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    raise ValueError(
        f"adjust_fn returned {type(arrays).__name__}; allowed: ArrayRecord, dict of "
        "arrays, or (arrays, dict)"
    )


class ServerAdjusted(StrategyWrapper):
    """Adjust the inner strategy's aggregate with ``adjust_fn`` (see module docstring).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message-API strategy (FedAvg, KLWeightedFedAvg, a compression wrapper, ...).
    adjust_fn : callable
        ``adjust_fn(arrays, server_round) -> arrays | (arrays, report)``.
    every_n_rounds : int
        Adjust in rounds ``t`` with ``t % every_n_rounds == 0`` (1 = every round).
    """

    def __init__(
        self, strategy: Strategy, adjust_fn: AdjustFn, every_n_rounds: int = 1
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise ValueError(
                f"strategy={strategy!r} is not a flwr.serverapp.strategy.Strategy"
            )
        if not callable(adjust_fn):
            raise ValueError(f"adjust_fn={adjust_fn!r} is not callable")
        if int(every_n_rounds) < 1:
            raise ValueError(f"every_n_rounds={every_n_rounds} must be >= 1")
        super().__init__(strategy)
        self.adjust_fn = adjust_fn
        self.every_n_rounds = int(every_n_rounds)
        self.adjusted_rounds: list[int] = []
        self._report: dict[str, Any] = {}

    def summary(self) -> None:
        log_summary(self, f"ServerAdjusted (every {self.every_n_rounds} rounds)")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the inner strategy, then adjust the aggregate in adjusted
        rounds."""
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        self._report = {"adjusted": False}
        if arrays is None or server_round % self.every_n_rounds != 0:
            return arrays, metrics
        result = self.adjust_fn(arrays, server_round)
        extra: dict[str, Any] = {}
        if isinstance(result, tuple):
            if len(result) != 2 or not isinstance(result[1], dict):
                raise ValueError("adjust_fn must return arrays or (arrays, dict)")
            result, extra = result
        adjusted = as_array_record(result)
        if set(adjusted.keys()) != set(arrays.keys()):
            raise ValueError(
                "adjust_fn changed the array names: "
                f"{sorted(set(adjusted.keys()) ^ set(arrays.keys()))[:5]}"
            )
        self.adjusted_rounds.append(server_round)
        self._report = {"adjusted": True, **extra}
        return adjusted, metrics

    def own_report(self) -> dict[str, Any]:
        """This round's adjustment report (merged with the inner strategy's by the
        base)."""
        own, self._report = self._report, {}
        return own
