"""``flwr run .`` of this project against a local simulation connection completes.

The test uses its own ``FLWR_HOME`` (a temp dir with a ``config.toml`` whose connection
has the address ``:local:``) and its own free ports for the SuperLink that ``flwr run``
starts *detached*. ``flwr run`` exits 0 even when the run failed, so the run's final
status is read with ``flwr ls --format json``; the ServerApp must have written
``summary.json`` into the ``run-dir`` given in the run config. The detached SuperLink
and its children are stopped by PID.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import metrics_rows

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flwr_helpers import _flwr  # noqa: E402
from flwr_helpers import _pids_with_arg  # noqa: E402

from deploy.flwrcli import parse_json_output  # noqa: E402
from deploy.processes import alive  # noqa: E402
from deploy.processes import stop_tree  # noqa: E402

pytestmark = pytest.mark.e2e

NUM_NODES = 2
NUM_ROUNDS = 2
TIMEOUT_S = 420


def test_flwr_run_local_simulation(
    flwr_home: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    home, env = flwr_home
    run_dir = tmp_path / "run"
    overrides = (
        f"dataset=digits simulation.num_clients={NUM_NODES} "
        f"simulation.num_rounds={NUM_ROUNDS}"
    )
    out = _flwr(
        env,
        "run",
        str(ROOT),
        "local",
        "--stream",
        "--run-config",
        f"overrides='{overrides}' run-dir='{run_dir}'",
        "--federation-config",
        f"num-supernodes={NUM_NODES} client-resources-num-cpus=1",
        timeout=TIMEOUT_S,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    match = re.search(r"Successfully started run (\d+)", text)
    assert match, text[-3000:]
    run_id = match.group(1)

    ls = _flwr(env, "ls", "local", "--run-id", run_id, "--format", "json")
    assert ls.returncode == 0, ls.stdout + ls.stderr
    runs = parse_json_output(ls.stdout)["runs"]
    assert len(runs) == 1 and runs[0]["run-id"] == run_id
    assert runs[0]["status"] == "finished:completed", runs[0]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds"] == NUM_ROUNDS
    rows = metrics_rows(run_dir)
    assert [r["round"] for r in rows] == list(range(NUM_ROUNDS + 1))
    assert all(r["clients_ok"] == NUM_NODES for r in rows[1:]), rows
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["dataset"]["name"] == "digits"

    # the detached SuperLink is ours (our FLWR_HOME is in its command line); stop it now
    pids = _pids_with_arg(str(home / "local-superlink"))
    assert pids, "expected the detached SuperLink that `flwr run` started"
    for pid in pids:
        stop_tree(pid)
    assert not any(alive(p) for p in pids)


# -------------------------------------------------------------- the app's pieces (fast)
class _FakeGrid:
    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def get_node_ids(self) -> list[int]:
        n = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return list(range(n))


def _context(run_config: dict, node_config: dict):
    from flwr.app import Context
    from flwr.app import RecordDict

    return Context(
        run_id=7,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config,
    )


def test_split_overrides_keeps_quoted_values() -> None:
    from bouquet.simulations.run.flower_app import split_overrides

    assert split_overrides("  a=1 b=\"x y\"  c=[1,2] d='p q' ") == [
        "a=1",
        'b="x y"',
        "c=[1,2]",
        "d='p q'",
    ]
    assert split_overrides("") == []
    with pytest.raises(ValueError, match="unclosed"):
        split_overrides('a="x')


def test_compose_config_applies_overrides_like_bouquet_sim() -> None:
    from bouquet.simulations.run.flower_app import compose_config

    cfg = compose_config("dataset=digits strategy=fedprox simulation.num_rounds=3")
    assert cfg["dataset"]["name"] == "digits"
    assert cfg["strategy"]["_target_"] == "flwr.serverapp.strategy.FedProx"
    assert cfg["simulation"]["num_rounds"] == 3
    # resolved
    assert cfg["strategy"]["min_available_nodes"] == cfg["simulation"]["num_clients"]
    cfg["dataset"]["name"] = "changed"  # a copy: the cache is not affected
    assert (
        compose_config("dataset=digits strategy=fedprox simulation.num_rounds=3")[
            "dataset"
        ]["name"]
        == "digits"
    )
    with pytest.raises(Exception, match="no_such_strategy"):
        compose_config("strategy=no_such_strategy")


def test_client_config_takes_partitions_from_node_config() -> None:
    from bouquet.simulations.run.flower_app import client_config

    ctx = _context(
        {"overrides": "dataset=digits simulation.num_clients=10"},
        {"partition-id": 2, "num-partitions": 3},
    )
    assert client_config(ctx)["simulation"]["num_clients"] == 3
    bad = _context(
        {"overrides": "dataset=digits"}, {"partition-id": 3, "num-partitions": 3}
    )
    with pytest.raises(ValueError, match="partition-id=3"):
        client_config(bad)
    with pytest.raises(ValueError, match="must be a string"):
        client_config(_context({"overrides": 5}, {}))


def test_run_dir_default_is_timestamped_under_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from bouquet.simulations.run.flower_app import resolve_run_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    default = resolve_run_dir("", run_id=42)
    assert default.parent == tmp_path / "bouquet" / "runs" and default.name.endswith(
        "-run42"
    )
    assert resolve_run_dir(str(tmp_path / "x")) == tmp_path / "x"


def test_wait_for_nodes_fails_clearly() -> None:
    from bouquet.simulations.run.metering import MeteredGrid
    from bouquet.simulations.run.metering import NodesUnavailable

    assert (
        MeteredGrid(_FakeGrid([0, 1, 2])).wait_for_nodes(2, timeout_s=5, poll_s=0.01)
        == 2
    )
    with pytest.raises(NodesUnavailable, match="only 1 of the 3 nodes"):
        MeteredGrid(_FakeGrid([1])).wait_for_nodes(3, timeout_s=0.05, poll_s=0.01)


def test_client_app_trains_through_the_bridge() -> None:
    """The module-level ClientApp answers a train message with the configured client."""
    import numpy as np
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord
    from flwr.app import Message
    from flwr.app import MessageType
    from flwr.app import RecordDict

    from bouquet import keys
    from bouquet.simulations.methods.experiments import get_experiment
    from bouquet.simulations.run.flower_app import client_app
    from bouquet.simulations.run.flower_app import client_config

    ctx = _context(
        {"overrides": "dataset=digits"}, {"partition-id": 1, "num-partitions": 2}
    )
    cfg = client_config(ctx)
    arrays = get_experiment(cfg).initial_arrays()
    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1}),
        }
    )
    msg = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    reply = client_app(msg, ctx)
    metrics = reply.content[keys.METRICS]
    assert metrics[keys.NUM_EXAMPLES] == len(get_experiment(cfg).client_data(1)[1])
    out = reply.content[keys.ARRAYS]
    assert list(out.keys()) == list(arrays)
    # it trained
    assert any(not np.allclose(out[k].numpy(), v) for k, v in arrays.items())
