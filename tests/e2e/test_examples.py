"""``examples/quickstart-compressed``: a plain Flower app using bouquet runs with ``flwr
run`` on a local simulation federation, completes (read from ``flwr ls``: ``flwr run``
exits 0 on a failed run), and its uploads and (from round 2) its broadcasts are much
smaller than dense (issues 18, 29)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from conftest import ROOT
from flwr_helpers import _flwr
from flwr_helpers import _pids_with_arg

from deploy.flwrcli import parse_json_output
from deploy.processes import stop_tree

APP = ROOT / "examples" / "quickstart-compressed"


def test_quickstart_compressed_runs_and_uploads_less(flwr_home, tmp_path: Path) -> None:
    home, env = flwr_home
    out_file = tmp_path / "metrics.json"
    out = _flwr(
        env,
        "run",
        str(APP),
        "local",
        "--stream",
        "--run-config",
        f"num-server-rounds=2 out-file='{out_file}'",
        "--federation-config",
        "num-supernodes=2 client-resources-num-cpus=1",
        timeout=420,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    run_id = re.search(r"Successfully started run (\d+)", text).group(1)  # type: ignore[union-attr]
    runs = parse_json_output(
        _flwr(env, "ls", "local", "--run-id", run_id, "--format", "json").stdout
    )["runs"]
    assert runs[0]["status"] == "finished:completed", runs[0]
    metrics = json.loads(out_file.read_text())
    for rnd in ("1", "2"):
        train = metrics["train"][rnd]
        assert 0 < train["bouquet-bytes-up"] < train["bouquet-dense-bytes"] / 5, train
        assert train["bouquet-dropped"] == 0 and "label-histogram" not in train
        assert train["bouquet-sync-mismatches"] == 0
    # round 1 broadcasts the dense model (new nodes), round 2 the STC step: both
    # directions compressed
    down = metrics["train"]["2"]
    assert 0 < down["bouquet-bytes-down"] < down["bouquet-dense-bytes-down"] / 5, down
    assert "Compressed: round 1" in text  # bouquet's line in Flower's log
    assert metrics["eval"]["2"]["accuracy"] > 0.3
    for pid in _pids_with_arg(str(home / "local-superlink")):
        stop_tree(pid)


def test_a_copy_outside_the_repository_runs_with_flowers_default_settings(
    flwr_home, tmp_path: Path
) -> None:
    """Issue 35: the example copied anywhere, run with Flower's runtime dependency
    installation on (its default; the other tests turn it off): it must complete, not
    fail with exit code 608."""
    import shutil

    home, env = flwr_home
    env = {
        k: v
        for k, v in env.items()
        if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
    }
    app = tmp_path / "my-app"
    shutil.copytree(
        APP, app, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = subprocess.run(
        [
            "flwr",
            "run",
            str(app),
            "local",
            "--stream",
            "--run-config",
            "num-server-rounds=1",
            "--federation-config",
            "num-supernodes=2 client-resources-num-cpus=1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        check=False,
    )
    text = out.stdout + out.stderr
    assert "608" not in text and out.returncode == 0, text[-3000:]
    run_id = re.search(r"Successfully started run (\d+)", text).group(1)  # type: ignore[union-attr]
    runs = parse_json_output(
        _flwr(env, "ls", "local", "--run-id", run_id, "--format", "json").stdout
    )["runs"]
    assert runs[0]["status"] == "finished:completed", runs[0]
    assert "Compressed: round 1" in text
