"""Run a configured experiment in Flower's simulation engine (the one place that calls
it)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from flwr.simulation import run_simulation

from bouquet.simulations.run.engine_poll import install as install_engine_poll
from bouquet.simulations.run.results import SUMMARY_FILE
from bouquet.simulations.run.results import RunFailed
from bouquet.simulations.run.resume import check_resume
from bouquet.simulations.run.serverapp import CLIENT_STATE_DIR
from bouquet.simulations.run.serverapp import make_client_app
from bouquet.simulations.run.serverapp import make_server_app

logger = logging.getLogger(__name__)


def run_in_simulation(
    cfg: dict[str, Any], run_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Run ``cfg`` with ``flwr.simulation.run_simulation`` and return the run's summary.

    ``run_simulation`` returns normally even when every client failed or the ServerApp
    raised; this function reads the ``summary.json`` the ServerApp wrote and raises
    :class:`~bouquet.simulations.run.results.RunFailed` with the reason instead.
    """

    # A resumed run writes into the run it continues: every check of the resume comes
    # before anything is written (the ServerApp loads the checkpoint again, with its
    # warnings).
    out, _ = check_resume(cfg, run_dir, warn=False)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / SUMMARY_FILE
    summary_path.unlink(missing_ok=True)
    sim = cfg["simulation"]
    init_args: dict[str, Any] = {"include_dashboard": False}
    # joining an existing Ray cluster: it owns its CPUs
    if not os.environ.get("RAY_ADDRESS"):
        init_args["num_cpus"] = (
            int(sim["total_cpus"]) if sim.get("total_cpus") else os.cpu_count()
        )
    backend_config = {
        "client_resources": {"num_cpus": float(sim["client_cpus"]), "num_gpus": 0.0},
        "init_args": init_args,
    }
    # "1": Flower's own loop (for comparisons)
    if os.environ.get("BOUQUET_FLOWER_SIM_LOOP") != "1":
        # Flower's message loop, visiting only the nodes with a message (issue 32)
        install_engine_poll()
    run_simulation(
        server_app=make_server_app(cfg, out),
        client_app=make_client_app(cfg, out / CLIENT_STATE_DIR),
        num_supernodes=int(sim["num_clients"]),
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    if not summary_path.exists():
        raise RunFailed(
            f"the ServerApp ended without writing {summary_path}; see the log above "
            "for its error"
        )
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "ok":
        raise RunFailed(f"run failed: {summary.get('reason', 'unknown reason')}")
    summary["run_dir"] = str(out)
    return summary
