"""End-to-end runs split out of tests/strategies/test_server_adjusted.py (they start
bouquet-sim / Ray)."""

from __future__ import annotations

import json
import sys

from conftest import metrics_rows
from conftest import run_bouquet_sim

# conftest, loaded by pytest (importlib mode)
make_reply = sys.modules["tests.conftest"].make_reply


# ------------------------------------------------------------------ end to end
def test_bouquet_sim_with_server_adjust_and_kl(tmp_path):
    run_dir = tmp_path / "adjust"
    # slow when the cores are shared
    proc = run_bouquet_sim(
        [
            "dataset=digits",
            "simulation.num_clients=3",
            "simulation.num_rounds=2",
            "server=adjust",
            "server.shared_fraction=0.1",
            "strategy=kl_weighted",
            "partition=pathological",
        ],
        run_dir,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["adjusted"] is True and 0.0 <= row["acc_before_adjust"] <= 1.0
        assert row["accuracy"] is not None and row["adjust_loss"] > 0
        # the recorded model is the adjusted one
        assert row["loss"] != row["loss_before_adjust"]
        assert len(row["kl_weights"]) == 3
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["server"]["name"] == "adjust"
