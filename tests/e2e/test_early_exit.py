"""End-to-end runs split out of tests/models/test_early_exit.py (they start bouquet-sim
/ Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim

from bouquet.models.early_exit import build_early_exit
from bouquet.models.early_exit import depth_names


@pytest.mark.e2e
def test_short_federated_run_on_digits(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_bouquet_sim(
        [
            "experiment=early_exit",
            "dataset=digits",
            "simulation.num_clients=3",
            "simulation.num_rounds=4",
            "server.shared_fraction=0.1",
            "client.max_depth_by_partition=[1,3,3]",
            # 3 local epochs: 1 epoch on ~480 digits left the best exit near chance in
            # some draws
            "client.local_epochs=3",
        ],
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    for row in rows:
        assert {
            "accuracy_exit_1",
            "accuracy_exit_2",
            "accuracy_exit_3",
            "loss_exit_1",
            "total_loss",
        } <= set(row)
        macs = [row[f"macs_exit_{i}"] for i in (1, 2, 3)]
        assert macs == sorted(macs) and row["params_exit_1"] < row["params_exit_3"]
    for row in rows[1:]:
        assert row["clients_ok"] == 3 and row["clients_failed"] == 0
        assert sum(row["nodes_per_depth"]) == 3
    # the capacity-1 node (partition 0) told the server before round 1 (node-info
    # query): depth 1 every round
    assert all(row["nodes_per_depth"][0] >= 1 for row in rows[1:])
    # depths are redrawn every round (seeded by seed, round, partition-id)
    assert len({tuple(row["nodes_per_depth"]) for row in rows[1:]}) > 1
    info = json.loads((run_dir / "best_exit.json").read_text())
    assert info["selected_on"] == "server-validation" and 1 <= info["exit"] <= 3
    best = np.load(run_dir / "best_exit_model.npz")
    model = build_early_exit((1, 8, 8), 10)
    assert sorted(best.files) == sorted(depth_names(model, info["exit"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok"
    # some exit learned (chance 0.1)
    assert max(rows[-1][f"accuracy_exit_{i}"] for i in (1, 2, 3)) > 0.15
