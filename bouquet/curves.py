"""Per-run curves and traffic, for ``bouquet-sim`` runs and for any Flower app's
``Result``.

``bouquet-sim`` writes ``curves.png`` from its ``metrics.jsonl`` rows. A plain Flower
app that uses bouquet's wrappers has the same figures in the ``Result`` that
``strategy.start()`` returns: ``Compressed`` puts ``bouquet-bytes-up`` into every
round's aggregated train metrics and ``CompressedDownlink`` ``bouquet-bytes-down``
(without it, the broadcast is dense and its bytes are not known to the strategy).
:func:`result_rows` turns a ``Result`` into rows, and :func:`save_result_curves` plots
them::

    result = strategy.start(
        grid=grid, initial_arrays=..., num_rounds=10, evaluate_fn=global_eval
    ) save_result_curves(result, "curves.png")   # accuracy vs round and vs MB up + down
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bouquet import keys
from bouquet.strategies.reports import BYTES_UP

QUALITY = ("accuracy", "rmse", "hr_at_10", "ndcg_at_10")


def result_rows(result: Any) -> list[dict[str, Any]]:
    """One row per round of a Flower ``Result``: ``round``, the server-side evaluation
    metrics, ``bytes_up`` and ``bytes_down`` (None where the strategy did not report
    them)."""
    train = getattr(result, "train_metrics_clientapp", {}) or {}
    evaluated = getattr(result, "evaluate_metrics_serverapp", {}) or {}
    rows = []
    for rnd in sorted(set(train) | set(evaluated)):
        row: dict[str, Any] = {"round": int(rnd)}
        row.update(
            {
                k: float(v)
                for k, v in dict(evaluated.get(rnd, {})).items()
                if isinstance(v, (int, float))
            }
        )
        metrics = dict(train.get(rnd, {}))
        for key, name in ((BYTES_UP, "bytes_up"), (keys.BYTES_DOWN, "bytes_down")):
            value = metrics.get(key)
            row[name] = int(value) if isinstance(value, (int, float)) else None
        rows.append(row)
    return rows


def save_result_curves(result: Any, path: str | Path) -> None:
    """:func:`plot_curves` of :func:`result_rows` (a round without byte counts counts
    0)."""
    plot_curves(result_rows(result), Path(path))


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (or the run's quality metric) vs round, and vs MB up + down
    (cumulative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_key = "round" if rows and "round" in rows[0] else "updates"
    metric = next(
        (m for m in QUALITY if any(r.get(m) is not None for r in rows)), "accuracy"
    )
    xs = [r[step_key] for r in rows]
    accs = [r.get(metric) if r.get(metric) is not None else float("nan") for r in rows]
    up = np.cumsum([r.get("bytes_up") or 0 for r in rows]) / 1e6
    both = up + np.cumsum([r.get("bytes_down") or 0 for r in rows]) / 1e6
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(xs, accs, marker="o")
    ax1.set_xlabel(step_key)
    ax1.set_ylabel(metric)
    ax1.grid(alpha=0.3)
    ax2.plot(both, accs, marker="o", label="up + down")
    ax2.plot(up, accs, marker=".", ls="--", alpha=0.6, label="up only")
    ax2.set_xlabel("MB (cumulative, all clients)")
    ax2.set_ylabel(metric)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
