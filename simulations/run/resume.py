"""Resume a run from its checkpoint: every check before anything is written.

``simulation.resume=<run dir>`` (or ``true``: this run's own directory) continues a run
from the last usable checkpoint of that directory
(:mod:`bouquet.simulations.run.checkpoint`), in that directory. :func:`check_resume` is
called before the run writes anything (by the simulation runner before it clears the old
``summary.json``, by the ServerApp before it writes its config): the directory must
exist and be the directory of a bouquet run (its ``config.json`` or a checkpoint is
there: a directory that is not is refused untouched), hold a usable checkpoint (an older
bouquet's ``checkpoint.pkl`` is refused, never read) and the checkpoint's config must
equal this run's but for :data:`RESUME_FREE_KEYS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bouquet.simulations.run.checkpoint import CHECKPOINT
from bouquet.simulations.run.checkpoint import CONFIG_FILE
from bouquet.simulations.run.checkpoint import LEGACY
from bouquet.simulations.run.checkpoint import PREVIOUS
from bouquet.simulations.run.checkpoint import CheckpointError
from bouquet.simulations.run.checkpoint import load_checkpoint

# Config keys that may differ between the checkpointed run and its resume.
RESUME_FREE_KEYS = (
    "simulation.num_rounds",
    "simulation.resume",
    "simulation.round_timeout_s",
    "simulation.node_wait_s",
    "simulation.node_ids",  # a deployment's node ids change when it is started again
    "simulation.checkpoint_every",
    "simulation.client_cpus",
    "simulation.total_cpus",
    "strategy.max_updates",  # asynchronous: the budget of a resumed run may grow
    "strategy.max_wall_s",
    "strategy.reply_timeout_s",
    "verbose",
    "fault.hang_s",
)


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Config keys whose values differ in a way that matters for a resume."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(
        k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS
    )


def is_resuming(cfg: dict[str, Any]) -> bool:
    resume = cfg.get("simulation", {}).get("resume")
    return resume not in (None, False, "", "false", "null")


def resume_dir(cfg: dict[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    """The directory a run writes into: the one named by ``simulation.resume`` when
    resuming (``true`` = this run's own directory), else ``run_dir``. Reads nothing,
    writes nothing."""
    resume = cfg.get("simulation", {}).get("resume")
    if not is_resuming(cfg) or resume in (True, "true"):
        return Path(run_dir)
    path = Path(str(resume)).expanduser()
    try:
        found = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise CheckpointError(
            f"simulation.resume: {exc.strerror or exc} ({len(str(resume))} characters)"
        ) from exc
    if not found:
        raise CheckpointError(f"simulation.resume={resume!r}: no such run directory")
    return path


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is the directory of a bouquet run (its config or a checkpoint is
    there)."""
    return (
        (path / CONFIG_FILE).is_file()
        or (path / CHECKPOINT).is_dir()
        or (path / PREVIOUS).is_dir()
        or any((path / name).is_file() for name in LEGACY)
    )


def check_resume(
    cfg: dict[str, Any], run_dir: str | os.PathLike[str], *, warn: bool = True
) -> tuple[Path, dict[str, Any] | None]:
    """Every check of a resume, before anything is written: ``(directory, checkpoint)``.

    Without ``simulation.resume``: ``(run_dir, None)``. Otherwise the directory must be
    one of a bouquet run (:func:`is_run_dir`), hold a usable checkpoint
    (:func:`load_checkpoint`; an older bouquet's ``checkpoint.pkl`` is refused, never
    read) saved with the same config but for :data:`RESUME_FREE_KEYS`.

    Raises
    ------
    CheckpointError
        Naming the directory and the reason, in one line.
    """
    path = resume_dir(cfg, run_dir)
    if not is_resuming(cfg):
        return path, None
    if not is_run_dir(path):
        raise CheckpointError(
            f"simulation.resume: {path} is not the directory of a bouquet run (no "
            f"{CONFIG_FILE}, "
            f"no {CHECKPOINT}/); nothing was changed in it"
        )
    ckpt = load_checkpoint(path, warn=warn)
    missing = [
        key for key in ("arrays", "strategy", "rng", "config") if key not in ckpt
    ]
    if missing:
        raise CheckpointError(
            f"cannot resume {path}: its checkpoint lacks {', '.join(missing)}"
        )
    diffs = config_differences(ckpt["config"], cfg)
    if diffs:
        raise CheckpointError(
            f"cannot resume {path}: config differs in {', '.join(diffs)}"
        )
    return path, ckpt
