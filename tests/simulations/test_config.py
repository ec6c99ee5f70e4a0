"""Config composition, instantiation of every config group, and refusals before a run starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bouquet.simulations.validate import validate_config

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(overrides: list[str]) -> dict:
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_is_fedavg_mnist_10_clients_dirichlet_05() -> None:
    cfg = _compose([])
    assert cfg["dataset"]["name"] == "mnist"
    assert cfg["partition"]["kind"] == "dirichlet" and cfg["partition"]["alpha"] == 0.5
    assert cfg["simulation"]["num_clients"] == 10
    assert cfg["strategy"]["_target_"] == "flwr.serverapp.strategy.FedAvg"


@pytest.mark.parametrize("group", ["dataset", "partition", "model", "client", "strategy", "server", "simulation", "fault"])
def test_every_option_of_every_group_composes(group: str) -> None:
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = _compose([f"{group}={option}"])
        assert group in cfg


@pytest.mark.parametrize("option", _options("experiment"))
def test_every_experiment_preset_composes(option: str) -> None:
    cfg = _compose([f"experiment={option}"])
    validate_config(cfg)


def test_user_overrides_apply() -> None:
    cfg = _compose(
        [
            "dataset=digits",
            "partition=pathological",
            "partition.labels_per_client=2",
            "simulation.num_clients=7",
            "simulation.num_rounds=3",
            "simulation.fraction_train=0.5",
            "client.local_epochs=2",
            "client.lr=0.05",
            "seed=4",
        ]
    )
    assert cfg["strategy"]["fraction_train"] == 0.5  # interpolated from simulation
    assert cfg["strategy"]["min_available_nodes"] == 7
    assert cfg["client"]["lr"] == 0.05 and cfg["seed"] == 4


@pytest.mark.parametrize("override", ["simulation.num_clientz=3", "client.learning_rate=0.1", "partition.alpha=0.1"])
def test_misspelled_or_foreign_key_refused(override: str) -> None:
    # partition.alpha exists only for the dirichlet partition, so it is foreign to iid
    overrides = ["partition=iid", override] if override.startswith("partition") else [override]
    with pytest.raises(ConfigCompositionException, match=override.split("=")[0].split(".")[-1]):
        _compose(overrides)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("partition.alpha=0", "partition.alpha"),
        ("simulation.num_clients=0", "simulation.num_clients"),
        ("simulation.fraction_train=1.5", "simulation.fraction_train"),
        ("client.lr=-1", "client.lr"),
        ("simulation.num_rounds=0", "simulation.num_rounds"),
    ],
)
def test_impossible_values_refused_naming_the_key(override: str, key: str) -> None:
    cfg = _compose([override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_more_clients_than_samples_refused() -> None:
    cfg = _compose(["dataset=digits", "simulation.num_clients=5000"])
    with pytest.raises(ValueError, match="simulation.num_clients"):
        validate_config(cfg, num_train_samples=1437)


@pytest.mark.parametrize("option", _options("strategy"))
def test_every_strategy_instantiates(option: str) -> None:
    from flwr.serverapp.strategy import Strategy

    cfg = _compose([f"strategy={option}"])
    built = instantiate(cfg["strategy"])
    if callable(built) and not isinstance(built, Strategy):  # a _partial_ strategy
        assert isinstance(built.func, type) and issubclass(built.func, Strategy)
    else:
        assert isinstance(built, Strategy)


# Each model with a dataset it is meant for (the recommendation model needs ratings).
MODEL_DATASET = {"mf": ["dataset=movielens", "dataset.max_users=30"]}


@pytest.mark.parametrize("option", _options("model"))
def test_every_model_instantiates(option: str) -> None:
    import torch

    from bouquet.simulations.experiment import Experiment, experiment_class

    cfg = _compose([f"model={option}", *MODEL_DATASET.get(option, ["dataset=mnist"])])
    exp: Experiment = experiment_class(cfg)(cfg)
    model = exp.build_model()
    assert isinstance(model, torch.nn.Module) and sum(p.numel() for p in model.parameters()) > 0
    if option in MODEL_DATASET:
        return
    out = model(torch.zeros(2, 1, 28, 28))
    logits = out[-1] if isinstance(out, (list, tuple)) else out
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("option", _options("partition"))
def test_every_partition_instantiates(option: str) -> None:
    import numpy as np

    cfg = _compose([f"partition={option}"])
    parts = instantiate(cfg["partition"])(np.repeat(np.arange(10), 20), 4, seed=0)
    assert len(parts) == 4
