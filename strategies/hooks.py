"""The hooks one strategy (or wrapper) may offer another, as ``typing.Protocol`` s.

A wrapper never recognises another by its class name and never reaches into another's
attributes: it asks ``isinstance(strategy, Hook)`` for one of the protocols below and
calls only what the protocol documents. Every protocol is ``runtime_checkable``;
``isinstance`` checks that the members exist, through a wrapper's forwarded attribute
reads too (a wrapper around a strategy that validates its arrays validates them as
well), except for the members in :data:`LOCAL_MEMBERS`, which describe how a strategy
itself aggregates and are never forwarded (:class:`ReplyWeights`, :class:`ReplyScreen`).
A flag-like member (``validates_arrays``) is read after the check: ``isinstance(s,
ValidatesArrays) and s.validates_arrays``.

==========================  ==========================================================
protocol                    offered by
==========================  ==========================================================
:class:`RoundReporter`      every bouquet wrapper, ``KLWeightedFedAvg``,
                            ``DepthFedAvg``, ...
:class:`RecorderBinding`    strategies with their own ``start()`` loop (``AsyncFedAvg``)
:class:`ValidatesArrays`    strategies that judge each reply's arrays themselves
                            (sub-models)
:class:`ValidatesMetrics`   strategies that handle replies with differing metric keys
:class:`ReplyWeights`       weighted-mean strategies with their own client weights
:class:`ReplyScreen`        ``ReplyGuard``: rules an outer wrapper may apply on its
                            behalf
:class:`Stateful`           strategies whose state a checkpoint keeps
==========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from typing import Protocol
from typing import runtime_checkable

from flwr.app import Message
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy import Strategy

# Members that say how a strategy itself aggregates: a wrapper does not inherit them
# from the strategy it wraps by attribute forwarding (its own aggregate_train may
# differ).
LOCAL_MEMBERS = frozenset(
    {"reply_weights", "weighted_mean_aggregation", "screen_norms", "admit_round"}
)


@runtime_checkable
class RoundReporter(Protocol):
    """Hands the run recorder this round's strategy-specific values.

    ``round_report()`` returns a dict merged into the round's ``metrics.jsonl`` line
    (``clients_dropped`` and ``drop_reasons`` are summed / concatenated across a wrapper
    chain by :func:`bouquet.strategies.reports.merge_reports`). A report is read once:
    reading it resets it.
    """

    def round_report(self) -> dict[str, Any]: ...


@runtime_checkable
class RecorderBinding(Protocol):
    """A strategy with its own ``start()`` loop that records its own evaluations.

    ``bind_recorder(recorder)`` hands it the run recorder (which it calls after each
    evaluation) and returns the strategy, so that calls can be chained.
    """

    def bind_recorder(self, recorder: Any) -> Any: ...


@runtime_checkable
class ValidatesArrays(Protocol):
    """A strategy that checks every reply's arrays itself (e.g. sub-models of different
    sizes).

    When ``validates_arrays`` is true, ``ReplyGuard`` leaves names, shapes and dtypes to
    it and checks only the weight; ``Compressed`` cannot decode such replies against one
    global model.
    """

    validates_arrays: bool


@runtime_checkable
class ValidatesMetrics(Protocol):
    """A strategy that accepts replies whose MetricRecords hold different keys.

    When ``validates_metrics`` is true, wrappers hand it the replies' MetricRecords as
    they came instead of reducing them to the keys every reply shares.
    """

    validates_metrics: bool


@runtime_checkable
class ReplyWeights(Protocol):
    """A weighted-mean strategy: its aggregate is :math:`\\sum_i c_i w_i / \\sum_i c_i`.

    ``weighted_mean_aggregation`` must be true (a class attribute, so a subclass that
    changes ``aggregate_train`` states it again). ``reply_weights(replies)`` returns one
    finite weight :math:`c_i \\ge 0` per reply (checked ``Message`` s, in order; a
    weight 0 leaves the reply out); ``Compressed`` then aggregates compressed updates
    with these weights directly, without a dense copy per reply, and the train metrics
    with ``train_metrics_aggr_fn``. Flower's FedAvg and FedProx need no declaration
    (their weight is ``weighted_by_key``).
    """

    weighted_mean_aggregation: bool

    def reply_weights(self, replies: list[Message]) -> list[float]: ...


@runtime_checkable
class ReplyScreen(Protocol):
    """A wrapper that screens replies before its inner strategy aggregates them, and
    whose rules
    an outer wrapper may apply on its behalf.

    Promise: the screen's ``aggregate_train(replies)`` is
    ``strategy.aggregate_train(kept)`` (or ``(None, None)`` for a skipped round),
    ``kept`` being the replies that pass its checks. ``Compressed``'s fast path, which
    never builds the dense replies the screen would read, instead decodes each reply,
    then asks the screen:

    * ``screen_norms(norms)``: the indices of the update norms
      :math:`\\lVert \\eta \\hat u_i \\rVert_2` (one per decoded reply, in order) that
      the screen keeps;
    * ``admit_round(server_round, usable)``: whether a round with ``usable`` replies
      left is aggregated; ``False`` means it is skipped, and the screen counts, logs and
      reports it.
    """

    strategy: Any

    def screen_norms(self, norms: Sequence[float]) -> list[int]: ...

    def admit_round(self, server_round: int, usable: int) -> bool: ...


@runtime_checkable
class Stateful(Protocol):
    """A strategy whose state survives a checkpoint: ``state_dict()`` returns plain data
    (numbers, strings, numpy arrays and lists / dicts of those);
    ``load_state_dict(state)`` continues from it and raises ``ValueError`` if it is not
    one of its states."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def weighted_mean_chain(strategy: Strategy) -> tuple[FedAvg | None, list[Any]]:
    """The FedAvg-family strategy whose ``aggregate_train`` is a plain weighted mean (or
    None), and the :class:`~bouquet.strategies.hooks.ReplyScreen` s looked through on
    the way to it.

    A weighted mean: a FedAvg whose class uses ``FedAvg.aggregate_train`` unchanged
    (FedAvg, FedProx), or declares ``weighted_mean_aggregation = True``
    (:class:`~bouquet.strategies.hooks.ReplyWeights`); a class declaring it ``False``
    opts out.
    """
    screens: list[Any] = []
    level: Any = strategy
    while isinstance(level, ReplyScreen):
        screens.append(level)
        level = level.strategy
    if not isinstance(level, FedAvg):
        return None, screens
    declared = getattr(type(level), "weighted_mean_aggregation", None)
    if declared is not None:
        return (level if declared else None), screens
    return (
        level if type(level).aggregate_train is FedAvg.aggregate_train else None
    ), screens


def weighted_mean_base(strategy: Strategy) -> FedAvg | None:
    """The FedAvg-family strategy of :func:`weighted_mean_chain` (or None)."""
    return weighted_mean_chain(strategy)[0]
