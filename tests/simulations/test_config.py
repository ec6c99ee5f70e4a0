"""Config composition, instantiation of every config group, and refusals before a run
starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose
from hydra import initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bouquet.simulations.config.validate import validate_config

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


@pytest.mark.parametrize(
    "group",
    [
        "dataset",
        "partition",
        "model",
        "client",
        "strategy",
        "server",
        "simulation",
        "fault",
    ],
)
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


@pytest.mark.parametrize(
    "override",
    ["simulation.num_clientz=3", "client.learning_rate=0.1", "partition.alpha=0.1"],
)
def test_misspelled_or_foreign_key_refused(override: str) -> None:
    # partition.alpha exists only for the dirichlet partition, so it is foreign to iid
    overrides = (
        ["partition=iid", override] if override.startswith("partition") else [override]
    )
    with pytest.raises(
        ConfigCompositionException, match=override.split("=")[0].split(".")[-1]
    ):
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

    from bouquet.simulations.methods.experiment import Experiment
    from bouquet.simulations.methods.experiments import experiment_class

    cfg = _compose([f"model={option}", *MODEL_DATASET.get(option, ["dataset=mnist"])])
    exp: Experiment = experiment_class(cfg)(cfg)
    model = exp.build_model()
    assert (
        isinstance(model, torch.nn.Module)
        and sum(p.numel() for p in model.parameters()) > 0
    )
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


# -------------------------------------------------------- combinations that cannot work
# One case per rule of COMBINATIONS (rule name -> overrides, text the one-line reason
# contains).
COMBINATION_CASES: dict[str, tuple[list[str], list[str]]] = {
    "_async_adjust": (
        ["strategy=async", "server=adjust"],
        ["strategy=async", "server=adjust", "never runs"],
    ),
    "_secagg": (
        ["privacy=secagg", "client=topk"],
        ["privacy=secagg", "client=topk", "client=shared_topk"],
    ),
    "_dp": (
        ["privacy=dp_client", "strategy=async"],
        ["privacy=dp_client", "strategy=async", "synchronous"],
    ),
    "_early_exit_adjust": (
        ["model=early_exit", "client=early_exit", "server=adjust"],
        ["model=early_exit", "server=adjust", "cannot train"],
    ),
    "_depth_needs_early_exit": (
        ["strategy=depth_fedavg"],
        ["strategy=depth_fedavg", "model=early_exit"],
    ),
    "_early_exit_pair": (
        ["model=early_exit"],
        ["model=early_exit", "client=early_exit"],
    ),
    "_recsys_pair": (["client=recsys"], ["client=recsys", "dataset=movielens"]),
    "_recsys_strategy": (
        ["experiment=recsys", "strategy=kl_weighted"],
        ["dataset=movielens", "strategy=kl_weighted"],
    ),
    "_lenet_digits": (
        ["dataset=digits", "model=lenet"],
        ["model=lenet", "dataset=digits"],
    ),
    "_capacity_needs_depths": (
        ["model=early_exit", "client=early_exit", "client.max_depth=2"],
        ["strategy=fedavg", "client.max_depth=2", "depth_fedavg"],
    ),
    "_codec_args": (
        ["experiment=recsys", "client.codec=topk"],
        ["client.codec=topk", "client.codec_args.alpha"],
    ),
    "_dgc_options": (
        ["client=topk", "client.momentum_correction=0.9", "client.residual_decay=0"],
        [
            "client.momentum_correction=0.9",
            "client.residual_decay=0",
            "error-feedback residual",
        ],
    ),
    "_compression": (
        ["+compression.server_lr=0.5"],
        ["compression.server_lr", "client=plain"],
    ),
    "_downlink_strategy": (
        ["downlink=stc", "strategy=async"],
        ["downlink=stc", "strategy=async", "one global model"],
    ),
    "_fault_rates": (
        ["fault=mixed", "fault.crash_rate=0.9"],
        ["fault.crash_rate=0.9", "fault.hang_rate", "[0, 1]"],
    ),
    "_early_exit_model": (
        ["model=early_exit", "client=early_exit", "model.widths=[16,30,64]"],
        ["model.widths"],
    ),
    "_depth_probs": (
        ["experiment=early_exit", "strategy.depth_probs=[0.5,0.5]"],
        ["strategy.depth_probs", "strategy.depths"],
    ),
    "_search": (["+search=default"], ["search.", "task=federated"]),
    "_users": (
        ["experiment=recsys", "dataset.max_users=5"],
        ["simulation.num_clients=10", "dataset.max_users=5"],
    ),
    "_train_config": (["+train_config.lr=0"], ["train_config.lr=0"]),
    "_cpus": (
        ["simulation.total_cpus=2", "simulation.client_cpus=3"],
        ["simulation.client_cpus=3", "total_cpus"],
    ),
    "_min_nodes": (
        ["strategy.min_train_nodes=11"],
        ["strategy.min_train_nodes=11", "simulation.num_clients=10"],
    ),
}


@pytest.mark.parametrize("rule", sorted(COMBINATION_CASES))
def test_each_combination_rule_refuses_naming_the_keys(rule: str) -> None:
    from bouquet.simulations.config.combinations import COMBINATIONS

    overrides, expected = COMBINATION_CASES[rule]
    cfg = _compose(overrides)
    with pytest.raises(ValueError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, message
    refusing = [
        c.rule.__name__ for c in COMBINATIONS if c.rule(cfg, _group_values(cfg))
    ]
    assert refusing[:1] == [rule]


def _group_values(cfg: dict) -> dict:
    from bouquet.simulations.config.validate import check_schema

    return check_schema(cfg)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            [
                "client=stc",
                "client.momentum_correction=0.5",
                "client.residual_decay=0.0",
            ],
            "client.momentum_correction=0.5 and",
        ),
        (
            ["client=stc", "client.alpha=1.0", "client.warmup_rounds=3"],
            "client.warmup_rounds=3 and client.alpha=1.0",
        ),
        (
            [
                "experiment=recsys",
                "client.codec=topk",
                "+client.codec_args.alpha=0.1",
                "+client.codec_args.momentum_correction=0.9",
                "+client.codec_args.residual_decay=0",
            ],
            "client.codec_args.momentum_correction=0.9 and "
            "client.codec_args.residual_decay=0",
        ),
        (
            ["client=ternary", "+client.momentum_correction=0.9"],
            "client.momentum_correction is not a key of client=ternary",
        ),
        (
            [
                "experiment=recsys",
                "client.codec=ternary",
                "+client.codec_args.momentum_correction=0.9",
            ],
            "client.codec_args.momentum_correction is not a setting of "
            "client.codec=ternary",
        ),
        (
            ["client=topk", "+compression.server_momentum=1.0"],
            "compression.server_momentum=1.0 is out of range [0, 1)",
        ),
        (
            ["+compression.server_momentum=0.9"],
            "compression.server_momentum has no effect: client=plain",
        ),
    ],
)
def test_dgc_and_server_momentum_refusals(overrides: list[str], expected: str) -> None:
    with pytest.raises(ValueError, match=re.escape(expected)):
        validate_config(_compose(overrides))


def test_dgc_and_server_momentum_settings_pass() -> None:
    for overrides in (
        [
            "client=topk",
            "client.momentum_correction=0.9",
            "client.clip_norm=1.0",
            "client.warmup_rounds=4",
            "+compression.server_momentum=0.9",
            "+compression.server_lr=0.1",
        ],
        ["client=stc", "client.alpha=1.0", "client.rho=0.5", "client.warmup_rounds=2"],
        [
            "experiment=recsys",
            "client.codec=stc",
            "+client.codec_args.alpha=0.1",
            "+client.codec_args.momentum_correction=0.9",
        ],
    ):
        validate_config(_compose(overrides))


def test_every_combination_rule_has_a_case() -> None:
    from bouquet.simulations.config.combinations import COMBINATIONS

    assert {c.rule.__name__ for c in COMBINATIONS} == set(COMBINATION_CASES)


def test_the_two_known_silent_failures_are_refused_in_one_line() -> None:
    for overrides, a, b in [
        (["strategy=async", "server=adjust"], "strategy=async", "server=adjust"),
        (
            ["experiment=early_exit", "server=adjust"],
            "model=early_exit",
            "server=adjust",
        ),
    ]:
        with pytest.raises(
            ValueError, match=rf"^{a} and {b} cannot be combined: [^\n]+$"
        ):
            validate_config(_compose(overrides))


def test_flwr_run_skips_the_simulation_only_checks() -> None:
    cfg = _compose(["strategy.min_train_nodes=11"])
    # a SuperLink may have more nodes than partitions
    validate_config(cfg, in_simulation=False)
    with pytest.raises(ValueError, match="min_train_nodes"):
        validate_config(cfg)


# ------------------------------------------------------------ checks that need the data
@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        (
            ["dataset=digits", "simulation.num_clients=2000"],
            "simulation.num_clients=2000 is more than the",
        ),
        (
            [
                "dataset=digits",
                "partition=pathological",
                "partition.labels_per_client=11",
            ],
            "partition.labels_per_client=11",
        ),
        (
            ["dataset=digits", "partition=unbalanced", "partition.min_size=200"],
            "partition.min_size=200 x simulation.num_clients=10 is more than the "
            "1438 training samples",
        ),
        (
            ["dataset=digits", "partition=unbalanced", "partition.alpha=0.00001"],
            "partition.alpha=1e-05 is too small",
        ),
        (
            [
                "dataset=digits",
                "model=early_exit",
                "client=early_exit",
                "strategy=depth_fedavg",
                "strategy.depths=[4]",
            ],
            "strategy.depths=[4] is out of range: the model has 3 exits",
        ),
        (
            [
                "dataset=digits",
                "model=early_exit",
                "client=early_exit",
                "model.exit_weights=[1,1]",
            ],
            "model.exit_weights",
        ),
    ],
)
def test_data_checks_refuse_before_the_engine(overrides: list[str], text: str) -> None:
    from bouquet.simulations.config.validate import validate_run

    cfg = _compose(overrides)
    validate_config(cfg)  # fine without the data
    with pytest.raises(ValueError) as info:
        validate_run(cfg)
    assert text in str(info.value)


def test_missing_dataset_is_a_file_not_found_naming_make_data(tmp_path: Path) -> None:
    from bouquet.simulations.config.validate import validate_run

    with pytest.raises(FileNotFoundError, match="make data"):
        validate_run(_compose([f"dataset.root={tmp_path}"]))
