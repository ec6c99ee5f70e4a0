"""Checkpoints, resume after a crash, bounded waits, tolerated failures (issue 10)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reply

from bouquet.simulations.run.checkpoint import CHECKPOINT
from bouquet.simulations.run.checkpoint import PREVIOUS
from bouquet.simulations.run.checkpoint import CheckpointError
from bouquet.simulations.run.checkpoint import load_checkpoint
from bouquet.simulations.run.checkpoint import load_strategy_state
from bouquet.simulations.run.checkpoint import save_checkpoint
from bouquet.simulations.run.checkpoint import strategy_state
from bouquet.simulations.run.metering import MeteredGrid
from bouquet.simulations.run.metering import NodesUnavailable
from bouquet.simulations.run.resume import config_differences

BASE = ["dataset=digits", "simulation.num_clients=3", "client.lr=0.05"]


def test_truncated_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"round": 1, "arrays": {"w": np.ones(3)}})
    save_checkpoint(tmp_path, {"round": 2, "arrays": {"w": np.full(3, 2.0)}})
    assert load_checkpoint(tmp_path)["round"] == 2
    latest = tmp_path / CHECKPOINT / "arrays.npz"
    latest.write_bytes(latest.read_bytes()[:-10])  # cut mid-write
    payload = load_checkpoint(tmp_path)
    assert payload["round"] == 1 and np.array_equal(payload["arrays"]["w"], np.ones(3))
    (tmp_path / PREVIOUS / "state.json").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_checkpoint(tmp_path)


def test_config_differences_name_the_keys() -> None:
    saved = {
        "seed": 0,
        "client": {"lr": 0.1},
        "simulation": {"num_rounds": 3, "resume": None},
    }
    current = {
        "seed": 1,
        "client": {"lr": 0.1},
        "simulation": {"num_rounds": 5, "resume": "/x"},
    }
    assert config_differences(saved, current) == ["seed"]


def test_fedadam_state_round_trip() -> None:
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord
    from flwr.serverapp.strategy import FedAdam

    class _Grid:
        def get_node_ids(self):
            return [1, 2]

    def run_round(strategy: FedAdam, server_round: int, value: float) -> np.ndarray:
        arrays = (
            ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
            if strategy.current_arrays is None
            else ArrayRecord({"w": Array(strategy.current_arrays["w"])})
        )
        list(strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid()))
        agg, _ = strategy.aggregate_train(
            server_round, [make_reply({"w": np.full(4, value, dtype=np.float32)}, 3)]
        )
        return agg["w"].numpy()

    a = FedAdam(min_available_nodes=1, min_train_nodes=1)
    run_round(a, 1, 1.0)
    state = strategy_state(a)
    b = FedAdam(min_available_nodes=1, min_train_nodes=1)
    load_strategy_state(b, state)
    np.testing.assert_array_equal(run_round(a, 2, 2.0), run_round(b, 2, 2.0))


def test_node_wait_is_bounded() -> None:
    class _Empty:
        def get_node_ids(self):
            return []

    grid = MeteredGrid(_Empty(), node_wait_s=0.2)
    grid.get_node_ids()
    time.sleep(0.3)
    with pytest.raises(NodesUnavailable, match="node_wait_s"):
        grid.get_node_ids()


# ------------------------------------------------------- asynchronous runs (in process)
class _Crash(BaseException):
    """Stands for a SIGKILL: not an Exception, so run_server records nothing more."""


def _async_cfg(*extra: str) -> dict:
    from hydra import compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "dataset=digits",
                "model=mlp",
                "client=plain",
                "strategy=async",
                "simulation.num_clients=3",
                "strategy.max_updates=12",
                "strategy.eval_every=6",
                "strategy.plateau_window=0",
                "simulation.checkpoint_every=3",
                *extra,
            ],
        )
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def test_async_run_resumes_where_its_checkpoint_left_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_server`` on an in-process grid whose 3 nodes answer at once (each batch of
    3 replies is handled before the next push, so nothing is in flight at a checkpoint
    every 3 updates): killed right after the checkpoint of update 9 and resumed with
    nodes that kept their ``context.state`` (as SuperNodes do), the run ends exactly as
    the uninterrupted one."""
    from inprocess_grid import InProcessGrid

    from bouquet.simulations.run import checkpoint
    from bouquet.simulations.run import results
    from bouquet.simulations.run import serverapp as server
    from bouquet.simulations.run.results import read_rows

    monkeypatch.setattr(results, "plot_curves", lambda rows, path: None)
    cfg = _async_cfg()
    full = tmp_path / "full"
    server.run_server(InProcessGrid(server.make_client_app(cfg), 3), cfg, full)
    assert load_checkpoint(full)["updates"] == 12

    save = checkpoint.Checkpointer.save

    def save_then_crash(self, step, arrays, *, step_key="round", extra=None):
        save(self, step, arrays, step_key=step_key, extra=extra)
        if step_key == "updates" and step == 9:
            raise _Crash

    crashed = tmp_path / "crashed"
    grid = InProcessGrid(server.make_client_app(cfg), 3)
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint.Checkpointer, "save", save_then_crash)
        with pytest.raises(_Crash):
            server.run_server(grid, cfg, crashed)
    ckpt = load_checkpoint(crashed)
    assert ckpt["updates"] == 9 and "round" not in ckpt
    assert ckpt["period"]["clients_ok"] == 3  # the replies after the line of update 6
    assert [r["updates"] for r in read_rows(crashed)] == [0, 6]
    assert not (crashed / "final_model.npz").exists()

    with pytest.raises(CheckpointError, match="config differs in strategy.alpha"):
        server.run_server(
            grid,
            {
                **cfg,
                "strategy": {**cfg["strategy"], "alpha": 0.3},
                "simulation": {**cfg["simulation"], "resume": str(crashed)},
            },
            tmp_path / "x",
        )

    again = InProcessGrid(server.make_client_app(cfg), 3)
    again.contexts = grid.contexts  # the nodes kept their learner windows
    resumed = {**cfg, "simulation": {**cfg["simulation"], "resume": str(crashed)}}
    summary = server.run_server(again, resumed, tmp_path / "elsewhere")
    assert summary["status"] == "ok"
    # a resume writes into the run it continues
    assert not (tmp_path / "elsewhere" / "metrics.jsonl").exists()
    rows, expected = read_rows(crashed), read_rows(full)
    assert [r["updates"] for r in rows] == [0, 6, 12] and [
        r["version"] for r in rows
    ] == [0, 6, 12]
    assert rows[-1]["stop_reason"] == "update budget 12 reached"
    keys_ = (
        "accuracy",
        "loss",
        "clients_ok",
        "clients_failed",
        "bytes_up",
        "bytes_down",
        "staleness_mean",
        "lr_scale",
        "update_log",
    )
    for row, want in zip(rows, expected, strict=True):
        assert {k: row[k] for k in keys_ if k in want} == {
            k: want[k] for k in keys_ if k in want
        }
    a, b = _final(full), _final(crashed)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert load_checkpoint(crashed)["updates"] == 12


def _final(run_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(run_dir / "final_model.npz"))
