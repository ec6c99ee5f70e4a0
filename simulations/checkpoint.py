"""Checkpoints and resume (per round; per applied update for the asynchronous strategy).

After every ``simulation.checkpoint_every`` rounds the run directory gets ``checkpoint.pkl``:
the global arrays, the round number, the strategy's state, the RNG states (``random``, numpy,
torch) and the resolved config, written atomically (temporary file, ``fsync``, rename) with a
SHA-256 of the payload. An asynchronous run (``strategy=async``, no rounds) reads
``checkpoint_every`` as **applied updates** between checkpoints: its checkpoint has ``updates``
in place of ``round``, the strategy's state holds the model version, the counters and the
staleness windows the server keeps (:meth:`bouquet.strategies.async_fedavg.AsyncFedAvg.state_dict`),
and ``period`` holds the traffic counted since the last ``metrics.jsonl`` line. The previous checkpoint is kept as ``checkpoint.prev.pkl``; a
checkpoint whose checksum does not match (e.g. truncated by a crash mid-write) is detected and
the previous one is used.

Strategy state: an object (each level of a wrapper chain: ``obj``, ``obj.strategy``, ...) whose
class defines ``state_dict()`` / ``load_state_dict()`` uses them (a wrapper does not borrow its
inner strategy's); otherwise its plain-data attributes
(numbers, strings, numpy arrays, and lists / dicts of those, e.g. FedAdam's moments) are saved
and restored. Attributes holding functions or other objects are not (they are rebuilt from the
config).

What a resume cannot restore in simulation: per-node ``context.state`` of the clients (e.g.
error-feedback residuals, a learner's own staleness window), which lives in the simulation's
worker processes; a real deployment keeps it on the SuperNodes. A simulation also gives its
nodes new ids, so per-node values the server kept (an asynchronous run's per-node windows and
counters) are not used after a resume there (logged as a warning).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pkl"
PREVIOUS = "checkpoint.prev.pkl"
MAGIC = b"BOUQUET-CKPT-1\n"
# Config keys that may differ between the checkpointed run and its resume.
RESUME_FREE_KEYS = (
    "simulation.num_rounds",
    "simulation.resume",
    "simulation.round_timeout_s",
    "simulation.node_wait_s",
    "simulation.checkpoint_every",
    "simulation.client_cpus",
    "simulation.total_cpus",
    "strategy.max_updates",  # asynchronous: the budget of a resumed run may grow
    "strategy.max_wall_s",
    "strategy.reply_timeout_s",
    "verbose",
    "fault.hang_s",
)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a resume whose config differs in a way that matters."""


def _is_data(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray, np.generic)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_data(v, depth + 1) for k, v in value.items())
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
        if callable(getattr(type(obj), "state_dict", None)):  # not a wrapper's forwarded attribute
            states.append({"__state_dict__": obj.state_dict()})
        else:
            states.append({k: v for k, v in vars(obj).items() if k != "strategy" and _is_data(v)})
    return states


def load_strategy_state(strategy: Any, states: list[dict[str, Any]]) -> None:
    """Restore :func:`strategy_state` into a freshly built strategy of the same shape."""
    chain = _chain(strategy)
    if len(chain) != len(states):
        raise CheckpointError(f"strategy chain has {len(chain)} levels, checkpoint has {len(states)}")
    for obj, state in zip(chain, states, strict=True):
        if "__state_dict__" in state:
            obj.load_state_dict(state["__state_dict__"])
        else:
            for key, value in state.items():
                setattr(obj, key, value)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"random": random.getstate(), "numpy": np.random.get_state()}
    try:
        import torch

        state["torch"] = torch.get_rng_state().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "torch" in state:
        import torch

        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8)))


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` as the latest checkpoint (the old one becomes previous)."""
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(body).hexdigest().encode()
    path = run_dir / CHECKPOINT
    tmp = run_dir / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + digest + b"\n" + body)
        fh.flush()
        os.fsync(fh.fileno())
    if path.exists():
        os.replace(path, run_dir / PREVIOUS)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a bouquet checkpoint")
    rest = raw[len(MAGIC):]
    digest, _, body = rest.partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
    return pickle.loads(body)  # noqa: S301 - our own file, checksummed


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The latest valid checkpoint in ``run_dir`` (falls back to the previous one)."""
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            errors.append(f"{path}: missing")
            continue
        try:
            payload = _read(path)
        except (CheckpointError, pickle.UnpicklingError, EOFError) as exc:
            logger.warning("ignoring checkpoint %s: %s", path, exc)
            errors.append(str(exc))
            continue
        if name == PREVIOUS:
            step = "updates" if "updates" in payload else "round"
            logger.warning("using the previous checkpoint %s (%s %s)", path, step, payload.get(step))
        return payload
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))


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
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_FREE_KEYS)


def is_resuming(cfg: dict[str, Any]) -> bool:
    resume = cfg.get("simulation", {}).get("resume")
    return resume not in (None, False, "", "false", "null")


def resume_dir(cfg: dict[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    """The directory a run writes into: the one named by ``simulation.resume`` when resuming
    (``true`` = this run's own directory), else ``run_dir``."""
    resume = cfg.get("simulation", {}).get("resume")
    if not is_resuming(cfg) or resume in (True, "true"):
        return Path(run_dir)
    path = Path(str(resume)).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"simulation.resume={resume!r}: no such run directory")
    return path


class Checkpointer:
    """Write a checkpoint every ``every`` rounds (and after the last round); :meth:`save` is the
    asynchronous strategy's (it decides when: every ``every`` applied updates).

    Parameters
    ----------
    run_dir : Path
        Where ``checkpoint.pkl`` goes.
    cfg : dict
        The resolved config (stored, compared on resume).
    strategy : object
        The strategy whose state is saved (the configured chain, not the driver wrappers).
    every : int
        Rounds (asynchronous: applied updates) between checkpoints; 0 disables checkpointing.
    last_round : int
        The final round (always checkpointed when ``every`` > 0).
    """

    def __init__(self, run_dir: Path, cfg: dict[str, Any], strategy: Any, every: int, last_round: int) -> None:
        if every < 0:
            raise ValueError(f"simulation.checkpoint_every={every} must be >= 0")
        self.run_dir = run_dir
        self.cfg = cfg
        self.strategy = strategy
        self.every = every
        self.last_round = last_round
        self.seconds = 0.0

    def __call__(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        if self.every == 0 or (server_round % self.every and server_round != self.last_round):
            return
        self.save(server_round, arrays)

    def save(self, step: int, arrays: dict[str, np.ndarray], *, step_key: str = "round", extra: dict[str, Any] | None = None) -> None:
        """Write the checkpoint of ``step`` (``step_key``: ``round`` or ``updates``) now."""
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
        self.seconds += time.perf_counter() - start
