"""The experiment class a config asks for, and the per-process cache of built
experiments.

:class:`~bouquet.simulations.methods.experiment.Experiment` is image classification; a
model with early exits (``model=early_exit``) takes
:class:`~bouquet.simulations.methods.early_exit.EarlyExitExperiment`, and a
recommendation dataset (``dataset.task_type=recommendation``) takes
:class:`~bouquet.simulations.methods.recsys.RecsysExperiment`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from bouquet.simulations.methods.early_exit import EarlyExitExperiment
from bouquet.simulations.methods.experiment import Experiment
from bouquet.simulations.methods.recsys import RecsysExperiment

# Experiment classes by ``cfg["dataset"]["task_type"]`` (image classification by
# default).
EXPERIMENT_TYPES: dict[str, type[Experiment]] = {
    "classification": Experiment,
    "recommendation": RecsysExperiment,
}


def experiment_class(cfg: dict[str, Any]) -> type[Experiment]:
    task_type = cfg.get("dataset", {}).get("task_type", "classification")
    if task_type not in EXPERIMENT_TYPES:
        raise ValueError(
            f"dataset.task_type={task_type!r} is unknown; allowed: "
            f"{', '.join(EXPERIMENT_TYPES)}"
        )
    if (
        task_type == "classification"
        and (cfg.get("model") or {}).get("name") == "early_exit"
    ):
        return EarlyExitExperiment
    return EXPERIMENT_TYPES[task_type]


@lru_cache(maxsize=4)
def _cached(cfg_json: str) -> Experiment:
    cfg = json.loads(cfg_json)
    return experiment_class(cfg)(cfg)


def get_experiment(cfg: dict[str, Any]) -> Experiment:
    """The process-wide cached :class:`Experiment` for ``cfg`` (data is loaded once)."""
    return _cached(json.dumps(cfg, sort_keys=True))
