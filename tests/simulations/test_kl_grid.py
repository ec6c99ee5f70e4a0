"""The KL benchmark grid (benchmarks/bench_kl.py): its cells compose and validate, its
verdict is computed."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT

from bouquet.simulations.config.validate import validate_config


def _bench_kl():  # type: ignore[no-untyped-def]
    if "bench_kl" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench_kl", ROOT / "benchmarks" / "bench_kl.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_kl"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_kl"]


def test_the_grid_is_issue_15s_unbalanced_cell() -> None:
    bk = _bench_kl()
    grid = bk.cells(bk.DEFAULT_DATASETS, bk.DEFAULT_PARTITIONS, list(bk.ARMS), bk.SEEDS)
    assert len(grid) == 15 and len({c.key for c in grid}) == 15
    assert {c.key_dict["dataset"] for c in grid} == {"fashion_mnist"} and {
        c.key_dict["seed"] for c in grid
    } == {0, 1, 2}


@pytest.mark.parametrize(
    "arm", ["fedavg", "exp closer", "exp farther", "disco", "disco a=0.05"]
)
def test_every_arm_composes_and_validates_with_the_protocol(arm: str) -> None:
    bk = _bench_kl()
    (cell,) = bk.cells(["fashion_mnist"], bk.DEFAULT_PARTITIONS, [arm], [1])
    cfg = bk.compose_cfg(list(cell.overrides))
    validate_config(cfg)
    assert cfg["partition"] == {
        **cfg["partition"],
        "kind": "unbalanced",
        "sizes": "exponential",
        "min_size": 32,
        "alpha": 0.5,
    }
    assert (cfg["model"]["name"], cfg["seed"]) == ("lenet", 1)
    assert {
        k: cfg["simulation"][k] for k in ("num_clients", "num_rounds", "fraction_train")
    } == {"num_clients": 10, "num_rounds": 30, "fraction_train": 1.0}
    assert {
        k: cfg["client"][k] for k in ("local_epochs", "batch_size", "lr", "momentum")
    } == {"local_epochs": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.9}
    if arm == "fedavg":
        assert cfg["strategy"]["_target_"] == "flwr.serverapp.strategy.FedAvg"
    else:
        assert cfg["strategy"]["mode"] == arm.split()[0]
        assert (
            cfg["strategy"]["a"]
            == {
                "exp closer": 1.0,
                "exp farther": 1.0,
                "disco": 0.5,
                "disco a=0.05": 0.05,
            }[arm]
        )


def _finals(**arms: list[float]) -> dict[str, dict[int, float]]:
    return {arm.replace("_", " "): dict(enumerate(accs)) for arm, accs in arms.items()}


def test_verdict_names_a_gain_only_beyond_the_seed_spread() -> None:
    bk = _bench_kl()
    gain = bk.verdict(
        "fashion_mnist",
        "p",
        _finals(fedavg=[0.80, 0.82, 0.81], exp_farther=[0.84, 0.85, 0.845]),
    )
    assert (
        "exp farther (+3.50 pt" in gain
        and "gains over FedAvg beyond the seed spread" in gain
    )
    # positive in every seed, but the mean (+0.5 pt) is inside FedAvg's sd (1 pt)
    small = bk.verdict(
        "fashion_mnist",
        "p",
        _finals(fedavg=[0.80, 0.82, 0.81], exp_farther=[0.805, 0.825, 0.815]),
    )
    assert (
        "no KL-weighted setting gains over FedAvg beyond the seed spread" in small
        and "+0.50 pt" in small
    )
    # large mean, but one seed below FedAvg
    mixed = bk.verdict(
        "fashion_mnist",
        "p",
        _finals(fedavg=[0.80, 0.80, 0.80], disco=[0.90, 0.90, 0.79]),
    )
    assert "no KL-weighted setting gains" in mixed
    pending = bk.verdict(
        "fashion_mnist", "p", _finals(fedavg=[0.80, 0.82], disco=[0.9, 0.9])
    )
    assert "no verdict yet" in pending


def test_no_finished_cell_renders_nothing() -> None:
    assert _bench_kl().render([]) is None
