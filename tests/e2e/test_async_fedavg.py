"""End-to-end runs split out of tests/strategies/test_async_fedavg.py (they start bouquet-sim / Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A node's behaviour: ("ok", latency_in_polls, delta) | ("error", latency, None) | ("hang", 0, None)
Behaviour = tuple[str, int, float | None]


def test_real_async_simulation_on_digits(tmp_path: Path) -> None:
    """A short real run: 3 nodes of different speed, one very slow; stops by itself."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cmd = [
        sys.executable, "-m", "bouquet.simulations.main", "dataset=digits", "simulation.num_clients=3",
        "simulation.num_rounds=6", "strategy=async", "strategy.policy=polynomial", "strategy.eval_every=4",
        "client=slow", "client.base_time_s=0.5", "client.slow_fraction=0.34", "client.slow_factor=4",
        "simulation.client_cpus=0.5", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("updates", "version", "accuracy", "loss", "staleness_mean", "staleness_max", "lr_scale", "bytes_up", "wall_s"):
        assert all(key in r for r in rows), key
    assert [r["updates"] for r in rows] == sorted(r["updates"] for r in rows)
    assert [r["version"] for r in rows] == sorted(r["version"] for r in rows)
    assert rows[-1]["updates"] == 18 and rows[-1]["stop_reason"] == "update budget 18 reached"
    # The slow node's updates arrive late: some staleness > 0, and those are down-weighted.
    assert max(r["staleness_max"] or 0 for r in rows) >= 1
    assert min(r["lr_scale"] for r in rows[1:]) < 1.0
    assert sum(r["bytes_up"] for r in rows) > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["clients_ok"] >= 18
