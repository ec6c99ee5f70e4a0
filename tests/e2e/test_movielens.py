"""End-to-end runs split out of tests/data/test_movielens.py (they start bouquet-sim /
Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim


# ------------------------------------------------------------------ end to end
@pytest.mark.e2e
def test_bouquet_sim_movielens_small_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_bouquet_sim(
        [
            "dataset=movielens",
            "model=mf",
            "client=recsys",
            "client.codec=ternary",
            "dataset.max_users=60",
            "simulation.num_clients=2",
            "simulation.num_rounds=2",
        ],
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["rmse"] is None  # nothing evaluated before the first round
    shared_bytes = 4 * (1682 * 32 + 1682 + 1)
    for row in rows[1:]:
        assert (
            row["clients_ok"] == 2
            and row["clients_failed"] == 0
            and row["eval_clients"] == 2
        )
        assert (
            0.5 < row["rmse"] < 2.0
            and 0.0 <= row["ndcg_at_10"] <= row["hr_at_10"] <= 1.0
        )
        # ternary: far below the dense item side
        assert 0 < row["bytes_up"] < 0.2 * 2 * shared_bytes
        # train + evaluation messages, dense
        assert row["bytes_down"] >= 2 * 2 * shared_bytes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds"] == 2
