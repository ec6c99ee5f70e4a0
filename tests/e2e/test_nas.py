"""End-to-end runs split out of tests/models/test_nas.py (they start bouquet-sim /
Ray)."""

from __future__ import annotations

import json

import pytest
from conftest import run_bouquet_sim

from bouquet.models.nas import Architecture
from bouquet.models.nas_controller import cost_reward


@pytest.mark.e2e
def test_short_search_on_digits(tmp_path):
    proc = run_bouquet_sim(
        [
            "experiment=early_exit_search",
            "dataset=digits",
            "search.steps=6",
            "search.warmup_steps=2",
            "search.final_samples=2",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    arch = json.loads((tmp_path / "architecture.json").read_text())
    assert set(arch) >= {"architecture", "accuracy", "params", "reward"}
    assert arch["search_space"] == {"N": 4, "L": 3, "count": 64}
    assert 0.0 <= arch["accuracy"] <= 1.0 and arch["params"] > 0
    assert (
        arch["cost"] == "params_macs"
        and len(arch["macs_per_exit"]) == len(arch["params_per_exit"]) == 3
    )
    chosen = next(
        c for c in arch["candidates_scored"] if c["choices"] == arch["choices"]
    )
    base_macs = sum(arch["baseline_macs_per_exit"]) / 3
    assert arch["reward"] == pytest.approx(chosen["reward"])
    assert chosen["macs"] == pytest.approx(sum(arch["macs_per_exit"]) / 3)
    assert arch["reward"] == pytest.approx(
        cost_reward(
            arch["accuracy"],
            {
                "params": chosen["params"] / arch["baseline_model_params"],
                "macs": chosen["macs"] / base_macs,
            },
        )
    )
    rows = [
        json.loads(line)
        for line in (tmp_path / "search.jsonl").read_text().splitlines()
    ]
    sampled = [x for r in rows for x in r.get("sampled", [])]
    assert sampled and all(
        {"accuracy", "params", "macs", "reward"} <= set(x) for x in sampled
    )
    assert (tmp_path / "search_curve.png").stat().st_size > 0
    assert len((tmp_path / "search.jsonl").read_text().splitlines()) == 6
    Architecture.from_dict(arch["architecture"])  # loadable
