"""Asynchronous federated averaging with staleness-aware mixing (FedAsync / FedBuff /
S4).

:class:`AsyncFedAvg` owns its ``start()`` loop on ``grid.push_messages`` /
``grid.pull_messages``: every available node always has one train message in flight;
each reply is applied as soon as it arrives, and the node at once gets the current model
again. Every train message carries the global model version :math:`v_c` in its
ConfigRecord (``model-version``); a reply applied at version :math:`v` has staleness
:math:`\\tau = v - v_c`. The server remembers the version it sent with each message id
(authoritative; a client cannot make its update look fresher), and a reply that echoes a
different version is rejected.

Update rules (:math:`x` the global model, :math:`y` the client's returned model trained
from :math:`x_{v_c}`, :math:`\\Delta = y - x_{v_c}` its update, :math:`s(\\tau)` the
policy's scale, see :mod:`bouquet.strategies.staleness`):

* mixing policies (constant, polynomial, hinge, sliding_window; FedAsync, Xie et al.
  2019):

  .. math:: x \\leftarrow (1 - \\alpha s(\\tau))\\, x + \\alpha s(\\tau)\\, y
      \\qquad (v \\leftarrow v + 1 \\text{ per update})

* buffered policy (FedBuff, Nguyen et al. 2022), after :math:`K` accepted updates:

  .. math:: x \\leftarrow x + \\eta_g \\frac{1}{K} \\sum_{i=1}^{K} s(\\tau_i)\\,
  \\Delta_i
      \\qquad (v \\leftarrow v + 1 \\text{ per buffer})

Where the sliding window lives (``policy="sliding_window"``; formulas in
:mod:`bouquet.strategies.staleness`): with ``window_side="learner"`` (default) every
train message also carries ``applied-updates`` :math:`k` (how many of that node's
updates were applied) and ``prev-staleness`` :math:`\\tau_k` (the staleness of the last
one); the node keeps its window in ``context.state``, scales its local learning rate by
its :math:`s` and reports it (``lr-scale``;
:func:`bouquet.clients.staleness_window_mod`), echoing the values it was sent. The
server uses the reported :math:`s` in place of :math:`s(\\tau)`: ``learner_rate="both"``
(the learner trained with :math:`s \\eta` *and* the server mixes with
:math:`\\alpha s`), ``"local"`` (only the local rate; the server mixes with
:math:`\\alpha`) or ``"server"`` (the learner trains with :math:`\\eta`, the server
mixes with :math:`\\alpha s`). A reported :math:`s` that is missing, not a finite number
or outside :math:`[0, s_{max}]` is not used: the server's rule is (counted as
``lr_scale_fallbacks``). A reply whose echo differs from what its message carried is
rejected. With ``window_side="server"`` the server keeps the window(s); other policies
ignore ``window_side``.

Compressed replies (arrays whose ``stype`` is not a dense numpy array) are decoded into
the update :math:`\\Delta` by the ``decoder`` callable (``decoder(record, reference) ->
{name: delta}``, e.g. bouquet's codecs), so :math:`y = x_{v_c} + \\Delta`. To have
:math:`x_{v_c}`, the server keeps a snapshot of every version that still has a message
in flight.

Bad input never reaches the model: error replies, malformed or non-finite arrays,
undecodable payloads and updates beyond ``max_staleness`` are dropped (logged, counted
as failed) and the node is re-dispatched; a node that does not answer within
``reply_timeout_s`` is abandoned for that message and re-dispatched; after
``max_node_failures`` consecutive failures it is no longer used. The grid is asked for
its nodes only when a node may be idle (at the start, after a reply or a timeout), so a
node that joins later gets work at the next reply. The run stops after ``max_updates``
accepted updates (default ``num_rounds`` x nodes, the work of the synchronous run),
after ``max_wall_s`` seconds, or when the evaluation metric has not improved by
``plateau_min_delta`` over the last ``plateau_window`` evaluations (default
:math:`\\max(5, \\lceil 5 N / E \\rceil)` for :math:`N` nodes evaluated every :math:`E`
updates, see :func:`~bouquet.strategies.async_rules.plateau_evaluations`; the update
budget caps the run either way).

Checkpoints and resume (:meth:`AsyncFedAvg.bind_checkpoint`,
:meth:`AsyncFedAvg.state_dict`, :meth:`AsyncFedAvg.load_state_dict`): a bound
``save(updates, arrays)`` is called every ``every`` applied updates (after that update's
evaluation line) and when the run stops; a loaded state makes the next
:meth:`AsyncFedAvg.start` continue that run (version, counters, windows, budgets; what
is kept and what is not: :mod:`bouquet.strategies.async_state` and ``docs/async.md``).

Layout: this module holds the strategy (the Strategy API, checkpoints, ``start()``);
its settings are a frozen :class:`~bouquet.strategies.async_rules.AsyncSettings`
(``strategy.settings``; ``strategy.alpha`` and the others read it), the loop with its
evaluations and stop conditions :class:`~bouquet.strategies.async_run.AsyncRun`, the
loop's per-node steps a collaborator
:class:`~bouquet.strategies.async_nodes.NodeSteps` built for each run, its bookkeeping
:class:`~bouquet.strategies.async_state.AsyncState`, the messages and reply checks
:mod:`~bouquet.strategies.async_messages`, and the pure rules
:mod:`~bouquet.strategies.async_rules`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy import Strategy

from bouquet.staleness_window import DEFAULT_WINDOW
from bouquet.strategies.async_messages import Decoder
from bouquet.strategies.async_messages import train_message
from bouquet.strategies.async_nodes import NodeSteps
from bouquet.strategies.async_rules import AsyncSettings
from bouquet.strategies.async_rules import show_settings
from bouquet.strategies.async_run import AsyncRun
from bouquet.strategies.async_run import EvaluateFn
from bouquet.strategies.async_run import SaveFn
from bouquet.strategies.async_state import AsyncState
from bouquet.strategies.async_state import join_state
from bouquet.strategies.async_state import split_state
from bouquet.strategies.staleness import StalenessPolicy
from bouquet.strategies.staleness import make_policy

__all__ = ["AsyncFedAvg"]


@show_settings  # strategy.alpha is strategy.settings.alpha, ... (read-only)
class AsyncFedAvg(Strategy):
    """Asynchronous FedAvg with a staleness policy (see the module docstring).

    The keyword arguments but the policy's and ``decoder`` make its frozen ``settings``
    (:class:`~bouquet.strategies.async_rules.AsyncSettings`), shown as read-only
    attributes.

    Parameters
    ----------
    policy : str or StalenessPolicy
        ``constant | polynomial | hinge | fedbuff | sliding_window`` (built by
        :func:`~bouquet.strategies.staleness.make_policy` from the policy keyword
        arguments below) or a ready policy object.
    alpha : float
        Mixing rate of the mixing policies, in (0, 1].
    exponent, hinge_a, hinge_b, buffer_size, server_lr, window, context, max_scale,
    per_node, max_staleness :
        Policy settings (see :mod:`bouquet.strategies.staleness`).
    window_side : str
        ``learner`` (each node keeps its window and reports its scale) or ``server``
        (the server keeps the window); only the sliding window has one (see the module
        docstring).
    learner_rate : str
        With the learner-side window: ``both`` (local rate and server mixing scaled),
        ``local`` (only the local rate) or ``server`` (only the server mixing).
    max_updates : int, optional
        Budget of accepted client updates (``None``: ``num_rounds`` x number of nodes).
    max_wall_s : float, optional
        Wall-time budget in seconds.
    eval_every : int
        Evaluate (``evaluate_fn`` / run recorder) every this many accepted updates.
    plateau_window, plateau_min_delta, plateau_metric, plateau_mode :
        Stop when the best ``plateau_metric`` of the last ``plateau_window`` evaluations
        is not better than the best before by ``plateau_min_delta``
        (``plateau_window=0``: never; ``None``: at least 5 evaluations and 5 updates per
        node, see the module docstring).
    reply_timeout_s : float, optional
        Abandon a message after this many seconds (``None``: the ``timeout`` of
        ``start``).
    max_node_failures : int
        Consecutive failures (errors, timeouts, rejected replies) after which a node is
        unused.
    poll_interval_s : float
        Sleep between polls when no reply arrived.
    decoder : callable, optional
        ``decoder(record, reference) -> {name: delta}`` for compressed replies (default:
        :func:`bouquet.strategies.decoding.decode_update`).
    """

    def __init__(
        self,
        *,
        policy: str | StalenessPolicy = "polynomial",
        alpha: float = 0.6,
        exponent: float | None = None,
        hinge_a: float = 10.0,
        hinge_b: float = 4.0,
        buffer_size: int = 5,
        server_lr: float = 1.0,
        window: int = DEFAULT_WINDOW,
        context: str = "mean",
        max_scale: float = 1.0,
        per_node: bool = False,
        window_side: str = "learner",
        learner_rate: str = "both",
        max_staleness: int | None = None,
        max_updates: int | None = None,
        max_wall_s: float | None = None,
        eval_every: int = 10,
        plateau_window: int | None = None,
        plateau_min_delta: float = 0.001,
        plateau_metric: str = "accuracy",
        plateau_mode: str = "max",
        reply_timeout_s: float | None = None,
        max_node_failures: int = 3,
        poll_interval_s: float = 0.02,
        decoder: Decoder | None = None,
    ) -> None:
        self.settings = AsyncSettings(
            alpha=alpha,
            window_side=window_side,
            learner_rate=learner_rate,
            max_updates=max_updates,
            max_wall_s=max_wall_s,
            eval_every=eval_every,
            plateau_window=plateau_window,
            plateau_min_delta=plateau_min_delta,
            plateau_metric=plateau_metric,
            plateau_mode=plateau_mode,
            reply_timeout_s=reply_timeout_s,
            max_node_failures=max_node_failures,
            poll_interval_s=poll_interval_s,
        )
        if isinstance(policy, StalenessPolicy):
            self.policy = policy
        else:
            self.policy = make_policy(
                policy,
                exponent=exponent,
                hinge_a=hinge_a,
                hinge_b=hinge_b,
                buffer_size=buffer_size,
                server_lr=server_lr,
                window=window,
                context=context,
                max_scale=max_scale,
                per_node=per_node,
                max_staleness=max_staleness,
            )
        # the learner-side window acts only for the sliding window (other policies have
        # none)
        self.learner_side = (
            window_side == "learner" and self.policy.name == "sliding_window"
        )
        self.max_scale = float(getattr(self.policy, "max_scale", max_scale))
        # an attribute of its own: bouquet-sim sets it when the clients compress
        self.decoder = decoder
        self.recorder: Any = None
        self.state = AsyncState()
        # built again for each run (start() starts a new state)
        self._steps = self._node_steps()
        self.checkpoint: SaveFn | None = None
        self.checkpoint_every = 0
        # set by load_state_dict, used by the next start()
        self._resume: dict[str, Any] | None = None

    def _node_steps(self) -> NodeSteps:
        """The per-node steps of a run on ``self.state`` (with the decoder set now)."""
        return NodeSteps(
            self.settings,
            self.policy,
            self.state,
            learner_side=self.learner_side,
            max_scale=self.max_scale,
            decoder=self.decoder,
        )

    # ------------------------------------------------------------ Strategy API
    def summary(self) -> None:
        s = self.settings
        side = (
            f", window on the learners (learner_rate={s.learner_rate})"
            if self.learner_side
            else ""
        )
        log(
            logging.INFO,
            "\t├──> AsyncFedAvg: %s%s, alpha=%s, eval every %d updates",
            self.policy.describe(),
            side,
            s.alpha,
            s.eval_every,
        )

    def bind_recorder(self, recorder: Any) -> Strategy:
        """Record one ``metrics.jsonl`` line per evaluation through the run recorder.

        Returns the strategy whose ``start()`` drives the run (this one: an asynchronous
        loop does its own reply validation and decoding, so synchronous wrappers do not
        apply).
        """
        self.recorder = recorder
        return self

    def bind_checkpoint(self, save: SaveFn | None, every: int) -> AsyncFedAvg:
        """Call ``save(updates, arrays)`` every ``every`` applied updates and at the end
        (0: never)."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(
                f"checkpoint every={every!r} must be an integer >= 0 (applied "
                "updates; 0: off)"
            )
        self.checkpoint, self.checkpoint_every = save, every
        return self

    def state_dict(self) -> dict[str, Any]:
        """The run's state without the model, as plain data (see the module
        docstring)."""
        return join_state(self.state, self.policy)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run of :meth:`state_dict` at the next :meth:`start` (see the
        module docstring)."""
        run, policy = split_state(state, self.policy.name)
        self.policy.load_state_dict(policy)
        self._resume = run

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message (model version ``server_round``) for every node of
        ``grid``."""
        return [
            train_message(
                node,
                arrays,
                server_round,
                config,
                1,
                self.state.flight(node, server_round, self.learner_side),
            )
            for node in grid.get_node_ids()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not used: :meth:`start` applies every reply as it arrives (no synchronous
        rounds)."""
        raise NotImplementedError(
            "AsyncFedAvg applies replies in start(); it has no synchronous aggregation"
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # evaluation is server-side (evaluate_fn)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def round_report(self) -> dict[str, Any]:
        """Staleness statistics and dropped replies since the previous report."""
        return self.state.report(self.learner_side)

    # ------------------------------------------------------------------ loop
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run asynchronous training on ``grid`` until a stop condition holds (or
        continue the run loaded by :meth:`load_state_dict`, ``initial_arrays`` being its
        model; :class:`~bouquet.strategies.async_run.AsyncRun`)."""
        resume, self._resume = self._resume, None
        self.state = AsyncState()
        self._steps = self._node_steps()
        run = AsyncRun(
            self.settings,
            self.state,
            self._steps,
            learner_side=self.learner_side,
            recorder=self.recorder,
            evaluate_fn=evaluate_fn,
            save=self.checkpoint,
            every=self.checkpoint_every,
        )
        arrays = {k: v.numpy().copy() for k, v in initial_arrays.items()}
        config = ConfigRecord(dict(train_config or {}))
        return run.run(grid, arrays, resume, num_rounds, timeout, config, self.summary)
