"""End-to-end: ``bouquet-sim ... downlink=stc`` (issue 29's done criterion) in Flower's
simulation
engine: the run learns, downloads at least 5x fewer bytes than the same run with
``downlink=none``, every served client's copy equals the server's (``sync_mismatches``
0), and summary.json totals both directions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim

pytestmark = pytest.mark.e2e

ISSUE = [
    "dataset=digits",
    "simulation.num_clients=20",
    "simulation.fraction_train=0.5",
    "client=stc",
]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_two_way_stc_downloads_5x_fewer_bytes_in_sync(tmp_path: Path) -> None:
    runs = {}
    for downlink in ("none", "stc"):
        proc = run_bouquet_sim([*ISSUE, f"downlink={downlink}"], tmp_path / downlink)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[downlink] = _summary(tmp_path / downlink)
    dense, two_way = runs["none"], runs["stc"]
    assert two_way["status"] == "ok" and two_way["sync_mismatches"] == 0
    assert two_way["total_bytes_down"] * 5 <= dense["total_bytes_down"], (
        two_way,
        dense,
    )
    # uploads stay compressed
    assert two_way["total_bytes_up"] < dense["total_bytes_down"] / 50
    rows = metrics_rows(tmp_path / "stc")
    assert all(r["clients_failed"] == 0 for r in rows)
    # it learns (chance is 0.1)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.15
    assert rows[-1]["downlink_version"] == 11  # the initial model + one step per round
