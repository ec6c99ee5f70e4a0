"""The progress line: one per round (or per evaluation of an asynchronous run) with MB
both ways
and an ETA from the mean wall time so far (issue 36, point 3)."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import ArrayRecord

from bouquet.simulations.run.metering import Period
from bouquet.simulations.run.results import RunRecorder


class _Grid:
    def __init__(self) -> None:
        self.period, self.total = Period(), Period()

    def take_period(self) -> Period:
        period, self.period = (
            self.period,
            Period(bytes_up=1_500_000, bytes_down=2_000_000, clients_ok=2),
        )
        return period


def test_each_line_has_mb_both_ways_and_an_eta(tmp_path: Path, caplog) -> None:
    recorder = RunRecorder(
        tmp_path,
        lambda arrays: {"accuracy": 0.5, "loss": 1.0},
        _Grid(),  # type: ignore[arg-type]
        total_steps=4,
    )
    with caplog.at_level(logging.INFO, logger="bouquet.progress"):
        for rnd in range(5):  # round 0 (the initial model) and rounds 1-4
            recorder(rnd, ArrayRecord())
            recorder.rows[-1]["wall_s"] = 30.0  # as if every round took 30 s
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")
    ]
    assert len(lines) == 5
    assert (
        "round 1: accuracy=0.5000" in lines[1]
        and "up=1.500 MB down=2.000 MB" in lines[1]
    )
    # rounds 0 and 1 took 30 s and ~0 s (round 1 is logged before the test sets it): 3
    # left x 15 s
    assert "3 of 4 left, ETA 0m45s" in lines[1]
    assert "2 of 4 left, ETA 0m40s" in lines[2]  # 2 x mean(30, 30, ~0)
    assert "ETA" not in lines[4]  # the last round
