"""Per-round reports that strategies hand to the run recorder (``round_report()``).

A strategy (or wrapper) may expose ``round_report() -> dict``; the simulation runner
merges it into that round's ``metrics.jsonl`` line. ``clients_dropped`` counts replies
that arrived but were rejected (they are moved from ``clients_ok`` to
``clients_failed``); wrappers add their own count to their inner strategy's with
:func:`merge_reports`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.logger import log

from bouquet.strategies.hooks import RoundReporter

CLIENTS_DROPPED = "clients_dropped"
DROP_REASONS = "drop_reasons"
MAX_REASON_CHARS = (
    300  # a drop reason (and its log line) is cut to this size, whatever a reply holds
)


def truncate_reason(reason: str) -> str:
    """``reason`` cut to :data:`MAX_REASON_CHARS` characters (a reply's names and values
    can be
    any size; the log and ``metrics.jsonl`` must not be)."""
    return (
        reason
        if len(reason) <= MAX_REASON_CHARS
        else reason[: MAX_REASON_CHARS - 12] + "... (cut)"
    )


def record_drop(owner: str, node: object, reason: str, dropped: list[str]) -> None:
    """Log at WARNING (Flower's logger) that ``owner`` drops the reply of ``node`` and
    why, and add ``"node <node>: <reason>"`` to ``dropped`` (the reason cut by
    :func:`truncate_reason`)."""
    reason = truncate_reason(reason)
    log(logging.WARNING, "%s: dropping reply from node %s: %s", owner, node, reason)
    dropped.append(f"node {node}: {reason}")


def exception_reason(exc: BaseException) -> str:
    """Why one reply was dropped, from the exception its handling raised: a
    ``ValueError``'s message (the checks name what is wrong), else the exception's type
    and message; cut by :func:`truncate_reason`."""
    return truncate_reason(
        str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    )


def inner_report(strategy: object) -> dict[str, Any]:
    """The ``round_report()`` of ``strategy``, or ``{}`` if it offers none
    (:class:`~bouquet.strategies.hooks.RoundReporter`)."""
    return dict(strategy.round_report()) if isinstance(strategy, RoundReporter) else {}


def merge_reports(*reports: dict[str, Any]) -> dict[str, Any]:
    """Merge reports: ``clients_dropped`` is summed, ``drop_reasons`` concatenated, the
    rest
    updated left to right."""
    out: dict[str, Any] = {}
    dropped = 0
    reasons: list[str] = []
    for rep in reports:
        for key, value in rep.items():
            if key == CLIENTS_DROPPED:
                dropped += int(value)
            elif key == DROP_REASONS:
                reasons.extend(value)
            else:
                out[key] = value
    if dropped:
        out[CLIENTS_DROPPED] = dropped
    if reasons:
        out[DROP_REASONS] = reasons
    return out


BYTES_UP = "bouquet-bytes-up"  # payload bytes of the round's replies (Array.data)
DENSE_BYTES = (
    "bouquet-dense-bytes"  # what the same replies would have been as dense float arrays
)
DROPPED = "bouquet-dropped"  # replies dropped by Compressed this round


def payload_bytes(
    replies: list[Message], reference: dict[str, np.ndarray] | None
) -> tuple[int, int]:
    """(bytes of every array of the non-error replies, bytes of the same arrays sent
    dense;
    without ``reference``, the replies' own bytes)."""
    received = dense = 0
    per_reply = (
        None
        if reference is None
        else sum(int(ref.nbytes) for ref in reference.values())
    )
    for msg in replies:
        if msg.has_error():
            continue
        got = sum(
            len(a.data)
            for rec in msg.content.array_records.values()
            for a in rec.values()
            if isinstance(a.data, bytes)
        )
        received += got
        dense += got if per_reply is None else per_reply
    return received, dense
