"""``bouquet.curves``: rows and a plot from a plain Flower app's ``Result`` (issue 35,
point 5)."""

from __future__ import annotations

from pathlib import Path

from flwr.app import MetricRecord
from flwr.serverapp.strategy import Result

from bouquet import keys
from bouquet.curves import result_rows
from bouquet.curves import save_result_curves
from bouquet.strategies.reports import BYTES_UP


def _result() -> Result:
    result = Result()
    result.evaluate_metrics_serverapp[0] = MetricRecord({"accuracy": 0.1, "loss": 2.3})
    for rnd, (up, down, acc) in enumerate([(100, 4000, 0.5), (120, 300, 0.7)], start=1):
        result.train_metrics_clientapp[rnd] = MetricRecord(
            {BYTES_UP: up, keys.BYTES_DOWN: down, "train-loss": 1.0}
        )
        result.evaluate_metrics_serverapp[rnd] = MetricRecord(
            {"accuracy": acc, "loss": 1.0 / rnd}
        )
    return result


def test_result_rows_carry_accuracy_and_bytes_both_ways() -> None:
    rows = result_rows(_result())
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["bytes_up"] is None and rows[0]["accuracy"] == 0.1
    assert (rows[1]["bytes_up"], rows[1]["bytes_down"], rows[1]["accuracy"]) == (
        100,
        4000,
        0.5,
    )
    assert (rows[2]["bytes_up"], rows[2]["bytes_down"]) == (120, 300)


def test_save_result_curves_writes_a_png(tmp_path: Path) -> None:
    save_result_curves(_result(), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
