"""End-to-end: real ``bouquet-sim`` runs with compressing clients (digits, 3 clients, 3 rounds).

Each run checks that the strategy was wrapped (bytes really shrink on the wire), that no reply
was dropped, and that the model learned (above chance, 0.1 on digits).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_bouquet_sim

pytestmark = pytest.mark.e2e

COMMON = ["dataset=digits", "simulation.num_clients=3", "simulation.num_rounds=3", "client.lr=0.05", "client.local_epochs=2"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _run(overrides: list[str], run_dir: Path) -> list[dict]:
    proc = run_bouquet_sim([*COMMON, *overrides], run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for row in rows[1:]:
        assert row["clients_ok"] == 3 and row["clients_failed"] == 0, row
    return rows


@pytest.fixture(scope="module")
def plain_up(tmp_path_factory) -> int:
    rows = _run(["client=plain"], tmp_path_factory.mktemp("plain") / "run")
    return sum(r["bytes_up"] for r in rows)


@pytest.mark.parametrize(
    ("client", "extra", "min_factor"),
    [
        # 10% of the values (4 bytes) + Rice-coded positions: about 8x fewer bytes
        ("topk", ["client.alpha=0.1"], 6.0),
        # 1.6 bits per element (or fewer, sparse) instead of 32: at least 16x
        ("ternary", [], 16.0),
        # 10% kept, 1 sign bit + ~4 position bits each instead of 32 bits per element
        ("stc", ["client.alpha=0.1"], 30.0),
    ],
)
def test_compressed_client_runs(tmp_path: Path, plain_up: int, client: str, extra: list[str], min_factor: float) -> None:
    run_dir = tmp_path / "run"
    rows = _run([f"client={client}", *extra], run_dir)
    up = sum(r["bytes_up"] for r in rows)
    assert up > 0
    assert plain_up / up >= min_factor, (plain_up, up)
    assert rows[-1]["accuracy"] > 0.2, rows[-1]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["client"]["_target_"].endswith({"topk": "TopKClient", "ternary": "TernaryClient", "stc": "STCClient"}[client])
