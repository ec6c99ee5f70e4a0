"""One-line errors of ``bouquet-sim`` (exit code 2), the quiet console, and refusals
under ``flwr run``."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context
from flwr.app import RecordDict

from bouquet.simulations.run import flower_app
from bouquet.simulations.run import main as sim_main
from bouquet.simulations.run.results import RunFailed

# Hydra in-process without its logging set-up (the test process keeps its own handlers).
NO_HYDRA_LOGGING = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


def _bouquet_sim() -> list[str]:
    script = Path(sys.executable).parent / "bouquet-sim"
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "bouquet.simulations.run.main"]
    )


def test_real_bouquet_sim_refuses_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(
        [
            *_bouquet_sim(),
            "client=topk",
            "client.alpha=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert res.stderr == "bouquet-sim: error: client.alpha=2 is out of range (0, 1]\n"
    assert res.stdout == ""
    assert not (tmp_path / "run" / "summary.json").exists()  # nothing ran


def _run_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bouquet-sim",
            *overrides,
            f"hydra.run.dir={tmp_path / 'run'}",
            *NO_HYDRA_LOGGING,
        ],
    )
    sim_main.main()


@pytest.fixture
def no_full_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sim_main, "_verbose", False)
    monkeypatch.setattr(sim_main, "_failed_jobs", [])


def test_failed_run_is_one_line_with_exit_code_2(
    monkeypatch, tmp_path, capsys, no_full_error
) -> None:
    def failing_run(cfg: dict, run_dir: str) -> dict:
        raise RunFailed(
            "run failed: no client result came back (2 failed, 2 train messages sent)"
        )

    monkeypatch.setitem(sim_main.TASKS, "federated", failing_run)
    with pytest.raises(SystemExit) as info:
        _run_main(monkeypatch, tmp_path, "dataset=digits", "simulation.num_clients=2")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err
        == "bouquet-sim: error: run failed: no client result came back (2 failed, 2 "
        "train messages sent)\n"
    )
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored


def test_missing_dataset_is_one_line_with_exit_code_2(
    monkeypatch, tmp_path, capsys, no_full_error
) -> None:
    with pytest.raises(SystemExit) as info:
        _run_main(monkeypatch, tmp_path, f"dataset.root={tmp_path / 'empty'}")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("bouquet-sim: error: dataset 'mnist' not found under")
        and "make data" in err
    )
    assert err.count("\n") == 1


def test_misspelled_key_is_one_line_with_exit_code_2(
    monkeypatch, tmp_path, capsys, no_full_error
) -> None:
    with pytest.raises(SystemExit) as info:
        _run_main(monkeypatch, tmp_path, "simulation.num_clientz=3")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            "bouquet-sim: error: Could not override 'simulation.num_clientz'"
        )
        and err.count("\n") == 1
    )


@pytest.mark.parametrize("how", ["HYDRA_FULL_ERROR=1", "verbose=true"])
def test_traceback_with_hydra_full_error_or_verbose(
    monkeypatch, tmp_path, no_full_error, how: str
) -> None:
    overrides = ["client=topk", "client.alpha=2"]
    if how == "verbose=true":
        overrides.append(how)
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match=r"client\.alpha=2 is out of range"):
        _run_main(monkeypatch, tmp_path, *overrides)


def test_a_sweep_runs_every_job_and_reports_the_failures(
    monkeypatch, tmp_path, capsys, no_full_error
) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bouquet-sim",
            "--multirun",
            "client=topk",
            "client.alpha=2,3",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *NO_HYDRA_LOGGING,
        ],
    )
    with pytest.raises(SystemExit) as info:
        sim_main.main()
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last
        == "bouquet-sim: error: 2 jobs failed, the first: job 0: client.alpha=2 is "
        "out of range (0, 1]"
    )


# -------------------------------------------------------------------------- the console
@pytest.fixture
def console_and_file(tmp_path: Path):
    """Root logger with one console and one file handler (as Hydra sets it up); restored
    after."""
    root, flwr_logger = logging.getLogger(), logging.getLogger("flwr")
    saved = (root.handlers[:], root.level, flwr_logger.level)
    flwr_levels = [(h, h.level) for h in flwr_logger.handlers]
    console, file = io.StringIO(), tmp_path / "main.log"
    fmt = logging.Formatter("[%(name)s][%(levelname)s] - %(message)s")
    handlers = [logging.StreamHandler(console), logging.FileHandler(file)]
    for h in handlers:
        h.setFormatter(fmt)
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    flwr_logger.setLevel(logging.DEBUG)
    # a library imported earlier in this process may have set its own loggers' level
    # (MLflow does for alembic once the tracking tests imported it): start each of those
    # from the defaults
    third_party = [logging.getLogger(n) for n in ("alembic", "alembic.runtime.plugins")]
    third_saved = [(lg, lg.level, lg.propagate, lg.disabled) for lg in third_party]
    for lg in third_party:
        lg.setLevel(logging.NOTSET)
        lg.propagate, lg.disabled = True, False
    yield console, file
    for lg, level, propagate, disabled in third_saved:
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled
    for h in handlers:
        h.close()
    root.handlers[:], _, _ = saved
    root.setLevel(saved[1])
    flwr_logger.setLevel(saved[2])
    for h, level in flwr_levels:
        h.setLevel(level)


def _log_a_run() -> None:
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.debug("Terminated RayBackend")
    flwr_logger.info("[ROUND 1/1]")
    logging.getLogger("alembic.runtime.plugins").info(
        "setup plugin alembic.autogenerate.schemas"
    )
    logging.getLogger("bouquet.simulations.run.serverapp").info("2 nodes connected")
    logging.getLogger("bouquet.progress").info("round 1: accuracy=0.9")
    flwr_logger.warning(
        "DEPRECATED FEATURE: The `run_simulation` function is deprecated"
    )
    flwr_logger.warning("round 1 skipped: 0 usable replies")
    flwr_logger.error(
        "Traceback (most recent call last):\n  File x\nInjectedCrash: injected crash "
        "(partition 1)"
    )


def test_quiet_console_shows_progress_and_warnings_only(console_and_file) -> None:
    console, file = console_and_file
    sim_main.quiet_console(verbose=False)
    _log_a_run()
    lines = console.getvalue().splitlines()
    assert lines == [
        "[bouquet.progress][INFO] - round 1: accuracy=0.9",
        "[flwr][WARNING] - round 1 skipped: 0 usable replies",
        "[flwr][ERROR] - Traceback (most recent call last): ... InjectedCrash: "
        "injected crash (partition 1)",
    ]
    logged = file.read_text()  # everything, in full
    for text in (
        "Terminated RayBackend",
        "[ROUND 1/1]",
        "alembic",
        "2 nodes connected",
        "DEPRECATED",
        "  File x",
    ):
        assert text in logged
    assert all(
        h.level > logging.CRITICAL
        for h in logging.getLogger("flwr").handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
    )


def test_verbose_console_shows_everything(console_and_file) -> None:
    console, _ = console_and_file
    sim_main.quiet_console(verbose=False)
    sim_main.quiet_console(verbose=True)  # undoes the filter
    _log_a_run()
    text = console.getvalue()
    assert (
        "Terminated RayBackend" in text
        and "  File x" in text
        and "2 nodes connected" in text
    )


# ----------------------------------------------------------------------------- flwr run
def _context(overrides: str, run_dir: Path) -> Context:
    run_config = {
        flower_app.RUN_CONFIG_OVERRIDES: overrides,
        flower_app.RUN_CONFIG_RUN_DIR: str(run_dir),
    }
    return Context(
        run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ("client=topk client.alpha=2", "client.alpha=2 is out of range (0, 1]"),
        (
            "strategy=async server=adjust",
            "strategy=async and server=adjust cannot be combined",
        ),
        ("simulation.num_clientz=3", "Could not override 'simulation.num_clientz'"),
    ],
)
def test_server_app_refuses_before_the_first_round(
    tmp_path, caplog, overrides: str, reason: str
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="bouquet.simulations.run.flower_app"),
        pytest.raises(Exception) as info,
    ):
        flower_app._server_main(None, _context(overrides, tmp_path / "run"))  # type: ignore[arg-type]
    # Flower puts this into the run's status details
    assert reason in " ".join(str(info.value).split())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and reason in summary["reason"]
    assert any(
        "run 7 refused" in r.getMessage() and reason in r.getMessage()
        for r in caplog.records
    )


def test_client_app_refuses_the_same_config() -> None:
    cfg = flower_app.compose_config("client=topk client.alpha=2")
    with pytest.raises(ValueError, match=r"client\.alpha=2 is out of range"):
        flower_app._client_app_for(json.dumps(cfg, sort_keys=True))


@pytest.mark.parametrize(
    "overrides,named",
    [
        (
            ["downlink=stc", "strategy=async"],
            "downlink=stc and strategy=async cannot be combined",
        ),
        (
            ["downlink=topk", "downlink.alpha=0"],
            "downlink.alpha=0 is out of range (0, 1]",
        ),
        (["downlink=ternary", "downlink.alpha=0.1"], "downlink.alpha"),
    ],
)
def test_downlink_combinations_it_cannot_serve_are_refused(
    monkeypatch, tmp_path, capsys, no_full_error, overrides, named
) -> None:
    with pytest.raises(SystemExit) as info:
        _run_main(monkeypatch, tmp_path, "dataset=digits", *overrides)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_partition_flwr_datasets_cannot_cut_is_refused_before_start(
    monkeypatch, tmp_path, capsys, no_full_error
):
    """Dirichlet with a minimum the population cannot meet: one line, exit code 2,
    before any round (issue 32)."""
    with pytest.raises(SystemExit) as info:
        _run_main(
            monkeypatch,
            tmp_path,
            "dataset=digits",
            "simulation.num_clients=400",
            "partition.alpha=0.05",
            "partition.min_partition_size=4",
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "bouquet-sim: error: partition=dirichlet cannot give each of "
        "simulation.num_clients=400"
    )
    assert "partition.min_partition_size=0" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_tracker_whose_package_is_missing_is_refused_before_start(
    monkeypatch, tmp_path, capsys, no_full_error
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real(name, *a),
    )
    with pytest.raises(SystemExit) as info:
        _run_main(monkeypatch, tmp_path, "dataset=digits", "logger=mlflow")
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "bouquet-sim: error: logger=mlflow needs the mlflow package: "
        "pip install 'flwr-bouquet[mlflow]'\n"
    )
