"""A hostile probe of ``bouquet-sim`` (issue 30, class 10): every refusal is one line
with exit
code 2, and nothing on disk is touched before the checks pass.

Run through the CLI entry point (``main()`` in process, as
tests/simulations/test_errors.py does; the real console script once per kind of check
that touches the disk).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bouquet.simulations.run import main as sim_main
from bouquet.simulations.run.checkpoint import save_checkpoint

NO_HYDRA_LOGGING = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
SMALL = ["dataset=digits", "simulation.num_clients=2", "simulation.num_rounds=1"]
LONG = "a" * 5000


@pytest.fixture
def no_full_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sim_main, "_verbose", False)
    monkeypatch.setattr(sim_main, "_failed_jobs", [])


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace the simulation engine: a config that passes every check is recorded, not
    run."""
    from bouquet.simulations.run import runner

    started: list[dict] = []

    def fake_run_simulation(**kwargs: Any) -> None:
        started.append(kwargs)
        raise AssertionError("the simulation started: a check is missing")

    monkeypatch.setattr(runner, "run_simulation", fake_run_simulation)
    monkeypatch.setattr(runner, "make_server_app", lambda cfg, out: None)
    monkeypatch.setattr(runner, "make_client_app", lambda cfg, state_dir=None: None)
    return started


def _refused(monkeypatch, tmp_path: Path, capsys, *overrides: str) -> str:
    """Run ``bouquet-sim`` in process; assert exit code 2 and one stderr line; return
    the line."""
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["bouquet-sim", *overrides, f"hydra.run.dir={run_dir}", *NO_HYDRA_LOGGING],
    )
    with pytest.raises(SystemExit) as info:
        sim_main.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("bouquet-sim: error: ")
        and err.endswith("\n")
        and err.count("\n") == 1
    ), err
    for name in ("summary.json", "config.json", "metrics.jsonl", "checkpoint"):
        assert not (run_dir / name).exists()
    return err.removeprefix("bouquet-sim: error: ").rstrip("\n")


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory`` with its bytes and mtime (nanoseconds)."""
    return {
        str(p.relative_to(directory)): (
            p.read_bytes() if p.is_file() else b"",
            p.stat().st_mtime_ns,
        )
        for p in sorted(directory.rglob("*"))
    }


# -------------------------------------------------- (a) resume into a foreign directory
def test_resume_into_a_directory_that_is_not_a_run_touches_nothing(
    monkeypatch, tmp_path, capsys, no_full_error, no_run
):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    # the file the probe saw deleted
    (foreign / "summary.json").write_text('{"mine": true}')
    (foreign / "notes.txt").write_text("keep me")
    before = _snapshot(foreign)
    line = _refused(
        monkeypatch, tmp_path, capsys, *SMALL, f"simulation.resume={foreign}"
    )
    assert (
        line
        == f"simulation.resume: {foreign} is not the directory of a bouquet run (no "
        "config.json, no checkpoint/); nothing was changed in it"
    )
    assert _snapshot(foreign) == before and no_run == []


def test_resume_into_a_missing_directory_or_a_file(
    monkeypatch, tmp_path, capsys, no_full_error, no_run
):
    assert (
        _refused(
            monkeypatch,
            tmp_path,
            capsys,
            *SMALL,
            f"simulation.resume={tmp_path / 'nope'}",
        )
        == f"simulation.resume='{tmp_path / 'nope'}': no such run directory"
    )
    (tmp_path / "file").write_text("x")
    assert "no such run directory" in _refused(
        monkeypatch, tmp_path, capsys, *SMALL, f"simulation.resume={tmp_path / 'file'}"
    )


def _composed(*overrides: str) -> dict:
    from hydra import compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _a_run(directory: Path, cfg: dict) -> None:
    from bouquet.simulations.run.checkpoint import rng_state

    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "summary.json").write_text('{"status": "failed"}')
    (directory / "metrics.jsonl").write_text('{"round": 0}\n')
    save_checkpoint(
        directory,
        {
            "round": 1,
            "arrays": {"w": np.ones(2)},
            "strategy": [],
            "rng": rng_state(),
            "config": cfg,
        },
    )


def test_a_resume_whose_config_differs_is_refused_before_anything_is_written(
    monkeypatch, tmp_path, capsys, no_full_error, no_run
):
    run = tmp_path / "crashed"
    _a_run(run, _composed(*SMALL, "client.batch_size=16"))
    before = _snapshot(run)
    line = _refused(monkeypatch, tmp_path, capsys, *SMALL, f"simulation.resume={run}")
    assert line == f"cannot resume {run}: config differs in client.batch_size"
    assert _snapshot(run) == before and no_run == []  # summary.json is still there


def test_a_run_that_passes_every_check_does_start(
    monkeypatch, tmp_path, capsys, no_full_error, no_run
):
    """Control for the tests above: the same resume with the same config reaches the
    engine."""
    run = tmp_path / "crashed"
    _a_run(run, _composed(*SMALL, f"simulation.resume={run}"))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bouquet-sim",
            *SMALL,
            f"simulation.resume={run}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *NO_HYDRA_LOGGING,
        ],
    )
    with pytest.raises(AssertionError, match="the simulation started"):
        sim_main.main()
    assert len(no_run) == 1


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_the_real_cli_refuses_an_old_pickle_checkpoint_without_running_it(
    tmp_path: Path,
) -> None:
    """``checkpoint.pkl`` of an older bouquet, holding an exploit behind a recomputed
    digest."""
    marker, run = tmp_path / "pwned", tmp_path / "old-run"
    run.mkdir()
    body = pickle.dumps({"round": 1, "rng": _Exploit(marker)})
    (run / "checkpoint.pkl").write_bytes(
        b"BOUQUET-CKPT-1\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    )
    (run / "config.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    before = _snapshot(run)
    script = Path(sys.executable).parent / "bouquet-sim"
    cmd = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "bouquet.simulations.run.main"]
    )
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(
        [*cmd, *SMALL, f"simulation.resume={run}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr == (
        f"bouquet-sim: error: {run / 'checkpoint.pkl'} is a pickle checkpoint of an "
        "older bouquet: "
        "it is never loaded (unpickling can run code); resume is refused, start a "
        "new run\n"
    )
    assert not marker.exists() and _snapshot(run) == before


# --------------------------------------------------------- (b) values that become paths
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            f"dataset={LONG}",
            f"dataset='{'a' * 40}'... (5000 characters) is not a usable config group "
            "choice (it names "
            "the file dataset/<choice>.yaml): it is 5005 bytes long; allowed: at "
            "most 4096",
        ),
        (
            f"model={'m' * 300}",
            "one of its components is 305 bytes long; allowed: at most 255 per "
            "component",
        ),
        (f"dataset=digits,{LONG}", "dataset='aaaa"),  # a sweep: every choice
        (f"+experiment={LONG}", "experiment='aaaa"),
        (
            f"dataset.root=/tmp/{LONG}",
            f"dataset.root='/tmp/{'a' * 35}'... (5005 characters) is not a usable "
            "path: "
            "it is 5005 bytes long; allowed: at most 4096",
        ),
        (f"dataset.root=/tmp/{'r' * 300}/x", "dataset.root='/tmp/rrrr"),
        (f"simulation.resume=/{LONG}", "simulation.resume='/aaaa"),
        (f"hydra.run.dir=/tmp/{LONG}", "hydra.run.dir='/tmp/aaaa"),
    ],
)
def test_over_long_paths_are_refused_in_one_line(
    monkeypatch, tmp_path, capsys, no_full_error, no_run, override: str, expected: str
) -> None:
    line = _refused(monkeypatch, tmp_path, capsys, *SMALL, override)
    assert line.startswith(expected) or expected in line, line
    assert len(line) < 300


def test_an_over_long_architecture_path_is_refused(
    monkeypatch, tmp_path, capsys, no_full_error, no_run
) -> None:
    line = _refused(
        monkeypatch,
        tmp_path,
        capsys,
        "dataset=digits",
        "model=early_exit",
        "client=early_exit",
        f"model.architecture={LONG}.json",
    )
    assert (
        line.startswith("model.architecture='aaaa") and "is not a usable path" in line
    )


# --------------------------------------------------- (c) impossible train_config values
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+train_config.lr=inf", "train_config.lr=inf is out of range (0, inf)"),
        ("+train_config.lr=nan", "train_config.lr=nan is out of range (0, inf)"),
        ("+train_config.lr=-0.1", "train_config.lr=-0.1 is out of range (0, inf)"),
        ("+train_config.lr=0", "train_config.lr=0 is out of range (0, inf)"),
        (
            "+train_config.lr=fast",
            "train_config.lr='fast' has the wrong type; allowed: a number in (0, inf)",
        ),
        (
            "+train_config.local-epochs=-1",
            "train_config.local-epochs=-1 is out of range [0, inf)",
        ),
        (
            "+train_config.local-epochs=1.5",
            "train_config.local-epochs=1.5 has the wrong type; allowed: an integer "
            "in [0, inf)",
        ),
        (
            "+train_config.local-steps=0",
            "train_config.local-steps=0 is out of range [1, inf)",
        ),
        (
            "+train_config.momentum=-inf",
            "train_config.momentum=-inf is not finite; allowed: finite numbers",
        ),
        (
            "+train_config.mix=[1,a]",
            "train_config.mix=[1, 'a'] mixes element types (a ConfigRecord list "
            "holds one type)",
        ),
        (
            "+train_config.nested={a: 1}",
            "train_config.nested={a: 1} is not a ConfigRecord value",
        ),
        (
            "+train_config.none=null",
            "train_config.none=null is not a ConfigRecord value",
        ),
        (
            "+train_config.server-round=3",
            "train_config.server-round is set by the server, not the config: "
            "Flower's strategies (the round number); allowed: other keys",
        ),
        (
            "+train_config.proximal-mu=0.1",
            "train_config.proximal-mu is set by the server, not the config: "
            "strategy=fedprox (set strategy.proximal_mu)",
        ),
        (
            "+train_config.model-version=0",
            "train_config.model-version is set by the server",
        ),
        (
            "+train_config.submodel-depth=1",
            "train_config.submodel-depth is set by the server",
        ),
        (
            "+train_config.prev-staleness=1",
            "train_config.prev-staleness is set by the server",
        ),
        (
            "+train_config.applied-updates=1",
            "train_config.applied-updates is set by the server",
        ),
        ("+train_config.node-info=1", "train_config.node-info is set by the server"),
        (
            "+train_config.bouquet-downlink=1",
            "train_config.bouquet-downlink is set by the server, not the config: "
            "bouquet (keys starting with 'bouquet-' are reserved)",
        ),
    ],
)
def test_impossible_train_config_values_are_refused(
    monkeypatch, tmp_path, capsys, no_full_error, no_run, override: str, expected: str
) -> None:
    line = _refused(monkeypatch, tmp_path, capsys, *SMALL, override)
    assert line.startswith(expected), line


def test_every_key_the_server_writes_is_refused() -> None:
    """The table follows bouquet.keys: every key the strategies write into a train
    config."""
    from bouquet import keys
    from bouquet.simulations.config.values import SERVER_SET_KEYS
    from bouquet.simulations.config.values import check_train_config

    written = {
        keys.SERVER_ROUND,
        keys.PROXIMAL_MU,
        keys.MODEL_VERSION,
        keys.SUBMODEL_DEPTH,
        keys.PREV_STALENESS,
        keys.APPLIED_UPDATES,
        keys.NODE_INFO,
    }
    assert written <= set(SERVER_SET_KEYS)
    for key in written:
        with pytest.raises(
            ValueError, match=f"train_config.{key} is set by the server"
        ):
            check_train_config({key: 1})
    check_train_config(
        {
            keys.LR: 0.05,
            keys.LOCAL_EPOCHS: 2,
            keys.LOCAL_STEPS: 3,
            "note": "x",
            "w": [1.0, 2.0],
        }
    )


# -------------------------------------------------------- (d) options a dataset ignores
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["dataset.root=/x"],
            "dataset.root='/x' is not used by dataset=digits (bundled with "
            "scikit-learn, cached "
            "under $BOUQUET_DATA or ~/.cache/bouquet/data); allowed: null",
        ),
        (
            ["+dataset.train.path=/x"],
            "dataset.train.path='/x' is not followed by any client; allowed: "
            "local_epochs, lr",
        ),
        (
            ["+dataset.path=/x"],
            "dataset.path is not a key of dataset=digits; allowed: _target_, name, "
            "root, train",
        ),
        (["dataset.path=/x"], "Could not override 'dataset.path'."),
        (["+dataset.root_dir=/x"], "dataset.root_dir is not a key of dataset=digits"),
    ],
)
def test_path_options_a_dataset_ignores_are_refused(
    monkeypatch,
    tmp_path,
    capsys,
    no_full_error,
    no_run,
    overrides: list[str],
    expected: str,
) -> None:
    line = _refused(monkeypatch, tmp_path, capsys, *SMALL, *overrides)
    assert line.startswith(expected), line
