"""Run one bouquet experiment on a local Flower deployment (127.0.0.1 only).

The command line of :class:`deploy.local.LocalDeployment`: start it, run one
experiment, stop every process, also on SIGTERM/SIGINT/SIGHUP.

``make deploy-demo`` runs it with defaults::

    python deploy/cli.py --nodes 2 \\
        --overrides "dataset=digits simulation.num_rounds=2"
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `deploy` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.local import DEFAULT_STATE  # noqa: E402
from deploy.local import ROOT  # noqa: E402
from deploy.local import LocalDeployment  # noqa: E402
from deploy.outcome import DeployFailed  # noqa: E402

logger = logging.getLogger("bouquet.deploy")


def _raise_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", type=int, default=2, help="SuperNodes to start (default 2)"
    )
    parser.add_argument(
        "--overrides",
        default="dataset=digits simulation.num_rounds=2",
        help="Hydra overrides, as for bouquet-sim (simulation.num_clients is set to "
        "--nodes)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="results directory (default outputs/deploy/<timestamp>)",
    )
    parser.add_argument(
        "--state-dir", default=str(DEFAULT_STATE), help="certificates, keys, logs"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="SuperLink port (0 = a free one)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds allowed for the run"
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="Flower's defaults: a fresh flwr-clientapp process per message, 3 s idle "
        "poll",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_dir = Path(
        args.run_dir or ROOT / "outputs" / "deploy" / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_signal)
    deployment = LocalDeployment(
        num_nodes=args.nodes,
        state_dir=args.state_dir,
        port=args.port,
        warm=not args.cold,
    )
    try:
        deployment.start()
        outcome = deployment.run(args.overrides, run_dir, timeout_s=args.timeout)
    except (DeployFailed, ValueError, TimeoutError, RuntimeError) as exc:
        logger.error("deployment failed: %s", exc)
        return 1
    except KeyboardInterrupt as exc:
        logger.error("interrupted (%s); stopping everything", exc)
        return 130
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # stopping has its own timeouts: let it finish
            signal.signal(sig, signal.SIG_IGN)
        deployment.stop()
    summary = outcome.summary or {}
    logger.info(
        "run %s %s: final accuracy %s, %d bytes up, %.1f s; results in %s",
        outcome.run_id,
        outcome.status,
        summary.get("final_accuracy"),
        summary.get("total_bytes_up", 0),
        outcome.wall_s,
        outcome.run_dir,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
