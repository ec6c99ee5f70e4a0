"""End-to-end runs split out of tests/strategies/test_kl_weighted.py (they start
bouquet-sim / Ray)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim

from bouquet import keys

H = keys.LABEL_HISTOGRAM
# conftest, loaded by pytest (importlib mode)
make_reply = sys.modules["tests.conftest"].make_reply


def run_sim(run_dir: Path, *overrides: str) -> list[dict]:
    # slow when the cores are shared
    proc = run_bouquet_sim(
        [
            "dataset=digits",
            "simulation.num_clients=3",
            "simulation.num_rounds=2",
            *overrides,
        ],
        run_dir,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return metrics_rows(run_dir)


def test_bouquet_sim_writes_kl_weights(tmp_path):
    rows = run_sim(
        tmp_path / "kl",
        "strategy=kl_weighted",
        "strategy.reference=server",
        "partition=pathological",
    )
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert len(row["kl_weights"]) == 3 and sum(row["kl_weights"]) == pytest.approx(
            1.0
        )
        # 2 labels vs the test set's 10
        assert len(row["kl_div"]) == 3 and all(d > 0 for d in row["kl_div"])
        assert row["kl_reference"] is not None and len(row["kl_reference"]) == 10
        assert row["clients_ok"] == 3 and row["accuracy"] is not None


def test_bouquet_sim_sparse_kl_preset(tmp_path):
    rows = run_sim(
        tmp_path / "s1",
        "experiment=sparse_kl",
        "dataset=digits",
        "simulation.num_clients=3",
        "simulation.num_rounds=2",
        "partition=pathological",
    )
    for row in rows[1:]:
        assert len(row["kl_weights"]) == 3 and row["clients_ok"] == 3
    cfg = json.loads((tmp_path / "s1" / "config.json").read_text())
    assert cfg["client"]["_target_"].endswith("TopKClient") and cfg["strategy"][
        "_target_"
    ].endswith("KLWeightedFedAvg")
    model = np.load(tmp_path / "s1" / "final_model.npz")
    # 3 dense uploads per round
    dense_bytes = 3 * sum(model[k].nbytes for k in model.files)
    # top-1% uploads
    assert all(0 < r["bytes_up"] < 0.2 * dense_bytes for r in rows[1:])
