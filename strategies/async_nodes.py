"""The per-node steps of the asynchronous loop
(:mod:`~bouquet.strategies.async_fedavg`).

:class:`NodeSteps`, a collaborator that
:class:`~bouquet.strategies.async_fedavg.AsyncFedAvg` holds for each run, does what the
loop does for one node or one reply, with the strategy's
:class:`~bouquet.strategies.async_rules.AsyncSettings`, its staleness policy and the
run's :class:`~bouquet.strategies.async_state.AsyncState`: push the current model to
every idle node (:meth:`~NodeSteps.dispatch`), abandon messages older than the reply
timeout (:meth:`~NodeSteps.expire`), count a node's consecutive failures and stop using
it after ``max_node_failures`` (:meth:`~NodeSteps.fail`), and validate one reply and
apply or buffer its update (:meth:`~NodeSteps.handle`) with the scale of the server's
rule or the one the learner reported (:meth:`~NodeSteps.scale`). :func:`wait_for_nodes`
waits for the grid's first node.
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from bouquet.strategies.async_messages import Decoder
from bouquet.strategies.async_messages import reply_update
from bouquet.strategies.async_messages import reported_scale
from bouquet.strategies.async_messages import train_message
from bouquet.strategies.async_rules import AsyncSettings
from bouquet.strategies.async_rules import buffered_step
from bouquet.strategies.async_rules import mix
from bouquet.strategies.async_state import AsyncState
from bouquet.strategies.reports import truncate_reason
from bouquet.strategies.screening import node_label
from bouquet.strategies.staleness import StalenessPolicy

logger = logging.getLogger(__name__)


def wait_for_nodes(grid: Grid, timeout: float) -> list[int]:
    """The grid's node ids, waiting (at most ``timeout`` seconds) until there is one."""
    end = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if nodes or time.monotonic() > end:
            return nodes
        time.sleep(0.5)


@dataclass(eq=False)
class NodeSteps:
    """The loop's per-node steps (see the module docstring) on one run's ``state``.

    Parameters
    ----------
    settings : AsyncSettings
        The strategy's settings (``alpha``, ``learner_rate``, ``max_node_failures`` act
        here).
    policy : StalenessPolicy
        The strategy's staleness policy.
    state : AsyncState
        The run's bookkeeping, updated in place.
    learner_side : bool
        Whether the learners keep the sliding window and report their scale.
    max_scale : float
        The largest scale a learner may report.
    decoder : callable, optional
        Decoder of compressed replies (``None``: bouquet's codecs).
    """

    settings: AsyncSettings
    policy: StalenessPolicy
    state: AsyncState
    _: KW_ONLY
    learner_side: bool
    max_scale: float
    decoder: Decoder | None

    def dispatch(self, grid: Grid, config: ConfigRecord) -> None:
        """Push the current model to every available node that has nothing in flight."""
        st = self.state
        busy = {f.node_id for f in st.inflight.values()}
        idle = [
            n for n in grid.get_node_ids() if n not in busy and n not in st.excluded
        ]
        if not idle:
            return
        # one push per message: a grid may drop a message it cannot store
        for node in idle:
            st.tasks[node] = st.tasks.get(node, 0) + 1
            flight = st.flight(node, st.version, self.learner_side)
            ids = [
                m
                for m in grid.push_messages(
                    [
                        train_message(
                            node,
                            st.record(),
                            st.version,
                            config,
                            st.tasks[node],
                            flight,
                        )
                    ]
                )
                if m
            ]
            if ids:
                st.send(ids[0], flight)
            else:
                self.fail(node, "push failed", count=False)

    def expire(self, grid: Grid, reply_timeout: float) -> bool:
        """Abandon messages older than ``reply_timeout`` (their nodes become idle);
        any?"""
        st = self.state
        now = time.monotonic()
        late = [
            mid for mid, f in st.inflight.items() if now - f.sent_at > reply_timeout
        ]
        if not late:
            return False
        abandon = getattr(grid, "abandon", None)
        if callable(abandon):
            abandon(late)  # MeteredGrid counts them as failed
        for mid in late:
            flight = st.receive(mid)
            self.fail(
                flight.node_id, f"no reply within {reply_timeout:.1f} s", count=False
            )
        return True

    def fail(self, node: int, reason: str, count: bool = True) -> None:
        """Count a failure of ``node`` (as a dropped reply if ``count``); exclude it
        after too many."""
        st = self.state
        reason = truncate_reason(reason)  # reasons quote what a reply holds
        st.failures[node] = st.failures.get(node, 0) + 1
        log(logging.WARNING, "async: node %s: %s", node, reason)
        if count:
            st.drop(f"node {node}: {reason}")
        if (
            st.failures[node] >= self.settings.max_node_failures
            and node not in st.excluded
        ):
            st.excluded.add(node)
            log(
                logging.WARNING,
                "async: node %s failed %d times in a row; not used any more",
                node,
                st.failures[node],
            )

    def handle(self, reply: Message) -> None:
        """Validate one reply and apply (or buffer) it."""
        st = self.state
        mid = reply.metadata.reply_to_message_id
        if mid not in st.inflight:
            return  # a reply to an abandoned message
        node = st.inflight[mid].node_id
        # identity: only the node the message went to answers it
        if reply.metadata.src_node_id != node:
            st.drop(
                f"node {node_label(reply)}: "
                + truncate_reason(f"answers the message sent to node {node}")
            )
            log(
                logging.WARNING,
                "async: a reply from node %s answers the message sent to node %s; "
                "ignored",
                node_label(reply),
                node,
            )
            return
        flight = st.receive(mid)
        if reply.has_error():
            # MeteredGrid already counts error replies as failed: not a drop.
            self.fail(node, f"error reply: {reply.error.reason}", count=False)
            return
        delta, reason = reply_update(
            reply,
            st.snapshot(flight.version),
            flight.version,
            self.decoder,
            flight.echo(),
        )
        tau = st.version - flight.version
        logger.debug(
            "async: reply from node %s sent at version %d, now %d",
            node,
            flight.version,
            st.version,
        )
        if reason is None and not self.policy.accepts(tau):
            reason = f"staleness {tau} > max_staleness {self.policy.max_staleness}"
        if reason is not None:
            self.fail(node, f"reply rejected: {reason}")
            return
        st.failures[node] = 0
        scale, rate = self.scale(reply, tau, node)
        st.accept(tau, scale, node)
        if self.policy.buffer_size > 1:
            st.buffer.append((delta, rate))
            if len(st.buffer) >= self.policy.buffer_size:
                deltas, scales = zip(*st.buffer, strict=True)
                lr = self.policy.server_lr if self.policy.server_lr is not None else 1.0
                with np.errstate(over="ignore", invalid="ignore"):
                    stepped = buffered_step(st.arrays, list(deltas), list(scales), lr)
                if _finite(stepped):
                    st.advance(stepped)
                    st.buffer = []
                # this reply tipped the step over: it goes, the others wait for the next
                # one
                else:
                    st.buffer.pop()
                    self.fail(
                        node,
                        "reply rejected: adding it to the buffered step would make "
                        "the model non-finite",
                    )
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                client = {k: st.snapshot(flight.version)[k] + delta[k] for k in delta}
                mixed = mix(st.arrays, client, self.settings.alpha * rate)
            if _finite(mixed):
                st.advance(mixed)
            else:
                self.fail(
                    node, "reply rejected: applying it would make the model non-finite"
                )

    def scale(self, reply: Message, tau: int, node: int) -> tuple[float, float]:
        """The update's rate scale and the scale the server mixes with (see the module
        docstring).

        The server's rule always sees ``tau`` (its window stays current for fallbacks).
        """
        server_scale = self.policy(tau, node)
        if not self.learner_side:
            return server_scale, server_scale
        reported, problem = reported_scale(reply, self.max_scale)
        if reported is None:
            self.state.fallback(f"node {node}: {problem}")
            level = logging.WARNING if len(self.state.fallbacks) == 1 else logging.DEBUG
            log(
                level,
                "async: node %s: %s; the server-side rule applies (scale %.3g)",
                node,
                problem,
                server_scale,
            )
            return server_scale, server_scale
        return reported, (1.0 if self.settings.learner_rate == "local" else reported)


def _finite(arrays: dict[str, np.ndarray]) -> bool:
    """Whether every float array holds only finite values (a model worth installing)."""
    return all(
        a.dtype.kind not in "fc" or bool(np.isfinite(a).all()) for a in arrays.values()
    )
