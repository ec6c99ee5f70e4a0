"""``bouquet-sim``: the Hydra entry point.

Composes ``conf/config.yaml`` with the command-line overrides, validates the config,
runs it in Flower's simulation engine and writes the results into the Hydra run
directory::

    bouquet-sim dataset=digits simulation.num_clients=3 simulation.num_rounds=2
    bouquet-sim --multirun partition=iid,dirichlet seed=0,1,2

A refused config (:mod:`bouquet.simulations.config.validate`; a command-line value that
names a file is checked before Hydra opens it,
:func:`~bouquet.simulations.config.values.check_overrides`), a missing dataset, a
misspelled key, a refused resume and a failed run end with one line on stderr and exit
code 2::

    bouquet-sim: error: client.alpha=2 is out of range (0, 1]

``HYDRA_FULL_ERROR=1`` or ``verbose=true`` show the traceback instead. At
``verbose=false`` the console shows bouquet's progress lines and warnings only;
everything goes to the run's ``main.log``.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bouquet.simulations.config.schema import GROUPS
from bouquet.simulations.config.validate import validate_run
from bouquet.simulations.config.values import check_overrides
from bouquet.simulations.methods.search import run_search
from bouquet.simulations.run.checkpoint import CheckpointError
from bouquet.simulations.run.results import RunFailed
from bouquet.simulations.run.runner import run_in_simulation

logger = logging.getLogger("bouquet.progress")

PROG = "bouquet-sim"
EXIT_REFUSED = 2
CONFIG_GROUPS = (*GROUPS, "experiment")  # conf/<group>/<choice>.yaml
# Errors reported in one line (anything else is a bug: its traceback is shown).
REPORTED: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    RunFailed,
    CheckpointError,
    HydraException,
    OmegaConfBaseException,
)
# Console lines at verbose=false: bouquet's progress and warnings, minus these (still in
# main.log).
PROGRESS_LOGGER = "bouquet.progress"
CONSOLE_NOISE = (
    # bouquet's choice, not the user's
    "DEPRECATED FEATURE: The `run_simulation` function",
    "fraction_evaluate is set to 0.0",  # evaluation is server-side by design
)

# task name -> function(cfg, run_dir) -> summary
TASKS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "federated": run_in_simulation,
    "search": run_search,
}
_verbose = False  # the running job's `verbose` (read by main() when an error arrives)
_full_error = (
    False  # HYDRA_FULL_ERROR=1 was set by the user (main() sets it for Hydra anyway)
)
_failed_jobs: list[str] = []  # one line per failed job of a sweep


def run_task(cfg: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Validate ``cfg`` and run its task (default ``federated``)."""
    task = cfg.get("task", "federated")
    if task not in TASKS:
        raise ValueError(f"task={task!r} is unknown; allowed: {', '.join(TASKS)}")
    validate_run(cfg)
    return TASKS[task](cfg, run_dir)


def error_line(exc: BaseException) -> str:
    """``bouquet-sim: error: <message on one line>`` (with the first line of an
    OmegaConf cause)."""
    text = " ".join(str(exc).split())
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text = f"{text} ({str(cause).strip().splitlines()[0]})"
    return f"{PROG}: error: {text}"


class ConsoleFilter(logging.Filter):
    """At ``verbose=false``: bouquet's progress lines and warnings (but
    :data:`CONSOLE_NOISE`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        if record.levelno >= logging.WARNING:
            return not record.getMessage().startswith(CONSOLE_NOISE)
        return record.name == PROGRESS_LOGGER or record.name.startswith(
            PROGRESS_LOGGER + "."
        )


class OneLineFormatter(logging.Formatter):
    """At ``verbose=false``: another library's multi-line record (a client's traceback)
    on one console line, its first and last lines; the full text stays in
    ``main.log``."""

    def __init__(self, base: logging.Formatter | None) -> None:
        super().__init__()
        self.base = base or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.base.format(record)
        if record.name.startswith("bouquet"):
            return text
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return text if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def quiet_console(verbose: bool) -> None:
    """Keep Flower's and other libraries' chatter off the console unless
    ``verbose=true``.

    The root logger's console handlers (Hydra's) get a :class:`ConsoleFilter`; Flower's
    own console handler is muted (its records reach the console once, through the root's
    handler). Every record still reaches the run's ``main.log`` (Hydra's file handler).
    """
    root_console = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
    ]
    for handler in root_console:
        for old in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
            handler.removeFilter(old)
        if isinstance(handler.formatter, OneLineFormatter):
            handler.setFormatter(handler.formatter.base)
        if not verbose:
            handler.addFilter(ConsoleFilter())
            handler.setFormatter(OneLineFormatter(handler.formatter))
    for flwr_handler in logging.getLogger("flwr").handlers:
        if isinstance(flwr_handler, logging.StreamHandler) and not isinstance(
            flwr_handler, logging.FileHandler
        ):
            flwr_handler.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    if not verbose:
        warnings.filterwarnings(
            "ignore", message="Tip: In future versions of Ray", category=FutureWarning
        )


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    global _verbose
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    _verbose = bool(cfg.get("verbose", False))
    quiet_console(verbose=_verbose)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(container, dict):
            raise ValueError("the composed config is not a mapping")
        run_cfg = {str(k): v for k, v in container.items()}
        tracker = run_cfg.get("logger")
        if (
            isinstance(tracker, dict)
            and tracker.get("name") == "mlflow"
            and not tracker.get("dir")
        ):
            # one store per sweep (every job an MLflow run of it), or per single run
            sweep = hydra_cfg.mode == RunMode.MULTIRUN
            tracker["dir"] = str(
                Path(hydra_cfg.sweep.dir if sweep else run_dir).resolve() / "mlruns"
            )
        summary = run_task(run_cfg, run_dir)
    except REPORTED as exc:
        # Into main.log. A single run ends here with the line on stderr (Hydra would add
        # its own "Error executing job" line); a sweep logs it and goes on with the next
        # job.
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        job = f"job {hydra_cfg.job.num}: " if multirun else ""
        logging.getLogger(__name__).error(
            "%s%s", job, error_line(exc), extra={"file_only": not multirun}
        )
        if multirun:
            _failed_jobs.append(f"{job}{' '.join(str(exc).split())}")
        if multirun or _verbose or _full_error:
            raise
        sys.stderr.write(error_line(exc) + "\n")
        sys.exit(EXIT_REFUSED)
    finals = ", ".join(
        f"{k} {v:.4f}"
        for k, v in summary.items()
        if k.startswith("final_") and isinstance(v, float)
    )
    logger.info(
        "done: %s, %.3f MB up + %.3f MB down; results in %s",
        finals or "no evaluation",
        summary.get("total_bytes_up", 0) / 1e6,
        summary.get("total_bytes_down", 0) / 1e6,
        summary.get("run_dir", run_dir),
    )
    acc = summary.get("final_accuracy")
    return float(acc) if acc is not None else None


def main() -> None:
    """Console-script entry point: one-line errors with exit code 2 (see the module
    docstring)."""
    global _full_error
    _failed_jobs.clear()
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    _full_error = full_error == "1"
    os.environ["HYDRA_FULL_ERROR"] = (
        "1"  # Hydra re-raises instead of printing; this function reports
    )
    try:
        check_overrides(sys.argv[1:], CONFIG_GROUPS)
        _hydra_main()
    except REPORTED as exc:
        if _full_error or _verbose:
            raise
        line = error_line(exc)
        if len(_failed_jobs) > 1:
            line = (
                f"{PROG}: error: {len(_failed_jobs)} jobs failed, the first: "
                f"{_failed_jobs[0]}"
            )
        sys.stderr.write(line + "\n")
        sys.exit(EXIT_REFUSED)
    except OSError as exc:  # a name the checks above missed and the file system refuses
        if exc.errno != errno.ENAMETOOLONG or _full_error or _verbose:
            raise
        name = str(exc.filename or "")
        shown = name if len(name) <= 60 else f"{name[:60]}... ({len(name)} characters)"
        sys.stderr.write(f"{PROG}: error: {exc.strerror}: {shown}\n")
        sys.exit(EXIT_REFUSED)
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


if __name__ == "__main__":
    main()
