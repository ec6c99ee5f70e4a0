"""Experiment trackers of the Hydra group ``logger``: ``none``, ``csv``,
``tensorboard``, ``mlflow``.

Each tracker gets, per round (per evaluation of an asynchronous run), everything the
line of ``metrics.jsonl`` holds that is a number (accuracy, loss, bytes up and down,
clients ok/failed, method metrics such as KL weights' range, staleness, exit
accuracies); the resolved config as parameters when the run starts; and the final model,
curves and summary as artifacts when it ends. All offline: TensorBoard event files in
``<run dir>/tensorboard``; MLflow's local file store in ``logger.dir`` (``null``:
``mlruns`` under the sweep dir of a multirun, under the run dir of a single run;
``bouquet-sim`` fills it in; MLflow 3 refuses its file store unless
``MLFLOW_ALLOW_FILE_STORE=true``, which the tracker sets when it is unset; read it with
``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file://<dir>``), one MLflow
run per job, the experiment named ``logger.experiment``; CSV: ``<run dir>/metrics.csv``.
TensorBoard and MLflow are optional extras (``pip install flwr-bouquet[tensorboard]`` /
``[mlflow]``), imported only when chosen; a missing one is refused before the run
starts, in one line.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

TRACKERS = ("none", "csv", "tensorboard", "mlflow")
# module, extra
EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def check_available(name: str) -> None:
    """``ValueError`` in one line when ``logger=name`` needs a package that is not
    installed."""
    if name in EXTRAS:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"logger={name} needs the {module} package: pip install "
                f"'flwr-bouquet[{extra}]'"
            )


def _numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics row, nested dicts flattened with ``/``."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(_numbers(value, f"{name}/"))
    return out


def _flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)[:500]
    return out


class Tracker:
    """No tracking (``logger=none``); the base of the others."""

    def start(self, cfg: dict[str, Any]) -> None:
        """The run starts with the resolved config ``cfg``."""

    def log(self, step: int, row: dict[str, Any], step_key: str) -> None:
        """One ``metrics.jsonl`` line."""

    def finish(self, summary: dict[str, Any], artifacts: list[Path]) -> None:
        """The run ended (``summary['status']`` ok or failed); ``artifacts`` are files
        to keep."""


class CsvTracker(Tracker):
    """``metrics.csv`` in the run dir: one row per line of ``metrics.jsonl``, numbers
    only."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, float]] = []

    def log(self, step: int, row: dict[str, Any], step_key: str) -> None:
        self.rows.append({step_key: float(step), **_numbers(row)})
        fields: list[str] = []
        for r in self.rows:
            fields.extend(k for k in r if k not in fields)
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``<run dir>/tensorboard`` (scalars per round, the
    config as text)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def start(self, cfg: dict[str, Any]) -> None:
        self.writer.add_text(
            "config", "```\n" + json.dumps(cfg, indent=2, sort_keys=True) + "\n```", 0
        )

    def log(self, step: int, row: dict[str, Any], step_key: str) -> None:
        for name, value in _numbers(row).items():
            if name != step_key:
                self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def finish(self, summary: dict[str, Any], artifacts: list[Path]) -> None:
        self.writer.add_text(
            "summary", "```\n" + json.dumps(summary, indent=2, default=str) + "\n```", 0
        )
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run in a local file store (``logger.dir``), experiment
    ``logger.experiment``."""

    def __init__(self, store: Path, experiment: str, run_name: str) -> None:
        # MLflow 3 keeps its local file store "in maintenance mode" and refuses it
        # unless told: the issue asks for the offline file store (no database to
        # install), so we say so.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self.mlflow = mlflow
        store.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(store.resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)

    def start(self, cfg: dict[str, Any]) -> None:
        params = _flat_params(cfg)
        names = sorted(params)
        for i in range(0, len(names), 100):  # MLflow takes at most 100 params per call
            self.mlflow.log_params({k: params[k] for k in names[i : i + 100]})

    def log(self, step: int, row: dict[str, Any], step_key: str) -> None:
        metrics = {
            k.replace("/", "."): v for k, v in _numbers(row).items() if k != step_key
        }
        self.mlflow.log_metrics(metrics, step=int(step))

    def finish(self, summary: dict[str, Any], artifacts: list[Path]) -> None:
        for path in artifacts:
            if path.exists():
                self.mlflow.log_artifact(str(path))
        self.mlflow.set_tag("status", str(summary.get("status")))
        self.mlflow.end_run(
            status="FINISHED" if summary.get("status") == "ok" else "FAILED"
        )


def make_tracker(cfg: dict[str, Any], run_dir: Path) -> Tracker:
    """The tracker ``cfg['logger']`` asks for (``none`` when the group is absent)."""
    section = cfg.get("logger") or {}
    name = str(section.get("name", "none"))
    check_available(name)
    if name == "csv":
        return CsvTracker(run_dir)
    if name == "tensorboard":
        return TensorBoardTracker(run_dir)
    if name == "mlflow":
        store = Path(section.get("dir") or run_dir / "mlruns")
        return MLflowTracker(
            store, str(section.get("experiment") or "bouquet"), run_name=run_dir.name
        )
    return Tracker()
