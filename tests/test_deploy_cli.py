"""The deployment's command line (``deploy/demo.sh`` runs it as a script) loads and
lists its options; the deployment itself is tested in ``tests/e2e/test_deploy.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_deploy_cli_runs_as_a_script_and_lists_its_options() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "cli.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    for option in ("--nodes", "--overrides", "--run-dir", "--cold", "--timeout"):
        assert option in out.stdout
    assert "127.0.0.1 only" in out.stdout
