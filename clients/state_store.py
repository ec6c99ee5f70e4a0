"""``SpilledState``: a node's ``context.state`` kept on disk between its messages
(simulation).

In Flower's simulation engine every node's ``context.state`` stays in the driver's
memory for the whole run; a client's error-feedback residual, DGC momentum or
compressed-downlink copy is a model-sized array, so 10,000 clients of a 1M-parameter
model would hold ~40 GB each. This client mod keeps each node's state in a file of the
run directory instead:

* before the ClientApp runs, the node's newest file is read back into ``context.state``;
* after it replied, everything in ``context.state`` is written to
  ``<dir>/<partition-id>/r<round>.npz`` (arrays) and ``.json`` (config and metric
  records), atomically, and ``context.state`` is emptied. A message lists only its own
  node's folder.

Memory is then bounded by the nodes in flight (the clients of one round), whatever the
population; disk holds one state per node seen (plus the versions a checkpoint still
needs, see :func:`prune`). Files are named by partition id, which a resumed simulation
keeps (its node ids are new), and by the round that wrote them, so :func:`prune` can
drop what a resume must not see: after a checkpoint of round ``R`` each node keeps its
newest version at or before ``R`` and any newer one; on resume from ``R`` the newer ones
are deleted. A failed message writes nothing. Data, never code: ``.npz`` read with
``allow_pickle=False`` and JSON.

In a real deployment the state stays on the node, in ``context.state``, as Flower keeps
it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.clientapp.typing import ClientAppCallable

from bouquet import keys

_NAME = re.compile(r"^r(?P<round>\d+)\.json$")


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def save_state(state: RecordDict, path_json: Path) -> None:
    """Write ``state`` as ``<stem>.npz`` + ``<stem>.json`` (the JSON last: it marks a
    complete pair)."""
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, Any] = {"array": {}, "config": {}, "metric": {}}
    for i, (rec_key, rec) in enumerate(state.array_records.items()):
        layout["array"][rec_key] = []
        for j, (name, arr) in enumerate(rec.items()):
            arrays[f"a{i}_{j}"] = arr.numpy()
            layout["array"][rec_key].append([name, f"a{i}_{j}"])
    for rec_key, config in state.config_records.items():
        layout["config"][rec_key] = {k: _encode(v) for k, v in config.items()}
    for rec_key, metric in state.metric_records.items():
        layout["metric"][rec_key] = {k: _encode(v) for k, v in metric.items()}
    _atomic(path_json.with_suffix(".npz"), lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]
    _atomic(path_json, lambda fh: fh.write(json.dumps(layout).encode()))


def _atomic(path: Path, write: Callable[[Any], Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path_json: Path) -> RecordDict:
    """The ``RecordDict`` written by :func:`save_state` (``ValueError`` if the pair is
    unreadable)."""
    try:
        layout = json.loads(path_json.read_text())
        with np.load(path_json.with_suffix(".npz"), allow_pickle=False) as data:
            out = RecordDict()
            for rec_key, items in layout["array"].items():
                out[rec_key] = ArrayRecord(
                    {name: Array(np.array(data[key])) for name, key in items}
                )
        for rec_key, values in layout["config"].items():
            out[rec_key] = ConfigRecord({k: _decode(v) for k, v in values.items()})
        for rec_key, values in layout["metric"].items():
            out[rec_key] = MetricRecord(values)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"client state {path_json.name}: {exc}") from exc
    return out


def node_rounds(directory: Path, key: int) -> list[int]:
    """Sorted rounds of node ``key``'s complete state files."""
    folder = directory / str(key)
    if not folder.is_dir():
        return []
    return sorted(
        int(m["round"]) for p in folder.iterdir() if (m := _NAME.match(p.name))
    )


def _remove(directory: Path, key: int, rnd: int) -> None:
    for suffix in (".json", ".npz"):
        (directory / str(key) / f"r{rnd}{suffix}").unlink(missing_ok=True)


def prune(directory: Path, checkpoint_round: int, *, resuming: bool = False) -> None:
    """Keep, per node, its newest state at or before ``checkpoint_round`` and (unless
    ``resuming``: they belong to rounds the resume will run again) the newer ones. Lists
    every node's folder: run at checkpoints only."""
    if not directory.is_dir():
        return
    for folder in directory.iterdir():
        if not folder.name.isdigit():
            continue
        key = int(folder.name)
        rounds = node_rounds(directory, key)
        older = [r for r in rounds if r <= checkpoint_round]
        for r in older[:-1]:
            _remove(directory, key, r)
        if resuming:
            for r in rounds:
                if r > checkpoint_round:
                    _remove(directory, key, r)


def state_bytes(directory: Path) -> int:
    """Bytes of every state file under ``directory``."""
    return (
        sum(p.stat().st_size for p in directory.rglob("r*.*"))
        if directory.is_dir()
        else 0
    )


class SpilledState:
    """A Flower client mod keeping ``context.state`` in ``directory`` between messages
    (see the module docstring). Put it outermost: every mod inside it sees the node's
    state."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _key(self, context: Context) -> int:
        pid = context.node_config.get(keys.PARTITION_ID)
        return int(pid) if isinstance(pid, int) else int(context.node_id)

    def __call__(
        self, msg: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        key = self._key(context)
        rounds = node_rounds(self.directory, key)
        for rec_key in list(context.state.keys()):
            del context.state[rec_key]
        if rounds:
            for rec_key, rec in load_state(
                self.directory / str(key) / f"r{rounds[-1]}.json"
            ).items():
                context.state[rec_key] = rec
        reply = call_next(msg, context)
        config = (
            msg.content.config_records.get(keys.CONFIG) if msg.has_content() else None
        )
        rnd = config.get(keys.SERVER_ROUND) if config is not None else None
        if (
            isinstance(rnd, int)
            and not isinstance(rnd, bool)
            and len(context.state.keys())
        ):
            (self.directory / str(key)).mkdir(parents=True, exist_ok=True)
            save_state(context.state, self.directory / str(key) / f"r{rnd}.json")
        for rec_key in list(context.state.keys()):
            del context.state[rec_key]
        return reply
