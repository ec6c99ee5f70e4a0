"""Train/evaluate metric aggregation for Flower strategies that leaves lists out.

Flower's default ``train_metrics_aggr_fn`` averages every metric it finds, lists
included, so a ``label-histogram`` (counts per class) comes out as meaningless floats in
Flower's log line. :func:`scalar_metrics_mean` is a drop-in ``train_metrics_aggr_fn`` /
``evaluate_metrics_aggr_fn`` (``FedAvg(train_metrics_aggr_fn=scalar_metrics_mean)``):
the weighted mean of the scalar metrics, with the same weights as Flower's (the
``weighted_by_key`` metric), and nothing for list-valued ones.
"""

from __future__ import annotations

from flwr.app import MetricRecord
from flwr.app import RecordDict


def scalar_metrics_mean(
    records: list[RecordDict], weighting_metric_name: str
) -> MetricRecord:
    """Weighted mean of every scalar metric present in all replies; list metrics are
    left out."""
    metrics = [
        next(iter(r.metric_records.values())) for r in records if r.metric_records
    ]
    if not metrics:
        return MetricRecord()
    weights = [float(m[weighting_metric_name]) for m in metrics]  # type: ignore[arg-type]
    total = sum(weights)
    keys = set.intersection(
        *[{k for k, v in m.items() if not isinstance(v, list)} for m in metrics]
    )
    keys.discard(weighting_metric_name)
    if total <= 0:
        return MetricRecord()
    means: dict[str, float] = {}
    for k in sorted(keys):
        acc = 0.0
        for w, m in zip(weights, metrics, strict=True):
            acc += w * float(m[k])  # type: ignore[arg-type]
        means[k] = acc / total
    return MetricRecord(means)  # type: ignore[arg-type]
