"""Checks of a reply's metadata that ``ReplyGuard`` and ``Compressed`` share: who sent
it, its
weight, its metric keys.

Identity (:class:`SentMessages`): a reply is accepted only as the answer to a message
sent in this round's ``configure_train``, from the node that message went to, once. The
wrapper keeps the ``Metadata`` objects of the messages it returned (Flower's grid writes
each message id into them when it pushes the message), so:

* pushed messages (a real run): ``reply_to_message_id`` must name one of them,
  ``src_node_id`` must be that message's ``dst_node_id``, and a second reply to the same
  message is dropped;
* messages never pushed (no ids, e.g. a unit test that calls ``configure_train`` and
  builds the replies itself): ``src_node_id`` must be a node sent a message this round,
  once;
* ``configure_train`` not called on this wrapper (Flower's own strategy tests call
  ``aggregate_train`` alone): nothing is known about what was sent, and identity is not
  checked; everything else is.

Weights (:func:`reply_weight`): a finite real number in :math:`(0, 2^{53}]` (``bool``
and lists refused, a huge integer that does not convert to a float is a reason, not an
``OverflowError``). :func:`normalised` turns weights into shares without overflow.

Metric keys (:func:`shared_metrics`): no reply decides for another. The keys aggregated
are those every accepted reply holds with the same kind (scalar, or list of one length)
and a finite value; a reply holding more keys keeps its weight and arrays and loses only
the extra metrics (logged). The weight key is always kept.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.app.metadata import Metadata
from flwr.common.logger import log

from bouquet.strategies.reports import truncate_reason

# any more "examples" is not a count; the sum of 2**900 such weights is finite
MAX_WEIGHT = float(2**53)


def node_label(msg: Message) -> str:
    """The reply's source node id as text for a log line or a drop reason (bounded)."""
    return str(msg.metadata.src_node_id)[:24]


def reply_weight(content: RecordDict, weight_key: str) -> float:
    """The weight of a reply (``ValueError`` with a bounded reason if it is
    unusable)."""
    if len(content.metric_records) != 1:
        raise ValueError(
            f"expected one MetricRecord, got {len(content.metric_records)}"
        )
    weight = next(iter(content.metric_records.values())).get(weight_key)
    shown = truncate_reason(repr(weight))[:60]
    if weight is None or isinstance(weight, (list, bool, str, bytes)):
        raise ValueError(f"metric {weight_key[:60]!r} missing or not a number")
    try:
        value = float(weight)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(
            f"metric {weight_key[:60]!r}={shown} is not a finite number"
        ) from None
    if not (math.isfinite(value) and 0.0 < value <= MAX_WEIGHT):
        raise ValueError(
            f"metric {weight_key[:60]!r}={shown} must be finite, > 0 and <= 2**53"
        )
    return value


def normalised(weights: Sequence[float]) -> list[float]:
    """``w_i / sum_j w_j`` computed as ``(w_i / max w) / sum_j (w_j / max w)`` (no
    overflow)."""
    if not weights:
        return []
    top = max(weights)
    if not (math.isfinite(top) and top > 0):
        raise ValueError(
            f"weights must be finite with a positive maximum, got max {top}"
        )
    scaled = [w / top for w in weights]
    total = math.fsum(scaled)
    return [s / total for s in scaled]


def _kind(value: Any) -> Any:
    if isinstance(value, list):
        try:
            ok = all(math.isfinite(float(v)) for v in value)
        except (OverflowError, TypeError, ValueError):
            ok = False
        return ("list", len(value)) if ok else None
    try:
        return (
            "scalar"
            if not isinstance(value, bool) and math.isfinite(float(value))
            else None
        )
    except (OverflowError, TypeError, ValueError):
        return None


def shared_metrics(
    replies: list[Message], weight_key: str, where: str
) -> list[Message]:
    """The replies, with each MetricRecord cut to the keys all of them share (module
    docstring).

    A reply whose record already holds exactly those keys is returned as it came (the
    same object); the others are new Messages with the same metadata, arrays and
    configs.
    """
    records = [next(iter(m.content.metric_records.values())) for m in replies]
    if not records:
        return replies
    common = {k: _kind(v) for k, v in records[0].items()}
    for rec in records[1:]:
        common = {
            k: kind for k, kind in common.items() if k in rec and _kind(rec[k]) == kind
        }
    common = {k: kind for k, kind in common.items() if kind is not None}
    common[weight_key] = "scalar"
    if all(set(rec.keys()) == set(common) for rec in records):
        return replies
    left_out = sorted(
        {str(k)[:40] for rec in records for k in rec.keys()} - set(common)
    )
    log(
        logging.WARNING,
        "%s: metric keys %s are not held by every reply with one kind and finite "
        "values; left out "
        "of the aggregated metrics",
        where,
        truncate_reason(str(left_out[:10])),
    )
    out = []
    for msg, rec in zip(replies, records, strict=True):
        if set(rec.keys()) == set(common):
            out.append(msg)
            continue
        content = RecordDict()
        for key, value in msg.content.items():
            content[key] = (
                MetricRecord({k: rec[k] for k in rec.keys() if k in common})
                if value is rec
                else value
            )
        out.append(Message(metadata=msg.metadata, content=content))  # type: ignore[call-overload]
    return out


class SentMessages:
    """What this round's ``configure_train`` sent, to check each reply's identity
    against."""

    def __init__(self) -> None:
        self._sent: list[Metadata] | None = None

    def remember(self, messages: Iterable[Message]) -> list[Message]:
        """Keep the metadata of ``messages`` (the round's train messages) and return
        them."""
        out = list(messages)
        self._sent = [m.metadata for m in out]
        return out

    def forget(self) -> None:
        """Nothing known about what was sent (identity not checked)."""
        self._sent = None

    def screen(
        self, replies: Iterable[Message]
    ) -> tuple[list[Message], list[tuple[Message, str]]]:
        """(replies accepted, [(reply, reason)] dropped); error replies pass
        unchecked."""
        replies = list(replies)
        if self._sent is None:
            return replies, []
        by_id = {
            md.message_id: int(md.dst_node_id) for md in self._sent if md.message_id
        }
        nodes = {int(md.dst_node_id) for md in self._sent}
        seen: set[Any] = set()
        kept: list[Message] = []
        dropped: list[tuple[Message, str]] = []
        for msg in replies:
            if msg.has_error():
                kept.append(msg)
                continue
            reason = None
            src = msg.metadata.src_node_id
            if by_id:
                to = msg.metadata.reply_to_message_id
                if to not in by_id:
                    reason = (
                        f"answers message {truncate_reason(str(to))[:80]!r}, not one "
                        "sent this round"
                    )
                elif by_id[to] != src:
                    reason = (
                        f"answers the message sent to node {by_id[to]}, but comes "
                        f"from node {src}"
                    )
                elif to in seen:
                    reason = "a second reply to the same message"
                else:
                    seen.add(to)
            else:
                if src not in nodes:
                    reason = "its node was sent no message this round"
                elif src in seen:
                    reason = "a second reply from the same node"
                else:
                    seen.add(src)
            if reason is None:
                kept.append(msg)
            else:
                dropped.append((msg, reason))
        return kept, dropped


def majority_layout(
    replies: list[Message],
) -> tuple[list[Message], list[tuple[Message, str]]]:
    """Without global arrays to compare with: (the replies whose array names and shapes
    a strict majority shares, [(reply, reason)] for the others; all of them when no
    layout has one)."""
    layouts = []
    for msg in replies:
        record = next(iter(msg.content.array_records.values()))
        layouts.append(frozenset((n, tuple(a.shape)) for n, a in record.items()))
    if len(set(layouts)) <= 1:
        return replies, []
    common, count = Counter(layouts).most_common(1)[0]
    layout = common if 2 * count > len(replies) else None
    why = (
        "array names or shapes differ from most replies' and there are no global "
        "arrays to compare with "
        "(configure_train was not called)"
    )
    kept = [m for m, other in zip(replies, layouts, strict=True) if other == layout]
    return kept, [
        (m, why) for m, other in zip(replies, layouts, strict=True) if other != layout
    ]
