"""``bouquet-sim``: the Hydra entry point.

Composes ``conf/config.yaml`` with the command-line overrides, validates the config, runs it in
Flower's simulation engine and writes the results into the Hydra run directory::

    bouquet-sim dataset=digits simulation.num_clients=3 simulation.num_rounds=2
    bouquet-sim --multirun partition=iid,dirichlet seed=0,1,2
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from bouquet.simulations.runner import run_in_simulation
from bouquet.simulations.search import run_search
from bouquet.simulations.validate import validate_run

logger = logging.getLogger("bouquet.progress")

# task name -> function(cfg, run_dir) -> summary
TASKS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {"federated": run_in_simulation, "search": run_search}


def run_task(cfg: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Validate ``cfg`` and run its task (default ``federated``)."""
    task = cfg.get("task", "federated")
    if task not in TASKS:
        raise ValueError(f"task={task!r} is unknown; allowed: {', '.join(TASKS)}")
    validate_run(cfg)
    return TASKS[task](cfg, run_dir)


def quiet_flower(verbose: bool) -> None:
    """Keep Flower's own INFO chatter out of the console unless ``verbose=true``.

    Flower's logger keeps its own console handler; its records still reach the run's
    ``main.log`` through Hydra's root handler.
    """
    flwr_logger = logging.getLogger("flwr")
    for handler in flwr_logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.DEBUG if verbose else logging.WARNING)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = HydraConfig.get().runtime.output_dir
    quiet_flower(verbose=bool(cfg.get("verbose", False)))
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise ValueError("the composed config is not a mapping")
    summary = run_task(container, run_dir)
    finals = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("final_") and isinstance(v, float))
    logger.info(
        "done: %s, %.3f MB up; results in %s",
        finals or "no evaluation",
        summary.get("total_bytes_up", 0) / 1e6,
        summary.get("run_dir", run_dir),
    )
    acc = summary.get("final_accuracy")
    return float(acc) if acc is not None else None


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
