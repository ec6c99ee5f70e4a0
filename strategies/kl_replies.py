"""The replies of :class:`~bouquet.strategies.kl_weighted.KLWeightedFedAvg`.

:func:`usable_replies` keeps the replies fit for FedAvg's machinery (one ArrayRecord, a
usable weight, the most common set of array names) and says why the others were
dropped; :func:`reply_metrics` is a reply's single MetricRecord; :func:`reweighted`
rebuilds a reply around its KL weight; :func:`kl_report` and :func:`kl_facts` are the
``kl_*`` entries of a round's report. The weights themselves:
:mod:`bouquet.strategies.kl_math`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict

from bouquet import keys
from bouquet.strategies.reports import truncate_reason
from bouquet.strategies.screening import node_label
from bouquet.strategies.screening import reply_weight


def single_metrics(msg: Message) -> MetricRecord | None:
    """The reply's MetricRecord if it has exactly one, else ``None``."""
    records = msg.content.metric_records
    return next(iter(records.values())) if len(records) == 1 else None


def reply_metrics(msg: Message) -> MetricRecord:
    """The single MetricRecord of a reply that :func:`usable_replies` accepted."""
    record = single_metrics(msg)
    if record is None:
        raise ValueError(
            f"reply of node {msg.metadata.src_node_id} has no single MetricRecord"
        )
    return record


def usable_replies(
    replies: list[Message], weight_key: str
) -> tuple[list[Message], list[str]]:
    """Replies fit for FedAvg's machinery, and why the others were dropped."""
    dropped: list[str] = []
    ok: list[Message] = []
    for msg in replies:
        if len(msg.content.array_records) != 1:
            dropped.append(f"node {node_label(msg)}: expected one ArrayRecord")
            continue
        try:
            reply_weight(msg.content, weight_key)
        except ValueError as exc:
            dropped.append(f"node {node_label(msg)}: {truncate_reason(str(exc))}")
            continue
        ok.append(msg)
    if ok:  # array names must agree (Flower raises otherwise): keep the most common set
        names = [
            frozenset(next(iter(m.content.array_records.values())).keys()) for m in ok
        ]
        common = Counter(names).most_common(1)[0][0]
        dropped += [
            f"node {node_label(m)}: array names differ"
            for m, k in zip(ok, names, strict=True)
            if k != common
        ]
        ok = [m for m, k in zip(ok, names, strict=True) if k == common]
    return ok, dropped


def reweighted(
    msg: Message, weight_key: str, weight: float, scalar_keys: set[str]
) -> Message:
    """A reply holding only its arrays and a MetricRecord of ``scalar_keys`` with
    ``weight_key`` set to ``weight`` (the KL weight FedAvg's machinery then uses)."""
    metrics = reply_metrics(msg)
    record = MetricRecord({k: metrics[k] for k in scalar_keys})
    record[weight_key] = float(weight)
    content = RecordDict(
        {
            keys.ARRAYS: next(iter(msg.content.array_records.values())),
            keys.METRICS: record,
        }
    )
    return Message(metadata=msg.metadata, content=content)  # type: ignore[call-overload]  # Flower's reply constructor


def kl_report(bad_histograms: int) -> dict[str, Any]:
    """The ``kl_*`` entries of a round's report before any weight is known."""
    return {
        "kl_bad_histograms": bad_histograms,
        "kl_node_ids": [],
        "kl_weights": [],
        "kl_div": [],
        "kl_reference": None,
    }


def kl_facts(
    replies: Sequence[Message],
    weights: np.ndarray,
    div: np.ndarray,
    q: np.ndarray | None,
) -> dict[str, Any]:
    """The round's ``kl_node_ids``, ``kl_weights`` (normalised), ``kl_div`` (``None``
    for a fallback reply) and ``kl_reference`` (:math:`Q`), as plain data."""
    return {
        "kl_node_ids": [int(m.metadata.src_node_id) for m in replies],
        "kl_weights": [float(w) for w in weights],
        "kl_div": [None if not math.isfinite(d) else float(d) for d in div],
        "kl_reference": None if q is None else [float(v) for v in q],
    }
