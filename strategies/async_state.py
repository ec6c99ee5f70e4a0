"""Bookkeeping and update rules of the asynchronous loop (:mod:`~bouquet.strategies.async_fedavg`).

Model versions, in-flight messages and staleness statistics (:class:`AsyncState`), the pure
update rules :func:`mix` (FedAsync, Xie et al. 2019) and :func:`buffered_step` (FedBuff,
Nguyen et al. 2022), the convergence test :func:`plateaued`, the reply checks
:func:`reply_update` (payload and echoes) and :func:`reported_scale` (the learning-rate scale a
learner reports with the learner-side sliding window, bounded to :math:`[0, s_{max}]`).

:meth:`AsyncState.state_dict` / :meth:`AsyncState.restore` are what a checkpoint of an
asynchronous run holds besides the model: the version, the counters, the per-node values the
learner-side window is sent, FedBuff's partial buffer and the plateau history. Messages in flight
are not saved: a resumed run sends every node the current model again.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from bouquet import keys
from bouquet.strategies.decoding import dense_view
from bouquet.strategies.guard import DENSE_STYPE, check_dense_reply
from bouquet.strategies.reports import CLIENTS_DROPPED, DROP_REASONS

Arrays = dict[str, np.ndarray]
Decoder = Callable[[ArrayRecord, Arrays], Arrays]


@dataclass(frozen=True)
class InFlight:
    """A train message waiting for its reply: destination, model version sent, send time.

    ``prev_staleness`` and ``applied`` are the learner-side window values the message carried
    (``None``: not sent); a reply must echo them unchanged or not at all.
    """

    node_id: int
    version: int
    sent_at: float
    prev_staleness: int | None = None
    applied: int | None = None

    def echo(self) -> dict[str, int | None]:
        """The values a reply may echo, by key (``None``: the message carried none)."""
        return {keys.MODEL_VERSION: self.version, keys.PREV_STALENESS: self.prev_staleness, keys.APPLIED_UPDATES: self.applied}


PLATEAU_MIN_EVALUATIONS = 5  # the default plateau window: at least this many evaluations ...
PLATEAU_UPDATES_PER_NODE = 5  # ... and at least this many updates per node


def plateau_evaluations(window: int | None, num_nodes: int, eval_every: int) -> int:
    """Evaluations without gain after which the run stops (``0``: never).

    ``window`` if set, else the default
    :math:`\\max(5, \\lceil 5 N / E \\rceil)` for :math:`N` nodes evaluated every :math:`E`
    updates: at least 5 evaluations and at least 5 updates per node (five rounds' worth of
    client work) without a gain.
    """
    if window is not None:
        return int(window)
    per_node = math.ceil(PLATEAU_UPDATES_PER_NODE * max(1, num_nodes) / max(1, eval_every))
    return max(PLATEAU_MIN_EVALUATIONS, per_node)


def plateaued(history: list[float], window: int, min_delta: float, mode: str = "max") -> bool:
    """Whether the metric stopped improving.

    True when ``window > 0``, there are more than ``window`` values, and the best of the last
    ``window`` values is not better than the best before them by at least ``min_delta``
    (``mode="max"``: higher is better, e.g. accuracy; ``"min"``: lower is better, e.g. loss).
    """
    if window <= 0 or len(history) <= window:
        return False
    before, recent = history[:-window], history[-window:]
    if mode == "max":
        return max(recent) - max(before) < min_delta
    if mode == "min":
        return min(before) - min(recent) < min_delta
    raise ValueError(f"mode={mode!r} is unknown; allowed: max, min")


def mix(current: Arrays, client: Arrays, rate: float) -> Arrays:
    """FedAsync mixing :math:`(1 - r) x + r y` per array."""
    return {k: (current[k] + rate * (client[k].astype(current[k].dtype) - current[k])).astype(current[k].dtype) for k in current}


def buffered_step(current: Arrays, deltas: list[Arrays], scales: list[float], server_lr: float) -> Arrays:
    """FedBuff step :math:`x + \\eta_g \\frac{1}{K} \\sum_i s_i \\Delta_i`."""
    if not deltas:
        return current
    out = {}
    for k, v in current.items():
        acc = np.zeros_like(v, dtype=np.float64)
        for d, s in zip(deltas, scales, strict=True):
            acc += s * d[k]
        out[k] = (v + server_lr * acc / len(deltas)).astype(v.dtype)
    return out


def _reply_metrics(reply: Message) -> Mapping[str, object]:
    """The reply's only ``MetricRecord`` (empty if it has none or several)."""
    metrics = list(reply.content.metric_records.values())
    return metrics[0] if len(metrics) == 1 else {}


def check_echo(reply: Message, sent: Mapping[str, int | None]) -> str | None:
    """Why the values the reply echoes differ from those its message carried (``None``: they match).

    ``sent`` maps each echoed key (``model-version``, ``prev-staleness``, ``applied-updates``) to
    the value sent, or ``None`` when the message carried none: then any echo is a mismatch. A key
    the reply does not echo is not checked.
    """
    metrics = _reply_metrics(reply)
    for key, value in sent.items():
        echoed = metrics.get(key)
        if echoed is None:
            continue
        if value is None:
            return f"echoed {key.replace('-', ' ')} {echoed!r} but the message carried none"
        if isinstance(echoed, bool) or not isinstance(echoed, (int, float)) or echoed != value:
            return f"echoed {key.replace('-', ' ')} {echoed!r} != sent {value}"
    return None


def reported_scale(reply: Message, max_scale: float) -> tuple[float | None, str | None]:
    """The learning-rate scale the learner reports (``lr-scale``), bounded to ``[0, max_scale]``.

    Returns ``(scale, None)``, or ``(None, reason)`` when it is missing, not a number, not
    finite, negative or above ``max_scale`` (the caller falls back to the server-side rule).
    """
    value = _reply_metrics(reply).get(keys.LR_SCALE)
    if value is None:
        return None, f"no {keys.LR_SCALE} in the reply"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"{keys.LR_SCALE}={value!r} is not a number"
    if not math.isfinite(value) or not 0.0 <= value <= max_scale:
        return None, f"{keys.LR_SCALE}={value!r} is outside [0, {max_scale}]"
    return float(value), None


def reply_update(
    reply: Message,
    base: Arrays,
    sent_version: int,
    decoder: Decoder | None = None,
    echo: Mapping[str, int | None] | None = None,
) -> tuple[Arrays, str | None]:
    """The update :math:`\\Delta` a train reply carries against ``base`` (the model sent).

    Dense replies hold the client's full weights (:math:`\\Delta = y - x_{v_c}`, checked by
    :func:`~bouquet.strategies.guard.check_dense_reply`); compressed ones (a non-dense
    ``stype``) hold the encoded update, decoded by ``decoder`` (default: bouquet's codecs).
    The echoed ``model-version`` must be ``sent_version``, and every other echo the value in
    ``echo`` (:func:`check_echo`). Returns ``(delta, None)``, or ``({}, reason)`` when the reply
    is unusable.
    """
    mismatch = check_echo(reply, {**(echo or {}), keys.MODEL_VERSION: sent_version})
    if mismatch is not None:
        return {}, mismatch
    records = list(reply.content.array_records.values())
    if len(records) == 1 and any(a.stype != DENSE_STYPE for a in records[0].values()):
        decoder = decoder or _default_decoder()
        if decoder is None:
            return {}, "compressed reply but no decoder configured"
        try:
            delta = decoder(records[0], base)
        except Exception as exc:  # noqa: BLE001 - any failure of one reply is that reply's rejection
            return {}, f"cannot decode: {exc if isinstance(exc, ValueError) else repr(exc)}"
        bad = [k for k in base if k not in delta or delta[k].shape != base[k].shape or not np.all(np.isfinite(delta[k]))]
        return delta, (f"decoded update unusable for {bad[:3]}" if bad else None)
    reason = check_dense_reply(reply, base)
    if reason is not None:
        return {}, reason
    return {k: dense_view(records[0][k]) - base[k] for k in base}, None


def _default_decoder() -> Decoder | None:
    """bouquet's codec decoder (:func:`bouquet.strategies.compressed.decode_update`), if present."""
    try:
        from bouquet.strategies.compressed import decode_update
    except ImportError:
        return None
    return decode_update


class AsyncState:
    """Global model, its version, snapshots of versions still in flight, and counters."""

    def __init__(self) -> None:
        self.arrays: Arrays = {}
        self.version = 0
        self.updates = 0
        self.updates_since_eval = 0
        self.budget = 0
        self.nodes = 0  # nodes at the start of the run (the default budget and plateau window)
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
            self._record = ArrayRecord({k: Array(np.asarray(v)) for k, v in self.arrays.items()})
        return self._record

    def snapshot(self, version: int) -> Arrays:
        """The model at ``version`` (kept while a message sent with it is in flight)."""
        if version not in self.snapshots:
            raise ValueError(f"model version {version} is not kept (current {self.version})")
        return self.snapshots[version]

    def send(self, message_id: str, flight: InFlight) -> None:
        self.inflight[message_id] = flight

    def receive(self, message_id: str) -> InFlight:
        """Remove and return the in-flight entry of ``message_id``."""
        return self.inflight.pop(message_id)

    def accept(self, staleness: int, scale: float, node_id: int | None = None) -> None:
        """Count an accepted update of this staleness and scale (from ``node_id``, if known)."""
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
        """Count a learner-reported scale that could not be used (the server's rule was)."""
        self.fallbacks.append(reason)
        self.period_fallbacks += 1

    def drop(self, reason: str) -> None:
        """Count a reply that arrived but was rejected."""
        self.dropped.append(reason)
        self.period_dropped.append(reason)

    def report(self, learner_side: bool) -> dict[str, Any]:
        """Staleness statistics and dropped replies since the previous report (then reset)."""
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
        st.period_staleness, st.period_scales, st.period_dropped, st.period_fallbacks = [], [], [], 0
        st.period_log = []
        return report

    # Counters a checkpoint holds (see the module docstring), restored as they were.
    SAVED = (
        "version", "updates", "updates_since_eval", "nodes", "checkpointed", "tasks", "failures", "history",
        "applied_versions", "staleness_log", "scale_log", "dropped", "node_staleness", "node_applied", "fallbacks",
        "period_fallbacks", "period_staleness", "period_scales", "period_dropped", "period_log",
    )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The run's state as plain data, without the model (see the module docstring)."""
        state: dict[str, Any] = {name: copy.deepcopy(getattr(self, name)) for name in self.SAVED}
        state["excluded"] = sorted(self.excluded)
        state["buffer"] = [[{k: v.copy() for k, v in delta.items()}, float(rate)] for delta, rate in self.buffer]
        state["elapsed_s"] = time.monotonic() - self.t_start
        return state

    def restore(self, state: Mapping[str, Any], arrays: Arrays) -> None:
        """Continue from :meth:`state_dict` with ``arrays`` as the model at its version."""
        missing = [k for k in (*self.SAVED, "excluded", "buffer", "elapsed_s") if k not in state]
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
        """(how many of the nodes this state has values for are not in ``nodes``, how many it has)."""
        known = set(self.node_applied) | set(self.tasks)
        return len(known - set(nodes)), len(known)

    def flight(self, node: int, version: int, learner_side: bool) -> InFlight:
        """The in-flight entry of a message to ``node`` now (with the learner-side window's sample)."""
        if not learner_side:
            return InFlight(node_id=node, version=version, sent_at=time.monotonic())
        applied = self.node_applied.get(node, 0)
        prev = self.node_staleness.get(node) if applied else None
        return InFlight(node_id=node, version=version, sent_at=time.monotonic(), prev_staleness=prev, applied=applied)

    def advance(self, arrays: Arrays) -> None:
        """Install a new global model (next version); drop snapshots nobody waits for."""
        self.arrays = arrays
        self.version += 1
        self.applied_versions.append(self.version)
        self._record = None
        self.snapshots[self.version] = arrays
        needed = {f.version for f in self.inflight.values()} | {self.version}
        for v in [v for v in self.snapshots if v not in needed]:
            del self.snapshots[v]


def split_state(state: Any, policy_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run state, policy state) of an :class:`~bouquet.strategies.async_fedavg.AsyncFedAvg`
    ``state_dict()``; ``ValueError`` if it is not one, or of another policy."""
    if not isinstance(state, dict) or set(state) != {"run", "policy"}:
        raise ValueError(f"not an AsyncFedAvg state: keys {sorted(state) if isinstance(state, dict) else type(state).__name__}")
    policy = dict(state["policy"])
    name = policy.pop("name", None)
    if name != policy_name:
        raise ValueError(f"the checkpoint's policy is {name!r}, this strategy's {policy_name!r}")
    return dict(state["run"]), policy


WINDOW_SIDES = ("learner", "server")  # where the sliding window lives (policy=sliding_window)
LEARNER_RATES = ("both", "local", "server")  # where a learner-reported scale acts


def check_settings(*, alpha: float, max_updates: int | None, max_wall_s: float | None, reply_timeout_s: float | None,
                   eval_every: int, plateau_window: int | None, plateau_min_delta: float, plateau_mode: str,
                   window_side: str, learner_rate: str, max_node_failures: int) -> None:
    """``ValueError`` naming the first impossible :class:`AsyncFedAvg` setting."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in (0, 1]")
    for name, value in (("max_updates", max_updates), ("max_wall_s", max_wall_s), ("reply_timeout_s", reply_timeout_s)):
        if value is not None and not value > 0:
            raise ValueError(f"{name}={value} must be > 0 or null")
    if int(eval_every) < 1:
        raise ValueError(f"eval_every={eval_every} must be >= 1")
    if plateau_window is not None and int(plateau_window) < 0:
        raise ValueError(f"plateau_window={plateau_window} must be >= 0 (0 = off) or None (the default window)")
    if not 0.0 <= plateau_min_delta < float("inf"):
        raise ValueError(f"plateau_min_delta={plateau_min_delta} must be a finite number >= 0")
    if plateau_mode not in ("max", "min"):
        raise ValueError(f"plateau_mode={plateau_mode!r} is unknown; allowed: max, min")
    if window_side not in WINDOW_SIDES:
        raise ValueError(f"window_side={window_side!r} is unknown; allowed: {', '.join(WINDOW_SIDES)}")
    if learner_rate not in LEARNER_RATES:
        raise ValueError(f"learner_rate={learner_rate!r} is unknown; allowed: {', '.join(LEARNER_RATES)}")
    if int(max_node_failures) < 1:
        raise ValueError(f"max_node_failures={max_node_failures} must be >= 1")


def train_message(node: int, arrays: ArrayRecord, version: int, config: ConfigRecord, task: int,
                  flight: InFlight | None = None) -> Message:
    """The train message for ``node``: the model, its version, the node's task counter and, for
    the learner-side window, the sample of its previous applied update."""
    cfg = ConfigRecord(dict(config))
    cfg[keys.MODEL_VERSION] = int(version)
    cfg[keys.SERVER_ROUND] = int(task)  # the node's task counter (seeds its local shuffling)
    if flight is not None and flight.applied is not None:  # the learner-side window's sample
        cfg[keys.APPLIED_UPDATES] = flight.applied
        if flight.prev_staleness is not None:
            cfg[keys.PREV_STALENESS] = flight.prev_staleness
    content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: cfg})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
