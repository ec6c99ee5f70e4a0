"""End-to-end runs of AsyncFedAvg (they start bouquet-sim / Ray); the unit tests are in
tests/strategies/test_async_*.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import metrics_rows
from conftest import run_bouquet_sim

# A node's behaviour: ("ok", latency_in_polls, delta) | ("error", latency, None) |
# ("hang", 0, None)
Behaviour = tuple[str, int, float | None]


def test_real_async_simulation_on_digits(tmp_path: Path) -> None:
    """A short real run: 3 nodes of different speed, one very slow; stops by itself."""
    run_dir = tmp_path / "run"
    proc = run_bouquet_sim(
        [
            "dataset=digits",
            "simulation.num_clients=3",
            "simulation.num_rounds=6",
            "strategy=async",
            "strategy.policy=polynomial",
            "strategy.eval_every=4",
            "client=slow",
            "client.base_time_s=0.5",
            "client.slow_fraction=0.34",
            "client.slow_factor=4",
            "simulation.client_cpus=0.5",
        ],
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(run_dir)
    for key in (
        "updates",
        "version",
        "accuracy",
        "loss",
        "staleness_mean",
        "staleness_max",
        "lr_scale",
        "bytes_up",
        "wall_s",
    ):
        assert all(key in r for r in rows), key
    assert [r["updates"] for r in rows] == sorted(r["updates"] for r in rows)
    assert [r["version"] for r in rows] == sorted(r["version"] for r in rows)
    assert (
        rows[-1]["updates"] == 18
        and rows[-1]["stop_reason"] == "update budget 18 reached"
    )
    # The slow node's updates arrive late: some staleness > 0, and those are
    # down-weighted.
    assert max(r["staleness_max"] or 0 for r in rows) >= 1
    assert min(r["lr_scale"] for r in rows[1:]) < 1.0
    assert sum(r["bytes_up"] for r in rows) > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["clients_ok"] >= 18


WINDOW = 4
SLIDING = [
    "dataset=digits",
    "simulation.num_clients=4",
    "simulation.num_rounds=6",
    "strategy=async",
    "strategy.policy=sliding_window",
    f"strategy.window={WINDOW}",
    "strategy.eval_every=4",
    "strategy.plateau_window=0",
    "client=slow",
    "client.base_time_s=0.3",
    "client.slow_fraction=0.25",
    "client.slow_factor=5",
    "simulation.client_cpus=0.5",
    "simulation.checkpoint_every=0",
]


def test_sliding_window_on_the_learners_in_flowers_engine(tmp_path: Path) -> None:
    """The learner-side window (the default) through the real loop in Flower's
    simulation engine: every applied scale is the one each learner computed from its own
    window (kept in ``context.state`` on its Ray worker), recomputed here from the
    staleness in metrics.jsonl."""
    from async_checks import learner_scales
    from async_checks import server_scales
    from async_checks import update_log

    rows = _run_rows(
        [*SLIDING, "strategy.window_side=learner", "strategy.per_node=true"],
        tmp_path / "run",
    )
    log = update_log(rows)
    assert len(log) == 24 and len({n for n, _, _ in log}) == 4
    assert (
        sum(r["lr_scale_fallbacks"] for r in rows) == 0
        and sum(r["clients_failed"] for r in rows) == 0
    )
    scales = [s for *_, s in log]
    # the learners' rates were applied
    assert scales == pytest.approx(learner_scales(log, WINDOW))
    assert min(scales) < 1.0  # and some learner damped its rate
    # not the server's own rule
    assert scales != pytest.approx(server_scales(log, WINDOW, per_node=True))
    for row in rows[1:]:  # the line's mean scale is the mean of the scales it lists
        assert row["lr_scale"] == pytest.approx(
            sum(s for *_, s in row["update_log"]) / len(row["update_log"])
        )


def test_sliding_window_per_node_on_the_server_in_flowers_engine(
    tmp_path: Path,
) -> None:
    """``window_side=server per_node=true`` through the real loop: each node's update is
    scaled
    against that node's own earlier staleness, not the federation's."""
    from async_checks import server_scales
    from async_checks import update_log

    rows = _run_rows(
        [*SLIDING, "strategy.window_side=server", "strategy.per_node=true"],
        tmp_path / "run",
    )
    log = update_log(rows)
    assert len(log) == 24 and len({n for n, _, _ in log}) == 4
    # no learner-side window in play
    assert all("lr_scale_fallbacks" not in r for r in rows)
    scales = [s for *_, s in log]
    assert scales == pytest.approx(server_scales(log, WINDOW, per_node=True))
    # the slow node's staleness is high but usual for it: per node it is not damped,
    # shared it would be
    assert scales != pytest.approx(server_scales(log, WINDOW, per_node=False))
    assert min(scales) < 1.0


def _run_rows(overrides: list[str], run_dir: Path) -> list[dict]:
    proc = run_bouquet_sim(overrides, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert rows[-1]["stop_reason"] == "update budget 24 reached"
    assert [r["version"] for r in rows] == [r["updates"] for r in rows]
    return rows
