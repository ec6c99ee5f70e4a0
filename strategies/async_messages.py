"""The messages of the asynchronous loop (:mod:`~bouquet.strategies.async_fedavg`).

What a node is sent and what its reply must hold: :func:`train_message` builds a train
message (the model, its version, the node's task counter and, with the learner-side
sliding window, the window values :math:`k` and :math:`\\tau_k`); :class:`InFlight`
remembers what a message carried until its reply arrives. A reply is checked by
:func:`check_echo` (the values it echoes must be those sent), :func:`reported_scale`
(the learning-rate scale a learner reports, bounded to :math:`[0, s_{max}]`) and
:func:`reply_update` (the update :math:`\\Delta` it carries, dense or decoded, finite
and of the model's shapes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import RecordDict

from bouquet import keys
from bouquet.strategies.async_rules import Arrays
from bouquet.strategies.decoding import DENSE_STYPE
from bouquet.strategies.decoding import decode_update
from bouquet.strategies.decoding import dense_view
from bouquet.strategies.dense_checks import check_dense_reply

Decoder = Callable[[ArrayRecord, Arrays], Arrays]


@dataclass(frozen=True)
class InFlight:
    """A train message waiting for its reply: destination, model version sent, send
    time.

    ``prev_staleness`` and ``applied`` are the learner-side window values the message
    carried (``None``: not sent); a reply must echo them unchanged or not at all.
    """

    node_id: int
    version: int
    sent_at: float
    prev_staleness: int | None = None
    applied: int | None = None

    def echo(self) -> dict[str, int | None]:
        """The values a reply may echo, by key (``None``: the message carried none)."""
        return {
            keys.MODEL_VERSION: self.version,
            keys.PREV_STALENESS: self.prev_staleness,
            keys.APPLIED_UPDATES: self.applied,
        }


def train_message(
    node: int,
    arrays: ArrayRecord,
    version: int,
    config: ConfigRecord,
    task: int,
    flight: InFlight | None = None,
) -> Message:
    """The train message for ``node``: the model, its version, the node's task counter
    and, for
    the learner-side window, the sample of its previous applied update."""
    cfg = ConfigRecord(dict(config))
    cfg[keys.MODEL_VERSION] = int(version)
    # the node's task counter (seeds its local shuffling)
    cfg[keys.SERVER_ROUND] = int(task)
    # the learner-side window's sample
    if flight is not None and flight.applied is not None:
        cfg[keys.APPLIED_UPDATES] = flight.applied
        if flight.prev_staleness is not None:
            cfg[keys.PREV_STALENESS] = flight.prev_staleness
    content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: cfg})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)


def _reply_metrics(reply: Message) -> Mapping[str, object]:
    """The reply's only ``MetricRecord`` (empty if it has none or several)."""
    metrics = list(reply.content.metric_records.values())
    return metrics[0] if len(metrics) == 1 else {}


def check_echo(reply: Message, sent: Mapping[str, int | None]) -> str | None:
    """Why the values the reply echoes differ from those its message carried (``None``:
    they match).

    ``sent`` maps each echoed key (``model-version``, ``prev-staleness``,
    ``applied-updates``) to the value sent, or ``None`` when the message carried none:
    then any echo is a mismatch. A key the reply does not echo is not checked.
    """
    metrics = _reply_metrics(reply)
    for key, value in sent.items():
        echoed = metrics.get(key)
        if echoed is None:
            continue
        if value is None:
            return (
                f"echoed {key.replace('-', ' ')} {echoed!r} but the message carried "
                "none"
            )
        if (
            isinstance(echoed, bool)
            or not isinstance(echoed, (int, float))
            or echoed != value
        ):
            return f"echoed {key.replace('-', ' ')} {echoed!r} != sent {value}"
    return None


def reported_scale(reply: Message, max_scale: float) -> tuple[float | None, str | None]:
    """The learning-rate scale the learner reports (``lr-scale``), bounded to ``[0,
    max_scale]``.

    Returns ``(scale, None)``, or ``(None, reason)`` when it is missing, not a number,
    not finite, negative or above ``max_scale`` (the caller falls back to the
    server-side rule).
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
    """The update :math:`\\Delta` a train reply carries against ``base`` (the model
    sent).

    Dense replies hold the client's full weights (:math:`\\Delta = y - x_{v_c}`, checked
    by :func:`~bouquet.strategies.dense_checks.check_dense_reply`); compressed ones (a
    non-dense ``stype``) hold the encoded update, decoded by ``decoder`` (default:
    :func:`~bouquet.strategies.decoding.decode_update`, bouquet's codecs).
    The echoed ``model-version`` must be ``sent_version``, and every other echo the
    value in ``echo`` (:func:`check_echo`). Returns ``(delta, None)``, or ``({},
    reason)`` when the reply is unusable.
    """
    mismatch = check_echo(reply, {**(echo or {}), keys.MODEL_VERSION: sent_version})
    if mismatch is not None:
        return {}, mismatch
    records = list(reply.content.array_records.values())
    if len(records) == 1 and any(a.stype != DENSE_STYPE for a in records[0].values()):
        decoder = decoder or decode_update
        try:
            delta = decoder(records[0], base)
        except Exception as exc:  # noqa: BLE001 - any failure of one reply is that reply's rejection
            return (
                {},
                f"cannot decode: {exc if isinstance(exc, ValueError) else repr(exc)}",
            )
        bad = [
            k
            for k in base
            if k not in delta
            or delta[k].shape != base[k].shape
            or not np.all(np.isfinite(delta[k]))
        ]
        return delta, (f"decoded update unusable for {bad[:3]}" if bad else None)
    reason = check_dense_reply(reply, base)
    if reason is not None:
        return {}, reason
    return {k: dense_view(records[0][k]) - base[k] for k in base}, None
