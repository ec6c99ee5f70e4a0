"""Checkpoints, resume after a crash, bounded waits, tolerated failures (issue 10)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reply

from bouquet.simulations.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    config_differences,
    load_checkpoint,
    load_strategy_state,
    save_checkpoint,
    strategy_state,
)
from bouquet.simulations.metering import MeteredGrid, NodesUnavailable

BASE = ["dataset=digits", "simulation.num_clients=3", "client.lr=0.05"]


def test_truncated_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"round": 1, "arrays": {"w": np.ones(3)}})
    save_checkpoint(tmp_path, {"round": 2, "arrays": {"w": np.full(3, 2.0)}})
    assert load_checkpoint(tmp_path)["round"] == 2
    latest = tmp_path / CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:-10])  # cut mid-write
    payload = load_checkpoint(tmp_path)
    assert payload["round"] == 1 and np.array_equal(payload["arrays"]["w"], np.ones(3))
    (tmp_path / "checkpoint.prev.pkl").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_checkpoint(tmp_path)


def test_config_differences_name_the_keys() -> None:
    saved = {"seed": 0, "client": {"lr": 0.1}, "simulation": {"num_rounds": 3, "resume": None}}
    current = {"seed": 1, "client": {"lr": 0.1}, "simulation": {"num_rounds": 5, "resume": "/x"}}
    assert config_differences(saved, current) == ["seed"]


def test_fedadam_state_round_trip() -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAdam

    class _Grid:
        def get_node_ids(self):
            return [1, 2]

    def run_round(strategy: FedAdam, server_round: int, value: float) -> np.ndarray:
        arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))}) if strategy.current_arrays is None else ArrayRecord({"w": Array(strategy.current_arrays["w"])})
        list(strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid()))
        agg, _ = strategy.aggregate_train(server_round, [make_reply({"w": np.full(4, value, dtype=np.float32)}, 3)])
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


