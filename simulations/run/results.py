"""Run outputs: ``metrics.jsonl``, ``summary.json``, ``final_model.npz`` and
``curves.png``.

:class:`RunRecorder` is the ``evaluate_fn`` of a Flower strategy's ``start()``: Flower
calls it before the first round (round 0) and after every round with the current global
arrays; it evaluates them on the server test set, reads the
:class:`~bouquet.simulations.run.metering.MeteredGrid` counters of that round, writes
one JSON line and logs one progress line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import MetricRecord

from bouquet.curves import plot_curves
from bouquet.simulations.run.metering import MeteredGrid
from bouquet.simulations.run.trackers import Tracker

logger = logging.getLogger("bouquet.progress")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "final_model.npz"
CURVES_FILE = "curves.png"


class RunFailed(RuntimeError):
    """A run that must end with a non-zero exit (e.g. no client result came back)."""


def arrays_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunRecorder:
    """Write per-round metrics and the final outputs of one run into ``run_dir``.

    Parameters
    ----------
    run_dir : path
        Output directory (created).
    evaluate : callable
        ``evaluate(arrays_by_name) -> dict`` of server-side metrics (at least
        ``accuracy`` and ``loss``).
    grid : MeteredGrid
        Source of bytes and client counts.
    extra : callable, optional
        ``extra() -> dict`` of strategy-specific values merged into each line (e.g.
        dropped replies, KL weights).
    tracker : Tracker, optional
        Gets every line, and the summary and artifacts at the end (``logger=...``).
    total_steps : int, optional
        Rounds (or evaluations) of the run, for the ETA of the progress line.
    view : callable, optional
        ``view(arrays) -> arrays``: the model that is evaluated, when it is not the
        server's (with a compressed downlink, the model the clients hold); checkpoints
        and ``final_model.npz`` keep the server's.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        evaluate: Callable[[dict[str, np.ndarray]], dict[str, float]],
        grid: MeteredGrid,
        extra: Callable[[], dict[str, Any]] | None = None,
        *,
        round_offset: int = 0,
        previous_rows: list[dict[str, Any]] | None = None,
        on_round: Callable[[int, dict[str, np.ndarray]], None] | None = None,
        view: Callable[[ArrayRecord], ArrayRecord] | None = None,
        tracker: Tracker | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.view = view
        self.tracker = tracker if tracker is not None else Tracker()
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.evaluate_arrays = evaluate
        self.grid = grid
        self.extra = extra
        self.round_offset = round_offset
        self.on_round = on_round
        self.rows: list[dict[str, Any]] = list(previous_rows or [])
        self.t_start = time.perf_counter()
        self.t_last = self.t_start
        self.last_arrays: ArrayRecord | None = None
        # A resumed run rewrites the lines up to its checkpoint, then appends.
        (self.run_dir / METRICS_FILE).write_text(
            "".join(json.dumps(r) + "\n" for r in self.rows)
        )

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower ``evaluate_fn``: evaluate, record one line, return the metrics.

        With ``round_offset`` (a resumed run) the call before the first new round is
        skipped: that round was recorded before the checkpoint.
        """
        self.last_arrays = arrays
        if server_round == 0 and self.round_offset > 0:
            self.grid.take_period()
            self.t_last = time.perf_counter()
            return None
        named = arrays_to_numpy(arrays)
        metrics = self.evaluate_arrays(
            named if self.view is None else arrays_to_numpy(self.view(arrays))
        )
        actual_round = server_round + self.round_offset
        self.record(actual_round, metrics)
        if self.on_round is not None and actual_round > 0:
            self.on_round(actual_round, named)
        return MetricRecord(
            {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and math.isfinite(v)
            }
        )

    def record(
        self, step: int, metrics: dict[str, Any], step_key: str = "round"
    ) -> dict[str, Any]:
        now = time.perf_counter()
        period = self.grid.take_period()
        row: dict[str, Any] = {
            step_key: step,
            **{k: _finite(v) for k, v in metrics.items()},
            "bytes_up": period.bytes_up,
            "bytes_down": period.bytes_down,
            "clients_ok": period.clients_ok,
            "clients_failed": period.clients_failed,
            "train_loss": period.train_loss,
            "client_train_s": round(period.client_train_s, 4),
            "wall_s": round(now - self.t_last, 4),
            "elapsed_s": round(now - self.t_start, 4),
        }
        if (
            period.first_reply_at is not None
            and self.grid.total.first_reply_at == period.first_reply_at
        ):
            # the run's first train reply
            row["first_reply_s"] = round(period.first_reply_at - self.t_start, 4)
        if self.extra is not None:
            extra = self.extra()
            # replies the strategy rejected
            dropped = int(extra.pop("clients_dropped", 0))
            row["clients_failed"] += dropped
            row["clients_ok"] = max(0, row["clients_ok"] - dropped)
            row.update(extra)
        self.t_last = now
        self.rows.append(row)
        with open(self.run_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        repeated = repeating_failure(period)
        # it will fail the same way in every round: stop now, with the reason
        if repeated is not None:
            reason = (
                f"no client result came back in {step_key} {step}: all "
                f"{period.clients_failed} clients failed "
                f"with the same error, which would repeat every {step_key}: {repeated}"
            )
            self.fail(reason)
            raise RunFailed(reason)
        self.tracker.log(step, row, step_key)
        shown = " ".join(
            f"{k}={row[k]:.4f}"
            for k in (*QUALITY, "loss")
            if isinstance(row.get(k), (int, float))
        )
        logger.info(
            "%s %d: %s up=%.3f MB down=%.3f MB ok=%d failed=%d (%.1f s%s)",
            step_key,
            step,
            shown or "(not evaluated)",
            row["bytes_up"] / 1e6,
            row["bytes_down"] / 1e6,
            row["clients_ok"],
            row["clients_failed"],
            row["wall_s"],
            self._eta(step),
        )
        return row

    def _eta(self, step: int) -> str:
        """``, ETA 3m20s`` from the mean wall time of the steps recorded so far."""
        done = [r["wall_s"] for r in self.rows[-20:] if r.get("wall_s")]
        if not self.total_steps or step <= 0 or step >= self.total_steps or not done:
            return ""
        left = (self.total_steps - step) * sum(done) / len(done)
        return (
            f", {self.total_steps - step} of {self.total_steps} left, ETA "
            f"{int(left // 60)}m{int(left % 60):02d}s"
        )

    def finish(
        self,
        arrays: ArrayRecord | dict[str, np.ndarray] | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``final_model.npz``, ``summary.json`` and ``curves.png``.

        Raises
        ------
        RunFailed
            If no client result came back during the whole run.
        """
        arrays = arrays if arrays is not None else self.last_arrays
        total = self.grid.total
        ok = sum(r["clients_ok"] for r in self.rows)
        summary = summarize(self.rows, total_wall=time.perf_counter() - self.t_start)
        summary.update(extra or {})
        if ok == 0:
            reason = (
                f"no client result came back ({total.clients_failed} failed, "
                f"{total.train_messages} train messages sent); see the client errors "
                "in the log"
            )
            summary.update(status="failed", reason=reason)
            atomic_write_text(
                self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2)
            )
            self.tracker.finish(summary, [self.run_dir / SUMMARY_FILE])
            raise RunFailed(reason)
        if arrays is not None:
            named: dict[str, Any] = (
                arrays_to_numpy(arrays) if isinstance(arrays, ArrayRecord) else arrays
            )
            np.savez(self.run_dir / MODEL_FILE, **named)
        summary["status"] = "ok"
        atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        plot_curves(self.rows, self.run_dir / CURVES_FILE)
        self.tracker.finish(
            summary,
            [
                self.run_dir / f
                for f in (MODEL_FILE, CURVES_FILE, SUMMARY_FILE, METRICS_FILE)
            ],
        )
        logger.info("results in %s", self.run_dir)
        return summary

    def fail(self, reason: str) -> None:
        """Record a failed run (summary with ``status: failed``)."""
        summary = summarize(self.rows, total_wall=time.perf_counter() - self.t_start)
        summary.update(status="failed", reason=reason)
        atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        self.tracker.finish(summary, [self.run_dir / SUMMARY_FILE])


def repeating_failure(period: Any) -> str | None:
    """The one error every client of ``period`` replied with (digits aside), or None.

    None when a client succeeded, timed out (no reason) or failed otherwise: only a
    failure that is the same for every client will repeat in every round.
    """
    reasons = list(getattr(period, "error_reasons", []))
    if period.clients_ok or not reasons or len(reasons) != period.clients_failed:
        return None
    shapes = {re.sub(r"\d+", "#", r) for r in reasons}
    return " ".join(reasons[0].split()) if len(shapes) == 1 else None


def read_rows(run_dir: Path, up_to_round: int | None = None) -> list[dict[str, Any]]:
    """Rows of an existing ``metrics.jsonl`` (only complete lines, rounds <=
    ``up_to_round``)."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                break
            if up_to_round is None or row.get("round", 0) <= up_to_round:
                rows.append(row)
    return rows


# Per-round counts of a strategy's report that summary.json totals (two-way
# compression).
SUMMED = ("sync_mismatches", "catchup_bytes", "dense_sends")

# Per-round values of a strategy's report whose last value summary.json keeps (privacy:
# spent so far).
LAST = ("epsilon",)

# Quality metrics a run may report, with the direction that counts as better.
QUALITY = {"accuracy": max, "rmse": min, "hr_at_10": max, "ndcg_at_10": max}


def summarize(rows: list[dict[str, Any]], total_wall: float) -> dict[str, Any]:
    """Summary of a run from its metric rows: ``final_X``/``best_X`` for every quality
    metric the rows carry (``accuracy`` always present, ``None`` when never
    evaluated)."""
    quality: dict[str, Any] = {}
    for name, better in QUALITY.items():
        values = [r[name] for r in rows if r.get(name) is not None]
        if values or name == "accuracy":
            quality[f"final_{name}"] = values[-1] if values else None
            quality[f"best_{name}"] = better(values) if values else None
    trained = [r for r in rows if r.get("round", r.get("updates", 0))]
    return {
        **quality,
        "final_loss": rows[-1].get("loss") if rows else None,
        "total_bytes_up": int(sum(r["bytes_up"] for r in rows)),
        "total_bytes_down": int(sum(r["bytes_down"] for r in rows)),
        "rounds": len(trained),
        "clients_ok": int(sum(r["clients_ok"] for r in rows)),
        "clients_failed": int(sum(r["clients_failed"] for r in rows)),
        "wall_s": round(total_wall, 3),
        **{
            key: int(sum(r.get(key) or 0 for r in rows))
            for key in SUMMED
            if any(key in r for r in rows)
        },
        **{
            key: [r[key] for r in rows if r.get(key) is not None][-1]
            for key in LAST
            if any(r.get(key) is not None for r in rows)
        },
    }
