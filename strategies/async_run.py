"""One run of :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg`'s ``start()`` loop.

:class:`AsyncRun` drives the loop on ``grid.push_messages`` / ``grid.pull_messages``:
it dispatches work to idle nodes and applies each reply as it arrives (through the
run's :class:`~bouquet.strategies.async_nodes.NodeSteps`), evaluates every
``eval_every`` applied updates, saves checkpoints through the bound callable, and stops
when a budget is reached or the evaluation metric plateaued
(:func:`~bouquet.strategies.async_rules.plateaued`). Its bookkeeping is the run's
:class:`~bouquet.strategies.async_state.AsyncState`; the rules and settings are
:mod:`~bouquet.strategies.async_rules`'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from bouquet.strategies.async_nodes import NodeSteps
from bouquet.strategies.async_nodes import wait_for_nodes
from bouquet.strategies.async_rules import AsyncSettings
from bouquet.strategies.async_rules import plateau_evaluations
from bouquet.strategies.async_rules import plateaued
from bouquet.strategies.async_state import AsyncState

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
SaveFn = Callable[[int, dict[str, Any]], None]


@dataclass(eq=False)
class AsyncRun:
    """The loop of one asynchronous run, its evaluations, stop conditions and
    checkpoints (module docstring).

    Parameters
    ----------
    settings : AsyncSettings
        The strategy's frozen settings.
    state : AsyncState
        The run's bookkeeping (new, or restored from a checkpoint by :meth:`run`).
    steps : NodeSteps
        The run's per-node steps on ``state``.
    learner_side : bool
        Whether the sliding window lives on the learners (for the reports).
    recorder : object, optional
        The run recorder (one ``metrics.jsonl`` line per evaluation), else
        ``evaluate_fn`` and Flower's logger.
    evaluate_fn : callable, optional
        ``evaluate_fn(updates, arrays) -> MetricRecord`` (without a recorder).
    save : callable, optional
        ``save(updates, arrays)``, called every ``every`` applied updates and at the
        end.
    every : int
        Applied updates between checkpoints (0: never).
    result : Result
        What :meth:`run` returns (the evaluations, then the final model).
    """

    settings: AsyncSettings
    state: AsyncState
    steps: NodeSteps
    _: KW_ONLY
    learner_side: bool
    recorder: Any = None
    evaluate_fn: EvaluateFn | None = None
    save: SaveFn | None = None
    every: int = 0
    result: Result = field(default_factory=Result)

    def run(
        self,
        grid: Grid,
        arrays: dict[str, Any],
        resume: dict[str, Any] | None,
        num_rounds: int,
        timeout: float,
        config: ConfigRecord,
        summary: Callable[[], None],
    ) -> Result:
        """Train on ``grid`` from ``arrays`` (or continue the run of ``resume``) until
        a stop condition holds (update budget: ``max_updates``, else ``num_rounds`` x
        nodes); ``summary`` logs the strategy once the nodes are known."""
        st, steps, settings = self.state, self.steps, self.settings
        if resume is None:
            st.reset(arrays)
        else:
            st.restore(resume, arrays)
        reply_timeout = float(settings.reply_timeout_s or timeout)
        nodes = wait_for_nodes(grid, reply_timeout)
        if resume is None:
            st.nodes = len(nodes)
        st.budget = settings.max_updates or int(num_rounds) * max(1, st.nodes)
        if self.recorder is not None and hasattr(self.recorder, "total_steps"):
            # the progress line's ETA counts applied updates
            self.recorder.total_steps = st.budget
        st.plateau_window = plateau_evaluations(
            settings.plateau_window, st.nodes, settings.eval_every
        )
        summary()
        log(
            logging.INFO,
            "async: %d nodes, budget %d updates, reply timeout %.0f s, plateau after "
            "%d evaluations",
            len(nodes),
            st.budget,
            reply_timeout,
            st.plateau_window,
        )
        if resume is None:
            self.evaluate()
        else:
            self.log_resume(nodes)
            st.stop_reason = self.stop_reason()
        # some node may be idle: ask the grid for nodes only then (an RPC on a
        # SuperLink)
        idle = True
        while st.stop_reason is None:
            if idle:
                steps.dispatch(grid, config)
            if not st.inflight:
                st.stop_reason = "no usable node left"
                break
            replies = list(grid.pull_messages(list(st.inflight)))
            idle = bool(replies)
            # in arrival order
            for reply in sorted(replies, key=lambda m: m.metadata.created_at):
                steps.handle(reply)
                st.stop_reason = self.stop_reason()
                if (
                    st.stop_reason is None
                    and st.updates_since_eval >= settings.eval_every
                ):
                    self.evaluate()  # may find a plateau
                if st.stop_reason:
                    break
                self.checkpoint(final=False)
            st.stop_reason = st.stop_reason or self.stop_reason()
            if st.stop_reason is None:
                idle = steps.expire(grid, reply_timeout) or idle
                if not replies:
                    time.sleep(settings.poll_interval_s)
        log(
            logging.INFO,
            "async: stopped after %d updates (version %d): %s",
            st.updates,
            st.version,
            st.stop_reason,
        )
        if st.updates_since_eval:
            self.evaluate()  # the final line carries the stop reason
        self.checkpoint(final=True)
        self.result.arrays = st.record()
        return self.result

    def checkpoint(self, final: bool) -> None:
        """Save through the bound callable every ``checkpoint_every`` applied updates
        (and at the end)."""
        st = self.state
        if self.save is None or self.every <= 0 or st.updates == st.checkpointed:
            return
        if not final and st.updates % self.every:
            return
        previous, st.checkpointed = st.checkpointed, st.updates
        try:
            self.save(st.updates, st.arrays)
        # the previous checkpoint stays valid (written atomically): go on
        except OSError as exc:
            st.checkpointed = previous
            log(
                logging.WARNING,
                "async: checkpoint after %d updates skipped: %s",
                st.updates,
                exc,
            )

    def log_resume(self, nodes: list[int]) -> None:
        """Say where a resumed run continues, and which per-node values cannot be
        used."""
        st = self.state
        log(
            logging.INFO,
            "async: resuming at version %d after %d updates (%d evaluations), budget "
            "%d",
            st.version,
            st.updates,
            len(st.history),
            st.budget,
        )
        gone, known = st.absent_nodes(nodes)
        if gone:
            log(
                logging.WARNING,
                "async: %d of the %d nodes in the checkpoint are not connected (a "
                "simulation gives its nodes "
                "new ids); their counters and windows are not used, the nodes now "
                "connected start afresh",
                gone,
                known,
            )

    def evaluate(self) -> None:
        """Evaluate the model (recorder or ``evaluate_fn``), note the plateau metric and
        the stop reason, and record the line."""
        st = self.state
        st.updates_since_eval = 0
        record = st.record()
        metrics: dict[str, Any] = {}
        if self.recorder is not None:
            metrics = dict(
                self.recorder.evaluate_arrays(
                    {k: v.copy() for k, v in st.arrays.items()}
                )
            )
        elif self.evaluate_fn is not None:
            metrics = dict(self.evaluate_fn(st.updates, record) or {})
        if self.settings.plateau_metric in metrics:
            st.history.append(float(metrics[self.settings.plateau_metric]))
        # so that this line carries it
        st.stop_reason = st.stop_reason or self.stop_reason()
        if self.recorder is not None:
            self.recorder.record(st.updates, {**metrics}, step_key="updates")
            self.recorder.last_arrays = record
        else:
            log(
                logging.INFO,
                "async: updates %d %s %s",
                st.updates,
                metrics,
                st.report(self.learner_side),
            )
        if metrics:
            self.result.evaluate_metrics_serverapp[st.updates] = MetricRecord(
                {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            )

    def stop_reason(self) -> str | None:
        st, s = self.state, self.settings
        if st.updates >= st.budget:
            return f"update budget {st.budget} reached"
        if s.max_wall_s is not None and time.monotonic() - st.t_start >= s.max_wall_s:
            return f"wall-time budget {s.max_wall_s:.0f} s reached"
        if plateaued(
            st.history, st.plateau_window, s.plateau_min_delta, s.plateau_mode
        ):
            return f"{s.plateau_metric} plateaued over {st.plateau_window} evaluations"
        return None
