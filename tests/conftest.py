"""Shared test fixtures: data cache location, Flower env, and the helpers that build
train
messages (``make_train_message``), replies (``make_reply``) and clients
(``client_factory``)."""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

import numpy as np
import pytest
from shared_ray import SharedRay

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_train_message(
    weights: dict[str, np.ndarray],
    server_round: int = 1,
    config: dict | None = None,
    *,
    node_id: int = 5,
):
    """A train Message as a server sends it to ``node_id``: ``weights`` as dense Arrays,
    the round
    and ``config`` in its ConfigRecord, message id ``m<server_round>``."""
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord
    from flwr.app import Message
    from flwr.app import MessageType
    from flwr.app import RecordDict

    from bouquet import keys

    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord(
                {k: Array(np.asarray(v)) for k, v in weights.items()}
            ),
            keys.CONFIG: ConfigRecord(
                {keys.SERVER_ROUND: server_round, **(config or {})}
            ),
        }
    )
    msg = Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{server_round}"
    return msg


def client_factory(cls, **kwargs):
    """A ``client_fn`` building NumPyClient ``cls`` (e.g. ``TopKClient``) on 40 seeded
    random 1x8x8 samples of 3 classes with an MLP and ``lr=0.1``; ``kwargs`` go to
    ``cls``."""
    from bouquet.models import build_model

    def client_fn(context):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
        y = (np.arange(40) % 3).astype(np.int64)
        return cls(
            build_model("mlp", (1, 8, 8), 3, seed=0),
            x,
            y,
            num_classes=3,
            lr=0.1,
            **kwargs,
        )

    return client_fn


def make_reply(
    arrays: dict[str, np.ndarray] | None,
    num_examples: int,
    metrics: dict | None = None,
    *,
    node_id: int = 1,
    error: str | None = None,
    array_record=None,
):
    """Build a train reply Message by hand, as a ClientApp would send it.

    ``arrays`` become dense Arrays (or pass a ready ``array_record``, e.g. compressed);
    ``error`` builds an error reply instead.
    """
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import Error
    from flwr.app import Message
    from flwr.app import MessageType
    from flwr.app import MetricRecord
    from flwr.app import RecordDict
    from flwr.app.metadata import Metadata

    from bouquet import keys

    content = RecordDict()
    if array_record is None and arrays is not None:
        array_record = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    if array_record is not None:
        content[keys.ARRAYS] = array_record
    content[keys.METRICS] = MetricRecord(
        {keys.NUM_EXAMPLES: num_examples, **(metrics or {})}
    )
    metadata = Metadata(
        run_id=1,
        message_id=f"r{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=f"m{node_id}",
        group_id="",
        created_at=0.0,
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    if error is not None:
        return Message(metadata=metadata, error=Error(code=0, reason=error))
    return Message(metadata=metadata, content=content)


@contextlib.contextmanager
def address_space_limit(extra_bytes: int):
    """Cap this process's address space at its current size + ``extra_bytes`` (soft
    limit,
    restored afterwards): an allocation beyond it raises MemoryError instead of
    swapping."""
    with open("/proc/self/statm") as fh:
        vsize = int(fh.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vsize + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def set_task_identity() -> None:
    """Let strategies build instruction Messages outside a running ServerApp (unit
    tests)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0


set_task_identity()


@pytest.fixture
def reply_factory():
    return make_reply


def pytest_runtest_teardown(item, nextitem):
    """Stop the module's shared Ray head after its last test (``shared_ray``)."""
    if nextitem is None or nextitem.path != item.path:
        SharedRay.stop()


def pytest_sessionfinish(session, exitstatus):
    """An interrupted session stops the shared Ray head too."""
    SharedRay.stop()


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, one dict per line."""
    import json

    return [
        json.loads(line)
        for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    ]


def run_bouquet_sim(
    overrides: list[str], run_dir, *, multirun: bool = False, timeout: float = 600
):
    """Run the real ``bouquet-sim`` CLI in a subprocess (joining the module's shared
    Ray head, ``shared_ray.SharedRay``); returns the CompletedProcess."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("bouquet-sim")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [
        str(exe),
        *(["--multirun"] if multirun else []),
        *overrides,
        f"{key}={run_dir}",
    ]
    env = dict(os.environ)
    if not env.get("RAY_ADDRESS"):
        env["RAY_ADDRESS"] = SharedRay.address_for_run()
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def pytest_collection_modifyitems(config, items):
    """Everything under ``tests/e2e/`` starts real engines (Ray, ``flwr run``, a
    SuperLink):
    mark it ``e2e`` so that ``-m "not e2e"`` is the fast unit loop and ``-m e2e`` the
    slow one."""
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.e2e)
