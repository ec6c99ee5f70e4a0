"""A ClientApp failure that will repeat in every round stops the run after the first
such round (issue 32)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord
from flwr.app import Error
from flwr.app import Message

from bouquet.simulations.run.metering import MeteredGrid
from bouquet.simulations.run.metering import Period
from bouquet.simulations.run.results import RunFailed
from bouquet.simulations.run.results import RunRecorder
from bouquet.simulations.run.results import repeating_failure


def _period(ok: int, reasons: list[str], failed: int | None = None) -> Period:
    p = Period(clients_ok=ok, clients_failed=len(reasons) if failed is None else failed)
    p.error_reasons = list(reasons)
    return p


def test_only_the_same_error_from_every_client_repeats() -> None:
    same = [
        "<class 'ValueError'>:<'partition 3 is empty'>",
        "<class 'ValueError'>:<'partition 17 is empty'>",
    ]
    assert repeating_failure(_period(0, same)) == same[0]
    assert repeating_failure(_period(1, same)) is None  # someone succeeded
    # different errors
    assert repeating_failure(_period(0, [same[0], "<class 'KeyError'>:<'x'>"])) is None
    # a timeout has no reason: may not repeat
    assert repeating_failure(_period(0, same, failed=3)) is None
    assert repeating_failure(_period(0, [])) is None


class _Grid:
    def __init__(self) -> None:
        self.period, self.total = Period(), Period()

    def take_period(self) -> Period:
        period, self.period = self.period, Period()
        return period


def test_the_recorder_stops_the_run_and_writes_why(tmp_path: Path) -> None:
    grid = _Grid()
    recorder = RunRecorder(
        tmp_path, lambda arrays: {"accuracy": 0.1, "loss": 2.3}, grid
    )  # type: ignore[arg-type]
    recorder(0, ArrayRecord())
    grid.period = _period(
        0,
        [
            "<class 'RuntimeError'>:<'CUDA missing on node 1'>",
            "<class 'RuntimeError'>:<'CUDA missing on node 2'>",
        ],
    )
    with pytest.raises(
        RunFailed,
        match=r"no client result came back in round 1: all 2 clients failed .*: <class "
        r".RuntimeError.>:<.CUDA missing",
    ):
        recorder(1, ArrayRecord())
    assert '"status": "failed"' in (tmp_path / "summary.json").read_text()


def test_the_metered_grid_keeps_the_error_reasons() -> None:
    class Inner:
        def push_messages(self, messages):
            return ["m1"]

        def pull_messages(self, ids):
            from conftest import make_train_message

            reply = Message(
                Error(code=2, reason="boom 7"), reply_to=make_train_message({})
            )
            reply.metadata.__dict__["_reply_to_message_id"] = "m1"
            return [reply]

    from conftest import make_train_message

    grid = MeteredGrid(Inner())  # type: ignore[arg-type]
    grid.push_messages([make_train_message({})])
    grid.pull_messages(["m1"])
    assert grid.period.error_reasons == ["boom 7"] and grid.period.clients_failed == 1
