"""Bookkeeping of the asynchronous loop (:mod:`~bouquet.strategies.async_fedavg`).

:class:`AsyncState` holds the global model and its version, snapshots of the versions
still in flight, the messages in flight
(:class:`~bouquet.strategies.async_messages.InFlight`), the per-node counters and the
staleness statistics of each report.

:meth:`AsyncState.state_dict` / :meth:`AsyncState.restore` are what a checkpoint of an
asynchronous run holds besides the model: the version, the counters, the per-node values
the learner-side window is sent, FedBuff's partial buffer and the plateau history.
Messages in flight are not saved: a resumed run sends every node the current model
again. :func:`split_state` takes apart an
:class:`~bouquet.strategies.async_fedavg.AsyncFedAvg` state.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord

from bouquet.strategies.async_messages import InFlight
from bouquet.strategies.async_rules import Arrays
from bouquet.strategies.reports import CLIENTS_DROPPED
from bouquet.strategies.reports import DROP_REASONS
from bouquet.strategies.staleness import StalenessPolicy


class AsyncState:
    """Global model, its version, snapshots of versions still in flight, and
    counters."""

    def __init__(self) -> None:
        self.arrays: Arrays = {}
        self.version = 0
        self.updates = 0
        self.updates_since_eval = 0
        self.budget = 0
        self.nodes = (
            0  # nodes at the start of the run (the default budget and plateau window)
        )
        self.checkpointed = 0  # updates at the last checkpoint
        self.plateau_window = 0
        self.snapshots: dict[int, Arrays] = {}
        self.inflight: dict[str, InFlight] = {}
        self.tasks: dict[int, int] = {}
        self.failures: dict[int, int] = {}
        self.excluded: set[int] = set()
        self.buffer: list[tuple[Arrays, float]] = []
        self.history: list[float] = []
        self.applied_versions: list[int] = []
        self.staleness_log: list[int] = []
        self.scale_log: list[float] = []
        self.dropped: list[str] = []
        self.node_staleness: dict[int, int] = {}
        self.node_applied: dict[int, int] = {}
        self.fallbacks: list[str] = []
        self.period_fallbacks = 0
        self.period_staleness: list[int] = []
        self.period_scales: list[float] = []
        self.period_dropped: list[str] = []
        self.period_log: list[list[Any]] = []
        self.stop_reason: str | None = None
        self.t_start = time.monotonic()
        self._record: ArrayRecord | None = None

    def reset(self, arrays: Arrays) -> None:
        """Start at version 0 with ``arrays``."""
        self.__init__()  # type: ignore[misc]
        self.arrays = arrays
        self.snapshots = {0: arrays}

    def record(self) -> ArrayRecord:
        """The current model as an ``ArrayRecord`` (built once per version)."""
        if self._record is None:
            self._record = ArrayRecord(
                {k: Array(np.asarray(v)) for k, v in self.arrays.items()}
            )
        return self._record

    def snapshot(self, version: int) -> Arrays:
        """The model at ``version`` (kept while a message sent with it is in flight)."""
        if version not in self.snapshots:
            raise ValueError(
                f"model version {version} is not kept (current {self.version})"
            )
        return self.snapshots[version]

    def send(self, message_id: str, flight: InFlight) -> None:
        self.inflight[message_id] = flight

    def receive(self, message_id: str) -> InFlight:
        """Remove and return the in-flight entry of ``message_id``."""
        return self.inflight.pop(message_id)

    def accept(self, staleness: int, scale: float, node_id: int | None = None) -> None:
        """Count an accepted update of this staleness and scale (from ``node_id``, if
        known)."""
        if node_id is not None:
            self.node_staleness[node_id] = int(staleness)
            self.node_applied[node_id] = self.node_applied.get(node_id, 0) + 1
        self.updates += 1
        self.updates_since_eval += 1
        self.staleness_log.append(int(staleness))
        self.scale_log.append(float(scale))
        self.period_staleness.append(int(staleness))
        self.period_scales.append(float(scale))
        self.period_log.append([node_id, int(staleness), float(scale)])

    def fallback(self, reason: str) -> None:
        """Count a learner-reported scale that could not be used (the server's rule
        was)."""
        self.fallbacks.append(reason)
        self.period_fallbacks += 1

    def drop(self, reason: str) -> None:
        """Count a reply that arrived but was rejected."""
        self.dropped.append(reason)
        self.period_dropped.append(reason)

    def report(self, learner_side: bool) -> dict[str, Any]:
        """Staleness statistics and dropped replies since the previous report (then
        reset)."""
        st = self
        taus, scales = st.period_staleness, st.period_scales
        report: dict[str, Any] = {
            "version": st.version,
            "staleness_mean": float(np.mean(taus)) if taus else None,
            "staleness_max": int(max(taus)) if taus else None,
            "lr_scale": float(np.mean(scales)) if scales else None,
            "update_log": list(st.period_log),
            CLIENTS_DROPPED: len(st.period_dropped),
            DROP_REASONS: list(st.period_dropped),
        }
        if learner_side:
            report["lr_scale_fallbacks"] = st.period_fallbacks
        if st.stop_reason:
            report["stop_reason"] = st.stop_reason
        (
            st.period_staleness,
            st.period_scales,
            st.period_dropped,
            st.period_fallbacks,
        ) = [], [], [], 0
        st.period_log = []
        return report

    # Counters a checkpoint holds (see the module docstring), restored as they were.
    SAVED = (
        "version",
        "updates",
        "updates_since_eval",
        "nodes",
        "checkpointed",
        "tasks",
        "failures",
        "history",
        "applied_versions",
        "staleness_log",
        "scale_log",
        "dropped",
        "node_staleness",
        "node_applied",
        "fallbacks",
        "period_fallbacks",
        "period_staleness",
        "period_scales",
        "period_dropped",
        "period_log",
    )

    def state_dict(self) -> dict[str, Any]:
        """The run's state as plain data, without the model (see the module
        docstring)."""
        state: dict[str, Any] = {
            name: copy.deepcopy(getattr(self, name)) for name in self.SAVED
        }
        state["excluded"] = sorted(self.excluded)
        state["buffer"] = [
            [{k: v.copy() for k, v in delta.items()}, float(rate)]
            for delta, rate in self.buffer
        ]
        state["elapsed_s"] = time.monotonic() - self.t_start
        return state

    def restore(self, state: Mapping[str, Any], arrays: Arrays) -> None:
        """Continue from :meth:`state_dict` with ``arrays`` as the model at its
        version."""
        missing = [
            k
            for k in (*self.SAVED, "excluded", "buffer", "elapsed_s")
            if k not in state
        ]
        if missing:
            raise ValueError(f"async checkpoint state lacks {', '.join(missing)}")
        self.reset(arrays)
        for name in self.SAVED:
            setattr(self, name, copy.deepcopy(state[name]))
        self.excluded = set(state["excluded"])
        self.buffer = [(dict(delta), float(rate)) for delta, rate in state["buffer"]]
        self.snapshots = {self.version: arrays}
        self.t_start = time.monotonic() - float(state["elapsed_s"])

    def absent_nodes(self, nodes: list[int]) -> tuple[int, int]:
        """(how many of the nodes this state has values for are not in ``nodes``, how
        many it has)."""
        known = set(self.node_applied) | set(self.tasks)
        return len(known - set(nodes)), len(known)

    def flight(self, node: int, version: int, learner_side: bool) -> InFlight:
        """The in-flight entry of a message to ``node`` now (with the learner-side
        window's sample)."""
        if not learner_side:
            return InFlight(node_id=node, version=version, sent_at=time.monotonic())
        applied = self.node_applied.get(node, 0)
        prev = self.node_staleness.get(node) if applied else None
        return InFlight(
            node_id=node,
            version=version,
            sent_at=time.monotonic(),
            prev_staleness=prev,
            applied=applied,
        )

    def advance(self, arrays: Arrays) -> None:
        """Install a new global model (next version); drop snapshots nobody waits
        for."""
        self.arrays = arrays
        self.version += 1
        self.applied_versions.append(self.version)
        self._record = None
        self.snapshots[self.version] = arrays
        needed = {f.version for f in self.inflight.values()} | {self.version}
        for v in [v for v in self.snapshots if v not in needed]:
            del self.snapshots[v]


def join_state(state: AsyncState, policy: StalenessPolicy) -> dict[str, Any]:
    """An :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg` ``state_dict()``: the
    run's state and the policy's, as plain data (what :func:`split_state` parts)."""
    return {
        "run": state.state_dict(),
        "policy": {"name": policy.name, **policy.state_dict()},
    }


def split_state(state: Any, policy_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run state, policy state) of an
    :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg`
    ``state_dict()``; ``ValueError`` if it is not one, or of another policy."""
    if not isinstance(state, dict) or set(state) != {"run", "policy"}:
        raise ValueError(
            "not an AsyncFedAvg state: keys "
            f"{sorted(state) if isinstance(state, dict) else type(state).__name__}"
        )
    policy = dict(state["policy"])
    name = policy.pop("name", None)
    if name != policy_name:
        raise ValueError(
            f"the checkpoint's policy is {name!r}, this strategy's {policy_name!r}"
        )
    return dict(state["run"]), policy
