"""Checkpoints and resume (per round; per applied update for the asynchronous strategy).

After every ``simulation.checkpoint_every`` rounds the run directory gets
``checkpoint/``: the global arrays, the round number, the strategy's state, the RNG
states (``random``, numpy, torch) and the resolved config, in the format of
:mod:`bouquet.simulations.run.checkpoint_format` (arrays in ``arrays.npz``, everything
else in ``state.json``, the SHA-256 of both in ``SHA256SUMS``: data that cannot execute
anything when read). It is written atomically: into ``checkpoint.tmp/``, every file
``fsync``'ed, then renamed. An asynchronous run (``strategy=async``, no rounds) reads
``checkpoint_every`` as **applied updates** between checkpoints: its checkpoint has
``updates`` in place of ``round``, the strategy's state holds the model version, the
counters and the staleness windows the server keeps
(:meth:`bouquet.strategies.async_fedavg.AsyncFedAvg.state_dict`), and ``period`` holds
the traffic counted since the last ``metrics.jsonl`` line. The previous checkpoint is
kept as ``checkpoint.prev/``; a checkpoint that is truncated, altered (SHA-256 mismatch)
or does not parse is ignored with a WARNING through Flower's logger naming the reason,
and the previous one is used.

A run directory of an older bouquet holds ``checkpoint.pkl``, a pickle: it is never read
(unpickling can run any code, and its SHA-256 sat in the same file); resuming such a run
is refused in one line. :func:`bouquet.simulations.run.resume.check_resume` does every
check of a resume (a directory of a bouquet run, a usable checkpoint, the same config)
before anything is written.

Strategy state: an object (each level of a wrapper chain: ``obj``, ``obj.strategy``,
...) whose class defines ``state_dict()`` / ``load_state_dict()`` uses them (a wrapper
does not borrow its inner strategy's); otherwise its plain-data attributes
(numbers, strings, numpy arrays, and lists / dicts of those, e.g. FedAdam's moments) are
saved and restored; a checkpoint may set only the plain-data attributes the freshly
built object has. Attributes holding functions or other objects are not saved (they are
rebuilt from the config).

What a resume cannot restore in simulation: per-node ``context.state`` of the clients
(e.g. error-feedback residuals, a learner's own staleness window), which lives in the
simulation's worker processes; a real deployment keeps it on the SuperNodes. A
simulation also gives its nodes new ids, so per-node values the server kept (an
asynchronous run's per-node windows and counters) are not used after a resume there
(logged as a warning).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common.logger import log

from bouquet.simulations.run.checkpoint_format import encode_checkpoint
from bouquet.simulations.run.checkpoint_format import fsync_dir
from bouquet.simulations.run.checkpoint_format import read_checkpoint
from bouquet.simulations.run.checkpoint_format import write_checkpoint
from bouquet.simulations.run.checkpoint_skeleton import CorruptCheckpoint

CHECKPOINT = "checkpoint"  # directory: arrays.npz, state.json, SHA256SUMS
PREVIOUS = "checkpoint.prev"
_TMP = "checkpoint.tmp"  # being written
_STALE = "checkpoint.stale"  # the previous-but-one, being removed
# pickles of older bouquet versions: never read
LEGACY = ("checkpoint.pkl", "checkpoint.prev.pkl")
CONFIG_FILE = "config.json"  # the resolved config, written into every run directory


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a resume whose config differs in a way that matters."""


def _is_data(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if (
        value is None
        or type(value) is np.ndarray
        or isinstance(value, (bool, int, float, str, np.generic))
    ):
        return not (
            isinstance(value, (np.ndarray, np.generic))
            and (value.dtype.hasobject or value.dtype.fields)
        )
    if isinstance(value, (list, tuple)):
        return all(_is_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            (isinstance(k, str) or type(k) is int) and _is_data(v, depth + 1)
            for k, v in value.items()
        )
    return False


def _chain(strategy: Any) -> list[Any]:
    chain: list[Any] = []
    obj = strategy
    while obj is not None and len(chain) < 16:
        chain.append(obj)
        obj = vars(obj).get("strategy") if hasattr(obj, "__dict__") else None
    return chain


def strategy_state(strategy: Any) -> list[dict[str, Any]]:
    """The state of every level of a wrapper chain (see module docstring)."""
    states = []
    for obj in _chain(strategy):
        # not a wrapper's forwarded attribute
        if callable(getattr(type(obj), "state_dict", None)):
            states.append({"__state_dict__": obj.state_dict()})
        else:
            states.append(
                {k: v for k, v in vars(obj).items() if k != "strategy" and _is_data(v)}
            )
    return states


def load_strategy_state(strategy: Any, states: Any) -> None:
    """Restore :func:`strategy_state` into a freshly built strategy of the same shape.

    Raises
    ------
    CheckpointError
        If the chain has another length, a level's state is of the other kind
        (``state_dict`` vs plain attributes), or a state sets an attribute that is not
        one of the fresh object's plain-data attributes (a checkpoint never replaces a
        method or a function).
    """
    chain = _chain(strategy)
    if not isinstance(states, list) or len(chain) != len(states):
        raise CheckpointError(
            f"strategy chain has {len(chain)} levels, checkpoint has "
            f"{len(states) if isinstance(states, list) else type(states).__name__}"
        )
    for level, (obj, state) in enumerate(zip(chain, states, strict=True)):
        name = f"strategy level {level} ({type(obj).__name__})"
        has_state_dict = callable(getattr(type(obj), "load_state_dict", None))
        if not isinstance(state, dict) or has_state_dict != ("__state_dict__" in state):
            raise CheckpointError(
                f"cannot restore {name}: the checkpoint's state is not one of its "
                "states"
            )
        if has_state_dict:
            if set(state) != {"__state_dict__"}:
                raise CheckpointError(
                    f"cannot restore {name}: unexpected keys {sorted(state)}"
                )
            obj.load_state_dict(state["__state_dict__"])
            continue
        allowed = {k for k, v in vars(obj).items() if k != "strategy" and _is_data(v)}
        unknown = sorted(set(state) - allowed)
        if unknown:
            raise CheckpointError(
                f"cannot restore {name}: {', '.join(map(str, unknown))} not among "
                "its data attributes"
            )
        for key, value in state.items():
            setattr(obj, key, value)


def rng_state() -> dict[str, Any]:
    """The ``random``, numpy and torch RNG states (plain data: tuples, ints, floats,
    arrays)."""
    state: dict[str, Any] = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
    }
    try:
        import torch

        state["torch"] = torch.get_rng_state().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (``CheckpointError`` if it is not one)."""
    try:
        random.setstate(state["random"])
        np.random.set_state(state["numpy"])
        if "torch" in state:
            import torch

            torch.set_rng_state(
                torch.from_numpy(np.array(state["torch"], dtype=np.uint8))
            )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint's RNG state is not usable: {type(exc).__name__}: {exc}"
        ) from exc


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` as the latest checkpoint (the old one becomes
    previous).

    Raises
    ------
    ValueError
        If ``payload`` holds a value the format does not know (before anything is
        written).
    """
    files = encode_checkpoint(payload)
    tmp, latest, prev, stale = (
        run_dir / name for name in (_TMP, CHECKPOINT, PREVIOUS, _STALE)
    )
    _remove(tmp)
    tmp.mkdir()
    write_checkpoint(tmp, files)
    _remove(stale)
    if prev.exists():
        os.replace(prev, stale)
    if latest.exists():
        # a crash from here to the next rename leaves prev: it is used
        os.replace(latest, prev)
    os.replace(tmp, latest)
    fsync_dir(run_dir)
    _remove(stale)
    return latest


def _check_payload(payload: Any) -> dict[str, Any]:
    """The payload if its top level is what :class:`Checkpointer` writes (else
    ``CorruptCheckpoint``)."""
    if not isinstance(payload, dict):
        raise CorruptCheckpoint(
            f"the payload is a {type(payload).__name__}, not a mapping"
        )
    steps = [k for k in ("round", "updates") if k in payload]
    if len(steps) != 1 or type(payload[steps[0]]) is not int or payload[steps[0]] < 0:
        raise CorruptCheckpoint(
            "the payload needs exactly one of 'round' and 'updates', an integer >= 0"
        )
    arrays = payload.get("arrays", {})
    if not (
        isinstance(arrays, dict)
        and all(isinstance(k, str) and type(v) is np.ndarray for k, v in arrays.items())
    ):
        raise CorruptCheckpoint("'arrays' is not a mapping of names to arrays")
    for key, kind in (
        ("strategy", list),
        ("config", dict),
        ("rng", dict),
        ("period", dict),
    ):
        if key in payload and not isinstance(payload[key], kind):
            raise CorruptCheckpoint(
                f"{key!r} is a {type(payload[key]).__name__}, expected a "
                f"{kind.__name__}"
            )
    return payload


def load_checkpoint(run_dir: Path, *, warn: bool = True) -> dict[str, Any]:
    """The latest valid checkpoint in ``run_dir`` (falls back to the previous one).

    Parameters
    ----------
    run_dir : Path
        The run directory.
    warn : bool
        Log a WARNING (Flower's logger) for every checkpoint ignored, naming the reason,
        and when the previous one is used.

    Raises
    ------
    CheckpointError
        If neither ``checkpoint/`` nor ``checkpoint.prev/`` is usable, or the directory
        holds only an older bouquet's ``checkpoint.pkl`` (never read).
    """
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            errors.append(f"{name}: missing")
            continue
        try:
            if not path.is_dir():
                raise CorruptCheckpoint("not a directory")
            payload = _check_payload(read_checkpoint(path))
        except CorruptCheckpoint as exc:
            if warn:
                log(logging.WARNING, "checkpoint %s ignored: %s", path, exc)
            errors.append(f"{name}: {exc}")
            continue
        if name == PREVIOUS and warn:
            step = "updates" if "updates" in payload else "round"
            log(
                logging.WARNING,
                "using the previous checkpoint %s (%s %s)",
                path,
                step,
                payload[step],
            )
        return payload
    legacy = [name for name in LEGACY if (run_dir / name).exists()]
    if legacy and len(errors) == 2 and all(e.endswith(": missing") for e in errors):
        raise CheckpointError(
            f"{run_dir / legacy[0]} is a pickle checkpoint of an older bouquet: it "
            "is never loaded "
            "(unpickling can run code); resume is refused, start a new run"
        )
    note = (
        f"; {', '.join(legacy)} (pickle, older bouquet) never loaded" if legacy else ""
    )
    raise CheckpointError(
        f"no usable checkpoint in {run_dir}: {'; '.join(errors)}{note}"
    )


class Checkpointer:
    """Write a checkpoint every ``every`` rounds (and after the last round);
    :meth:`save` is the
    asynchronous strategy's (it decides when: every ``every`` applied updates).

    Parameters
    ----------
    run_dir : Path
        Where ``checkpoint/`` goes.
    cfg : dict
        The resolved config (stored, compared on resume).
    strategy : object
        The strategy whose state is saved (the configured chain, not the driver
        wrappers).
    every : int
        Rounds (asynchronous: applied updates) between checkpoints; 0 disables
        checkpointing.
    last_round : int
        The final round (always checkpointed when ``every`` > 0).
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: dict[str, Any],
        strategy: Any,
        every: int,
        last_round: int,
    ) -> None:
        if every < 0:
            raise ValueError(f"simulation.checkpoint_every={every} must be >= 0")
        self.run_dir = run_dir
        self.cfg = cfg
        self.strategy = strategy
        self.every = every
        self.last_round = last_round
        self.seconds = 0.0
        self.after_save: Callable[[int, str], None] | None = (
            None  # (step, step_key) once a checkpoint is on disk
        )

    def __call__(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        if self.every == 0 or (
            server_round % self.every and server_round != self.last_round
        ):
            return
        self.save(server_round, arrays)

    def save(
        self,
        step: int,
        arrays: dict[str, np.ndarray],
        *,
        step_key: str = "round",
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint of ``step`` (``step_key``: ``round`` or ``updates``)
        now."""
        import time

        start = time.perf_counter()
        payload = {
            step_key: step,
            "arrays": arrays,
            "strategy": strategy_state(self.strategy),
            "rng": rng_state(),
            "config": self.cfg,
            **(extra or {}),
        }
        save_checkpoint(self.run_dir, payload)
        if self.after_save is not None:
            self.after_save(step, step_key)
        self.seconds += time.perf_counter() - start
