"""``bouquet-sim`` joins an existing Ray cluster (``RAY_ADDRESS``): a Ray head is
started on
127.0.0.1 by this test, a 2-round run uses it, and the head is stopped by PID (issue
18)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from conftest import ROOT
from conftest import run_bouquet_sim
from shared_ray import port_open
from shared_ray import start_ray_head

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.processes import alive  # noqa: E402
from deploy.processes import descendants  # noqa: E402
from deploy.processes import stop_tree  # noqa: E402


def test_bouquet_sim_joins_an_existing_ray_cluster(tmp_path: Path, monkeypatch) -> None:
    # Ray's socket paths must stay < 108 bytes
    temp = Path(tempfile.mkdtemp(prefix="bqray", dir="/tmp"))
    head, port = start_ray_head(temp, 2)
    try:
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        proc = run_bouquet_sim(
            [
                "dataset=digits",
                "simulation.num_clients=2",
                "simulation.num_rounds=2",
                "verbose=true",
            ],
            tmp_path / "run",
        )
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text[-3000:]
        # joined, not started: the run's driver and its client actors logged into the
        # head's session
        drivers = list(temp.glob("session_*/logs/python-core-driver-*.log"))
        actors = [
            p
            for p in temp.glob("session_*/logs/worker-*.out")
            if "ClientAppActor" in p.read_text(errors="replace")
        ]
        assert drivers and actors, sorted(
            p.name for p in temp.glob("session_*/logs/*")
        )[:40]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["rounds"] == 2
        # the run left the cluster running: it is not the run's own
        assert port_open(port)
    finally:
        tree = [head.pid, *descendants(head.pid)]
        stop_tree(head.pid, timeout_s=30, popen=head.popen)
        shutil.rmtree(temp, ignore_errors=True)
    assert not any(alive(p) for p in tree)
