"""Issue 18: the Flower app is configured the Flower way (kebab-case run-config
keys)."""

from __future__ import annotations

import pytest
import tomllib
from conftest import ROOT
from flwr.app import Context
from flwr.app import RecordDict

from bouquet.simulations.run.flower_app import RUN_CONFIG_KEYS
from bouquet.simulations.run.flower_app import compose_config
from bouquet.simulations.run.flower_app import follow_federation_size
from bouquet.simulations.run.flower_app import run_config_overrides


def _context(run_config: dict) -> Context:
    return Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )


class _Grid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


def test_every_key_is_declared_in_pyproject_with_an_empty_default():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"][
        "app"
    ]["config"]
    assert set(RUN_CONFIG_KEYS) <= set(declared)
    assert all(declared[k] == "" for k in RUN_CONFIG_KEYS)


def test_keys_map_onto_the_hydra_config_and_win_over_defaults():
    rc = {
        "overrides": "+compression.server_lr=0.5",
        "num-server-rounds": 4,
        "dataset": "digits",
        "client": "topk",
        "alpha": 0.05,
        "lr": 0.1,
        "local-epochs": 2,
        "batch-size": 16,
        "fraction-train": 0.5,
        "seed": 7,
        "strategy": "fedprox",
        "partition": "iid",
        "num-clients": 4,
        "local-steps": "",
    }
    cfg = compose_config(" ".join(run_config_overrides(rc)))
    assert (
        cfg["simulation"]["num_rounds"] == 4 and cfg["simulation"]["num_clients"] == 4
    )
    assert cfg["simulation"]["fraction_train"] == 0.5 and cfg["seed"] == 7
    assert cfg["dataset"]["name"] == "digits" and cfg["partition"]["kind"] == "iid"
    assert (
        cfg["client"]["_target_"].endswith("TopKClient")
        and cfg["client"]["alpha"] == 0.05
    )
    assert (
        cfg["client"]["lr"] == 0.1
        and cfg["client"]["local_epochs"] == 2
        and cfg["client"]["batch_size"] == 16
    )
    assert cfg["client"]["local_steps"] is None  # "" keeps the default
    assert (
        cfg["strategy"]["_target_"].endswith("FedProx")
        and cfg["compression"]["server_lr"] == 0.5
    )


def test_the_same_key_in_overrides_and_a_run_config_key_is_refused():
    with pytest.raises(ValueError, match="num-server-rounds.*simulation.num_rounds"):
        run_config_overrides(
            {"overrides": "simulation.num_rounds=2", "num-server-rounds": 5}
        )


def test_number_of_clients_follows_the_supernodes_unless_set():
    ctx = _context({"dataset": "digits"})
    cfg = compose_config(" ".join(run_config_overrides(dict(ctx.run_config))))
    out = follow_federation_size(cfg, ctx, _Grid(4))
    assert (
        out["simulation"]["num_clients"] == 4
        and out["strategy"]["min_available_nodes"] == 4
    )
    ctx = _context({"dataset": "digits", "num-clients": 3})
    cfg = compose_config(" ".join(run_config_overrides(dict(ctx.run_config))))
    assert follow_federation_size(cfg, ctx, _Grid(4))["simulation"]["num_clients"] == 3
