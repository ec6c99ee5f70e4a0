"""A private FLWR_HOME with a local simulation connection, for the e2e tests that drive
`flwr run`.

The SuperLink that ``flwr run`` starts keeps running detached; the fixture stops it by
PID (its command line holds this test's ``FLWR_HOME``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.flwrcli import free_port  # noqa: E402
from deploy.processes import flower_env  # noqa: E402
from deploy.processes import stop_tree  # noqa: E402


def _pids_with_arg(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (a path unique to this test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (
                (entry / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        if marker in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def flwr_home(tmp_path: Path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    env = flower_env(
        home,
        {
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        },
    )
    try:
        yield home, env
    finally:  # the SuperLink `flwr run` started keeps running detached: stop it by PID
        for pid in _pids_with_arg(str(home / "local-superlink")):
            stop_tree(pid)


def _flwr(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["flwr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
