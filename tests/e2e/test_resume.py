"""End-to-end runs split out of tests/simulations/test_resume.py (they start bouquet-sim
/ Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from conftest import metrics_rows
from conftest import run_bouquet_sim

from bouquet.simulations.run.checkpoint import load_checkpoint
from bouquet.simulations.run.results import read_rows

BASE = ["dataset=digits", "simulation.num_clients=3", "client.lr=0.05"]


def _final(run_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(run_dir / "final_model.npz"))


# ``bouquet-sim`` (argv[3:]) that, once round argv[1]'s checkpoint is on disk, writes
# the marker file argv[2] and waits to be killed: the kill lands after that round
# whatever the round times.
PAUSING_SIM = """
import sys, threading
from pathlib import Path
from bouquet.simulations.run import checkpoint, main
pause, marker = int(sys.argv[1]), Path(sys.argv[2])
save = checkpoint.Checkpointer.__call__
def save_then_pause(self, server_round, arrays):
    save(self, server_round, arrays)
    if server_round == pause:
        marker.write_text(str(server_round))
        threading.Event().wait()
checkpoint.Checkpointer.__call__ = save_then_pause
sys.argv = ["bouquet-sim", *sys.argv[3:]]
main.main()
"""


def _sigkill_when_paused(
    script: str, pause: int, what: str, args: list[str], run_dir: Path
) -> None:
    """Run ``script`` (:data:`PAUSING_SIM` or :data:`PAUSING_ASYNC_SIM`) with ``args``
    into ``run_dir`` until it pauses at ``pause`` (``what``: "round 2", "update 8"),
    then SIGKILL its whole session (the driver and its Ray workers). Its output goes to
    ``<run_dir>.log``."""
    marker, log = (
        run_dir.with_name(f"{run_dir.name}.paused"),
        run_dir.with_name(f"{run_dir.name}.log"),
    )
    with open(log, "wb") as out:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(pause),
                str(marker),
                *args,
                f"hydra.run.dir={run_dir}",
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 600
        while not marker.exists():
            assert child.poll() is None, (
                f"run ended before {what}: {log.read_text()[-3000:]}"
            )
            assert time.time() < deadline, f"{what} was not checkpointed within 600 s"
            time.sleep(0.1)
        # the whole session: the driver and its Ray workers
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.e2e
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """With ``client=topk`` the error-feedback residuals live in the run directory
    (``client_state/``, versioned by round), so the resumed run continues them (issue
    32). A run without client state (``client=plain``) resumes through the same server
    checkpoint, which this run exercises too; it is not run separately (one Ray run set
    fewer in CI)."""
    client = ["client=topk", "client.alpha=0.1"]
    base = [*BASE, *client]
    full = tmp_path / "full"
    proc = run_bouquet_sim([*base, "simulation.num_rounds=4"], full)
    assert proc.returncode == 0, proc.stderr[-3000:]

    crashed = tmp_path / "crashed"
    _sigkill_when_paused(
        PAUSING_SIM, 2, "round 2", [*base, "simulation.num_rounds=4"], crashed
    )
    assert sorted(p.name for p in (crashed / "client_state").iterdir()) == [
        "0",
        "1",
        "2",
    ]
    assert load_checkpoint(crashed)["round"] == 2
    assert [r["round"] for r in read_rows(crashed)] == [0, 1, 2]
    assert not (crashed / "final_model.npz").exists()

    # a config that differs in a way that matters is refused, naming the key
    bad = run_bouquet_sim(
        [
            *base,
            "simulation.num_rounds=4",
            "client.lr=0.2",
            f"simulation.resume={crashed}",
        ],
        tmp_path / "r0",
    )
    assert bad.returncode != 0 and "client.lr" in bad.stderr

    proc = run_bouquet_sim(
        [*base, "simulation.num_rounds=4", f"simulation.resume={crashed}"],
        tmp_path / "r1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(crashed)
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    a, b = _final(full), _final(crashed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_run_survives_crashing_hanging_and_corrupting_clients(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_bouquet_sim(
        [
            "dataset=digits",
            "simulation.num_clients=6",
            "simulation.num_rounds=3",
            "fault=mixed",  # 30% crash, 10% hang, 10% corrupt
            # seed 9 draws 5 crashes, 2 corrupt replies and one hang (round 3) over 6 x
            # 3 messages; round 1 (Ray start-up included) takes ~10 s here: the timeout
            # leaves it 3x that
            "fault.seed=9",
            "fault.hang_s=35",
            "simulation.round_timeout_s=30",
        ],
        run_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(run_dir)
    assert sum(r["clients_failed"] for r in rows) >= 5 + 2 + 1
    assert sum(r["clients_ok"] for r in rows) > 0
    reasons = [reason for r in rows for reason in r.get("drop_reasons", [])]
    assert len(reasons) == 2, reasons  # every corrupted reply was caught by the guard
    for arr in _final(run_dir).values():
        assert np.all(np.isfinite(arr))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["clients_failed"] == sum(
        r["clients_failed"] for r in rows
    )


# As PAUSING_SIM, for an asynchronous run: pauses once the checkpoint of argv[1] applied
# updates is on disk.
PAUSING_ASYNC_SIM = """
import sys, threading
from pathlib import Path
from bouquet.simulations.run import checkpoint, main
pause, marker = int(sys.argv[1]), Path(sys.argv[2])
save = checkpoint.Checkpointer.save
def save_then_pause(self, step, arrays, *, step_key="round", extra=None):
    save(self, step, arrays, step_key=step_key, extra=extra)
    if step_key == "updates" and step == pause:
        marker.write_text(str(step))
        threading.Event().wait()
checkpoint.Checkpointer.save = save_then_pause
sys.argv = ["bouquet-sim", *sys.argv[3:]]
main.main()
"""

ASYNC = [
    *BASE,
    "simulation.num_rounds=6",
    "strategy=async",
    "strategy.eval_every=3",
    "strategy.plateau_window=0",
    "simulation.checkpoint_every=4",
    "simulation.client_cpus=0.5",
]


def test_async_run_sigkilled_after_a_checkpoint_resumes_its_versions_and_updates(
    tmp_path: Path,
) -> None:
    """``strategy=async`` (sliding window on the learners) with a checkpoint every 4
    applied updates, SIGKILLed after the one of update 8, resumed: the update count and
    the model version go on from 8 to the budget of 18 (6 rounds x 3 nodes), not from
    0."""
    crashed = tmp_path / "crashed"
    _sigkill_when_paused(PAUSING_ASYNC_SIM, 8, "update 8", ASYNC, crashed)
    ckpt = load_checkpoint(crashed)
    assert (
        ckpt["updates"] == 8
        and ckpt["strategy"][-1]["__state_dict__"]["run"]["version"] == 8
    )
    assert [r["updates"] for r in read_rows(crashed)] == [0, 3, 6]
    assert (
        not (crashed / "final_model.npz").exists()
        and not (crashed / "summary.json").exists()
    )

    proc = run_bouquet_sim([*ASYNC, f"simulation.resume={crashed}"], tmp_path / "r1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics_rows(crashed)
    assert [r["updates"] for r in rows] == [0, 3, 6, 9, 12, 15, 18]
    # one version per applied update, continued
    assert [r["version"] for r in rows] == [0, 3, 6, 9, 12, 15, 18]
    assert rows[-1]["stop_reason"] == "update budget 18 reached"
    assert sum(len(r["update_log"]) for r in rows) == 18 and all(
        r["lr_scale_fallbacks"] == 0 for r in rows
    )
    # Flower's engine gives the resumed run's nodes new ids: the server says it does not
    # reuse their values
    main_log = (tmp_path / "r1" / "main.log").read_text()
    assert "async: resuming at version 8 after 8 updates" in main_log
    assert (
        "WARNING] - async: 3 of the 3 nodes in the checkpoint are not connected"
        in main_log
    )
    assert load_checkpoint(crashed)["updates"] == 18
    summary = json.loads((crashed / "summary.json").read_text())
    assert (
        summary["status"] == "ok"
        and summary["final_accuracy"] > rows[0]["accuracy"] + 0.2
    ), summary
    assert all(np.all(np.isfinite(v)) for v in _final(crashed).values())
