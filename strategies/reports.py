"""Per-round reports that strategies hand to the run recorder (``round_report()``).

A strategy (or wrapper) may expose ``round_report() -> dict``; the simulation runner merges it
into that round's ``metrics.jsonl`` line. ``clients_dropped`` counts replies that arrived but
were rejected (they are moved from ``clients_ok`` to ``clients_failed``); wrappers add their own
count to their inner strategy's with :func:`merge_reports`.
"""

from __future__ import annotations

from typing import Any

CLIENTS_DROPPED = "clients_dropped"
DROP_REASONS = "drop_reasons"


def inner_report(strategy: object) -> dict[str, Any]:
    """The ``round_report()`` of ``strategy``, or ``{}`` if it has none."""
    report = getattr(strategy, "round_report", None)
    return dict(report()) if callable(report) else {}


def merge_reports(*reports: dict[str, Any]) -> dict[str, Any]:
    """Merge reports: ``clients_dropped`` is summed, ``drop_reasons`` concatenated, the rest
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
