"""End-to-end: real ``bouquet-sim`` runs with compressing clients (digits, 3 clients, 3
rounds).

Each run checks that the strategy was wrapped (bytes really shrink on the wire), that no
reply was dropped, and that the model learned (above chance, 0.1 on digits).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim

pytestmark = pytest.mark.e2e

COMMON = [
    "dataset=digits",
    "simulation.num_clients=3",
    "simulation.num_rounds=3",
    "client.lr=0.05",
    "client.local_epochs=2",
]


def _rows(run_dir: Path) -> list[dict]:
    return metrics_rows(run_dir)


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
def test_compressed_client_runs(
    tmp_path: Path, plain_up: int, client: str, extra: list[str], min_factor: float
) -> None:
    run_dir = tmp_path / "run"
    rows = _run([f"client={client}", *extra], run_dir)
    up = sum(r["bytes_up"] for r in rows)
    assert up > 0
    assert plain_up / up >= min_factor, (plain_up, up)
    assert rows[-1]["accuracy"] > 0.2, rows[-1]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["client"]["_target_"].endswith(
        {"topk": "TopKClient", "ternary": "TernaryClient", "stc": "STCClient"}[client]
    )


def test_rho_schedule_reaches_the_wire(tmp_path: Path) -> None:
    """Issue 22: in a real 3-round simulation the bytes uploaded in round j follow
    m_j = ceil(alpha * rho**(j-1) * M) per tensor (values are 4 bytes each; header and
    positions add at most 4 bytes per value plus a fixed header per tensor). A client
    that ignores the round number (or a counter stuck at 0) sends the same bytes every
    round and fails."""
    import math

    import numpy as np

    alpha, rho, clients = 0.2, 0.5, 3
    rows = _run(
        [
            "client=topk",
            f"client.alpha={alpha}",
            f"client.rho={rho}",
            "client.residual_decay=0.0",
            "client.local_steps=1",
            "client.momentum=0.0",
            "model=mlp",
        ],
        tmp_path / "rho",
    )
    model = np.load(tmp_path / "rho" / "final_model.npz")
    sizes = [model[k].size for k in model.files]
    per_round = []
    for row in rows[1:]:
        j = row["round"] - 1
        m = [min(s, max(1, math.ceil(alpha * rho**j * s))) for s in sizes]
        values, header = (
            4 * sum(m),
            sum(6 + 4 * model[k].ndim + 10 for k in model.files),
        )
        up = row["bytes_up"] / clients
        assert values <= up <= 2 * values + header, (row["round"], up, values)
        per_round.append(up)
    assert per_round[1] / per_round[0] == pytest.approx(rho, rel=0.15)
    assert per_round[2] / per_round[1] == pytest.approx(rho, rel=0.15)


def test_s1_source_preset_runs_one_step_per_round_with_gamma(tmp_path: Path) -> None:
    """The sparse_source preset: one SGD step per round, no error feedback, KL weights,
    gamma."""
    proc = run_bouquet_sim(
        [
            "experiment=sparse_source",
            "dataset=digits",
            "simulation.num_clients=3",
            "simulation.num_rounds=3",
            "client.alpha=0.5",
        ],
        tmp_path / "s1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((tmp_path / "s1" / "config.json").read_text())
    assert cfg["client"]["local_steps"] == 1 and cfg["client"]["residual_decay"] == 0.0
    assert cfg["compression"]["gamma"] == 0.1 and cfg["strategy"]["_target_"].endswith(
        "KLWeightedFedAvg"
    )
    rows = _rows(tmp_path / "s1")
    assert all(len(r["kl_weights"]) == 3 for r in rows[1:])
    assert rows[-1]["loss"] < rows[0]["loss"]  # three SGD iterations moved the model


@pytest.mark.parametrize("client", ["topk", "stc", "ternary"])
def test_batchnorm_model_trains_compressed_without_a_dropped_reply(
    tmp_path: Path, client: str
) -> None:
    """Issue 21: a CNN with BatchNorm (0-d int64 num_batches_tracked) trains 3
    compressed rounds
    in simulation with every reply accepted, and learns."""
    rows = _run(
        [f"client={client}", "model=cnn_bn", "client.alpha=0.1"]
        if client != "ternary"
        else ["client=ternary", "model=cnn_bn"],
        tmp_path / client,
    )
    assert all(
        r.get("clients_dropped", 0) == 0 and r["clients_failed"] == 0 for r in rows[1:]
    ), rows
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.1
    model = np.load(tmp_path / client / "final_model.npz")
    counters = [k for k in model.files if k.endswith("num_batches_tracked")]
    assert counters and all(model[k].shape == () for k in counters)  # 0-d stays 0-d
