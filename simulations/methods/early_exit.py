"""Server-side evaluation of early-exit models: every exit, every round, and the best
exit model.

Method S2 (cloud-edge training with NAS), step S5: after each round the aggregated
early-exit model is validated and the best exit model is kept (BranchyNet,
Teerapittayanon et al., 2016; DepthFL, Kim et al., ICLR 2023).
:class:`EarlyExitExperiment` is chosen by
:func:`bouquet.simulations.methods.experiments.experiment_class` when ``model.name ==
"early_exit"``.

Each round's ``metrics.jsonl`` line gets, on the server test set, ``accuracy_exit_i``
and ``loss_exit_i`` for ``i = 1..L``, ``total_loss`` (``sum_i lambda_i CE_i``), and
``accuracy`` / ``loss`` of the last exit (comparable with single-exit runs), and the
cost of running up to each exit: ``macs_exit_i`` (multiply-accumulates per sample) and
``params_exit_i``.

Best exit model: on the validation set (the server's class-balanced slice of the
training data, ``server.shared_fraction``; the test set when that is 0, marked
``selected_on: test``), the round's best exit is the one with the highest accuracy
(ties: lower loss, then the shallower exit); a round replaces the kept model when its
best exit's accuracy is higher, or equal with a lower total loss. The kept exit model
(stem, stages 1..i, exits 1..i) is written to ``best_exit_model.npz`` with
``best_exit.json`` into the run directory (Hydra's output directory under
``bouquet-sim``, or :attr:`EarlyExitExperiment.run_dir` when set).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bouquet.models.early_exit import EarlyExitNet
from bouquet.models.early_exit import depth_names
from bouquet.models.early_exit import evaluate_exits
from bouquet.models.early_exit import exit_costs
from bouquet.models.training import set_weights
from bouquet.simulations.methods.experiment import Experiment

logger = logging.getLogger(__name__)

BEST_MODEL_FILE = "best_exit_model.npz"
BEST_INFO_FILE = "best_exit.json"


def best_exit(accuracy: list[float], loss: list[float]) -> int:
    """1-based index of the best exit: highest accuracy, then lower loss, then
    shallower."""
    order = sorted(range(len(accuracy)), key=lambda i: (-accuracy[i], loss[i], i))
    return order[0] + 1


def hydra_output_dir() -> Path | None:
    """The running Hydra job's output directory, or ``None`` outside a Hydra job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - composed configs without a job have no output dir
        return None
    return None


class EarlyExitExperiment(Experiment):
    """:class:`Experiment` whose server-side evaluation covers every exit (module
    docstring)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.run_dir: Path | None = None
        self.best: dict[str, Any] | None = None
        self._round = 0
        self._bound_dir: Path | None = None
        self._warned = False
        self._costs: dict[str, list[int]] | None = None

    def _validation(self) -> tuple[np.ndarray, np.ndarray, str]:
        idx = self.server_shared_indices
        if len(idx):
            return (
                self.dataset.x_train[idx],
                self.dataset.y_train[idx],
                "server-validation",
            )
        return self.dataset.x_test, self.dataset.y_test, "test"

    def _output_dir(self) -> Path | None:
        out = self.run_dir or hydra_output_dir()
        if out != self._bound_dir:  # a new run in this process: start a fresh selection
            self._bound_dir, self.best, self._round = out, None, 0
        return out

    def evaluate_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Evaluate every exit on the test set; update the best exit model on
        validation."""
        model = self.build_model()
        if not isinstance(model, EarlyExitNet):
            raise ValueError(
                "EarlyExitExperiment needs model.name=early_exit, built "
                f"{type(model).__name__}"
            )
        set_weights(model, arrays)
        out_dir = self._output_dir()
        test = evaluate_exits(model, self.dataset.x_test, self.dataset.y_test)
        metrics: dict[str, float] = {
            "accuracy": test["accuracy"][-1],
            "loss": test["loss"][-1],
            "total_loss": test["total_loss"],
        }
        if self._costs is None:
            self._costs = exit_costs(model)
        for i, (acc, loss) in enumerate(
            zip(test["accuracy"], test["loss"], strict=True), start=1
        ):
            metrics[f"accuracy_exit_{i}"] = acc
            metrics[f"loss_exit_{i}"] = loss
            metrics[f"macs_exit_{i}"] = float(self._costs["macs_per_exit"][i - 1])
            metrics[f"params_exit_{i}"] = float(self._costs["params_per_exit"][i - 1])
        xv, yv, source = self._validation()
        val = test if source == "test" else evaluate_exits(model, xv, yv)
        exit_i = best_exit(val["accuracy"], val["loss"])
        candidate = {
            "round": self._round,
            "exit": exit_i,
            "val_accuracy": val["accuracy"][exit_i - 1],
            "val_total_loss": val["total_loss"],
            "val_accuracy_per_exit": val["accuracy"],
            "test_accuracy_per_exit": test["accuracy"],
            "selected_on": source,
        }
        if self.best is None or (
            candidate["val_accuracy"],
            -candidate["val_total_loss"],
        ) > (self.best["val_accuracy"], -self.best["val_total_loss"]):
            self.best = candidate
            self._save(model, arrays, out_dir)
        metrics["best_exit"] = float(self.best["exit"])
        metrics["best_exit_round"] = float(self.best["round"])
        metrics["best_exit_val_accuracy"] = self.best["val_accuracy"]
        self._round += 1
        return metrics

    def _save(
        self, model: EarlyExitNet, arrays: dict[str, np.ndarray], out_dir: Path | None
    ) -> None:
        if self.best is None:
            return
        if out_dir is None:
            if not self._warned:
                logger.warning(
                    "no run directory known: the best exit model is kept in memory only"
                )
                self._warned = True
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        names = depth_names(model, int(self.best["exit"]))
        best: dict[str, Any] = {n: arrays[n] for n in names}
        np.savez(out_dir / BEST_MODEL_FILE, **best)
        info = {
            **self.best,
            "architecture": model.architecture.to_dict(),
            "exit_weights": model.exit_weights,
        }
        (out_dir / BEST_INFO_FILE).write_text(json.dumps(info, indent=2))
