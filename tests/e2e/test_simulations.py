"""End-to-end: real ``bouquet-sim`` runs in Flower's simulation engine (digits,
tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim

pytestmark = pytest.mark.e2e

REQUIRED_ROW_KEYS = {
    "round",
    "accuracy",
    "loss",
    "bytes_up",
    "bytes_down",
    "wall_s",
    "clients_ok",
    "clients_failed",
}


def _rows(run_dir: Path) -> list[dict]:
    return metrics_rows(run_dir)


def test_digits_run_writes_every_output(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_bouquet_sim(
        ["dataset=digits", "simulation.num_clients=3", "simulation.num_rounds=2"],
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "metrics.jsonl",
        "summary.json",
        "final_model.npz",
        "curves.png",
        "config.json",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert REQUIRED_ROW_KEYS <= set(row)
    model_bytes = sum(a.nbytes for a in np.load(run_dir / "final_model.npz").values())
    for row in rows[1:]:
        assert row["clients_ok"] == 3 and row["clients_failed"] == 0
        # every client downloads and uploads the whole model (plus .npy headers)
        assert 3 * model_bytes <= row["bytes_down"] < 3 * model_bytes * 1.05
        assert 3 * model_bytes <= row["bytes_up"] < 3 * model_bytes * 1.05
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds"] == 2
    assert summary["total_bytes_up"] == sum(r["bytes_up"] for r in rows)
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
    # above chance (0.1), improved
    assert summary["final_accuracy"] > 0.15 > rows[0]["accuracy"] - 0.05
    assert summary["best_accuracy"] >= summary["final_accuracy"]
    # one progress line per round
    assert "round 2: accuracy=" in proc.stderr + proc.stdout


def test_all_clients_failing_exits_nonzero_with_reason(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_bouquet_sim(
        [
            "dataset=digits",
            "simulation.num_clients=2",
            "simulation.num_rounds=1",
            "fault.crash_rate=1.0",
        ],
        run_dir,
    )
    assert proc.returncode != 0
    assert "no client result came back" in proc.stderr + proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "no client result" in summary["reason"]


def test_bad_override_refused_before_start(tmp_path: Path) -> None:
    proc = run_bouquet_sim(
        ["dataset=digits", "simulation.num_clientz=3"], tmp_path / "a"
    )
    assert proc.returncode != 0 and "num_clientz" in proc.stderr
    proc = run_bouquet_sim(["dataset=digits", "partition.alpha=-1"], tmp_path / "b")
    assert proc.returncode != 0 and "partition.alpha" in proc.stderr
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


# The multirun summary table (multirun_summary.csv) is checked on the sweep of
# tests/e2e/test_tracking.py.
