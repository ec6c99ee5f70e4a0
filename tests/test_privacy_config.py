"""``privacy=`` in ``bouquet-sim`` (issue 34): refusals in one line with exit code 2,
and a real run
that reports the epsilon its rounds spent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import metrics_rows
from hydra import compose
from hydra import initialize_config_module
from omegaconf import OmegaConf

from bouquet.simulations.config.validate import validate_config
from bouquet.strategies.rdp import epsilon_of


def _bouquet_sim() -> list[str]:
    script = Path(sys.executable).parent / "bouquet-sim"
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "bouquet.simulations.run.main"]
    )


def _run(
    tmp_path: Path, *overrides: str, timeout: float = 180
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [*_bouquet_sim(), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


def _cfg(*overrides: str) -> dict[str, Any]:
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=["dataset=digits", *overrides])
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def test_secagg_with_per_client_positions_is_refused_in_one_line_naming_shared_topk(
    tmp_path: Path,
) -> None:
    res = _run(tmp_path, "privacy=secagg", "client=topk")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        "bouquet-sim: error: privacy=secagg and client=topk"
    )
    assert "client=shared_topk" in res.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["privacy=secagg", "client=stc"], "client=shared_topk"),
        (["privacy=secagg", "client=ternary"], "client=shared_topk"),
        (
            ["privacy=secagg", "client=early_exit", "model=early_exit"],
            "image-classification clients",
        ),
        (["privacy=secagg", "strategy=fedprox", "downlink=topk"], "downlink=none"),
        (["client=shared_topk", "strategy=kl_weighted"], "strategy=fedavg|fedprox"),
        (["client=shared_topk", "downlink=stc"], "downlink=none"),
        (
            ["client=shared_topk", "client.alpha=0"],
            "client.alpha=0 is out of range (0, 1]",
        ),
        (
            ["privacy=dp_client", "privacy.noise_multiplier=0"],
            "privacy.noise_multiplier=0 is out of range (0, inf)",
        ),
        (
            ["privacy=dp_server", "privacy.delta=1"],
            "privacy.delta=1 is out of range (0, 1)",
        ),
        (
            ["privacy=dp_client", "privacy.clip_norm=-1"],
            "privacy.clip_norm=-1 is out of range (0, inf)",
        ),
        (["privacy=dp_client", "strategy=kl_weighted"], "strategy=fedavg|fedprox"),
        (["privacy=dp_server", "strategy=async"], "strategy=fedavg|fedprox"),
        (["privacy=none", "+privacy.clip_norm=1"], "privacy.clip_norm"),
    ],
)
def test_impossible_privacy_settings_are_refused_before_start(
    overrides: list[str], named: str
) -> None:
    with pytest.raises(ValueError) as err:
        validate_config(_cfg(*overrides))
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["privacy=dp_client", "client=stc"],
        ["privacy=dp_server", "client=topk"],
        ["privacy=dp_client", "strategy=fedprox"],
        ["privacy=secagg", "client=shared_topk"],
        ["client=shared_topk"],
        ["privacy=secagg"],
        ["client=shared_topk", "privacy=dp_client"],
    ],
)
def test_possible_settings_pass(overrides: list[str]) -> None:
    validate_config(_cfg(*overrides))


def test_dp_client_with_stc_runs_and_reports_the_epsilon_of_its_rounds(
    tmp_path: Path,
) -> None:
    res = _run(
        tmp_path,
        "dataset=digits",
        "client=stc",
        "privacy=dp_client",
        "privacy.clip_norm=1.0",
        "privacy.noise_multiplier=0.5",
        "simulation.num_clients=3",
        "simulation.num_rounds=2",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = metrics_rows(tmp_path / "run")
    assert summary["status"] == "ok" and summary["clients_failed"] == 0
    # all 3 clients every round (q = 1), every reply aggregated (z_eff = z): two
    # Gaussian releases
    assert math.isfinite(summary["epsilon"]) and summary["epsilon"] == pytest.approx(
        epsilon_of([(1.0, 0.5)] * 2, 1e-5)
    )
    assert [r["epsilon"] for r in rows][1] == pytest.approx(
        epsilon_of([(1.0, 0.5)], 1e-5)
    )
    assert summary["total_bytes_up"] > 0


def test_secagg_with_shared_topk_runs_and_uploads_at_least_5x_fewer_bytes_than_plain(
    tmp_path: Path,
) -> None:
    small = ["dataset=digits", "simulation.num_clients=3", "simulation.num_rounds=2"]
    summaries = {}
    for name, extra in (
        ("plain", ["client=plain"]),
        ("secagg", ["client=shared_topk", "privacy=secagg"]),
    ):
        (tmp_path / name).mkdir()
        res = _run(tmp_path / name, *small, *extra, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        summaries[name] = json.loads(
            (tmp_path / name / "run" / "summary.json").read_text()
        )
    assert (
        summaries["secagg"]["status"] == "ok"
        and summaries["secagg"]["clients_failed"] == 0
    )
    assert (
        summaries["secagg"]["total_bytes_up"] * 5
        <= summaries["plain"]["total_bytes_up"]
    )
    rows = [
        json.loads(line)
        for line in (tmp_path / "secagg" / "run" / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    # every round summed all 3 masked vectors
    assert [r.get("secagg_peers") for r in rows if r["round"] > 0] == [3, 3]
