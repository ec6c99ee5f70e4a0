"""The composition matrix of issue 13: enumerate, validate and run config combinations.

Every ``client`` x ``strategy`` x ``server`` x ``model`` value of ``conf/`` is one
:class:`Combo`. :func:`verdict` says whether validation accepts it; :func:`run_round`
runs an accepted one for one round exactly as ``bouquet-sim``'s ServerApp does
(:func:`bouquet.simulations.run.serverapp.run_server`: ``build_strategy`` with the run's
``Experiment``, the run recorder, the async loop's ``bind_recorder``), with the real
ClientApp of :func:`~bouquet.simulations.run.serverapp.make_client_app` answering on an
:class:`~inprocess_grid.InProcessGrid` (no Ray), and returns what a test needs to show
that each named feature acted (:class:`Outcome`).

Enumerating 350 combinations with one Hydra ``compose`` each takes half a minute on two
busy cores, so :func:`assembled` builds a combination's config from per-value
compositions (each group value composed by Hydra once per dataset, then put into that
dataset's base composition). Group values interpolate only root, ``simulation`` and
``dataset`` keys, so this is the config Hydra composes; :func:`composed` (one real
``compose``) lets a test check that for every combination it runs.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from typing import NamedTuple

import numpy as np
import pytest
from hydra import compose
from hydra import initialize_config_module
from inprocess_grid import InProcessGrid
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
AXES = ("client", "strategy", "server", "model")
NUM_NODES = 3
SMALL = [
    f"simulation.num_clients={NUM_NODES}",
    "simulation.num_rounds=1",
    "seed=0",
    "client.local_epochs=1",
]
DATASET_SMALL = {"digits": [], "movielens": ["dataset.max_users=60"]}


def group_values(group: str) -> list[str]:
    """The values of config group ``group``: its yaml files under ``conf/``."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


class Combo(NamedTuple):
    """One ``client`` x ``strategy`` x ``server`` x ``model`` combination."""

    client: str
    strategy: str
    server: str
    model: str

    @property
    def dataset(self) -> str:
        """``movielens`` for the recommendation values, else ``digits``."""
        return (
            "movielens" if self.client == "recsys" or self.model == "mf" else "digits"
        )

    @property
    def options(self) -> dict[str, str]:
        """Group -> value, the dataset included."""
        return {**dict(zip(AXES, self, strict=True)), "dataset": self.dataset}

    def overrides(self) -> list[str]:
        """The command-line overrides of this combination (small settings included)."""
        own = [f"{g}={v}" for g, v in zip(AXES, self, strict=True)]
        return [f"dataset={self.dataset}", *DATASET_SMALL[self.dataset], *SMALL, *own]

    def __str__(self) -> str:
        return " ".join(f"{g}={v}" for g, v in zip(AXES, self, strict=True))


VALUES = {group: group_values(group) for group in AXES}
COMBOS = [Combo(*values) for values in itertools.product(*(VALUES[g] for g in AXES))]


def _compose(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise TypeError("the composed config is not a mapping")
    return container


@cache
def _base(dataset: str) -> dict[str, Any]:
    return _compose([f"dataset={dataset}", *DATASET_SMALL[dataset], *SMALL])


@cache
def _section(group: str, value: str, dataset: str) -> dict[str, Any]:
    return _compose(
        [f"dataset={dataset}", *DATASET_SMALL[dataset], *SMALL, f"{group}={value}"]
    )[group]


def assembled(combo: Combo) -> dict[str, Any]:
    """``combo``'s config from per-value compositions (see the module docstring); a
    fresh copy."""
    cfg = copy.deepcopy(_base(combo.dataset))
    for group, value in zip(AXES, combo, strict=True):
        cfg[group] = copy.deepcopy(_section(group, value, combo.dataset))
    return cfg


def composed(combo: Combo) -> dict[str, Any]:
    """``combo``'s config from one Hydra composition, as ``bouquet-sim`` composes it."""
    return _compose(combo.overrides())


@cache
def verdict(combo: Combo) -> str | None:
    """Why validation (``validate_run``) refuses ``combo``, or ``None`` if it accepts
    it.

    Raises
    ------
    FileNotFoundError
        If the combination's dataset is not in the data cache.
    """
    from bouquet.simulations.config.validate import validate_run

    try:
        validate_run(assembled(combo))
    except ValueError as exc:
        return str(exc)
    return None


def verdict_or_skip(combo: Combo) -> str | None:
    """:func:`verdict`, skipping the test when the dataset is not in the cache."""
    try:
        return verdict(combo)
    except FileNotFoundError as exc:
        pytest.skip(
            f"dataset={combo.dataset} is not in the data cache ({exc}); `make data` "
            "fetches it"
        )


@dataclass
class Outcome:
    """What one in-process round left behind.

    Attributes
    ----------
    cfg : dict
        The resolved config that ran.
    strategy : Strategy
        The chain ``build_strategy`` built (outermost first in ``chain(strategy)``).
    grid : InProcessGrid
        Every message each node received and answered.
    rows : list of dict
        ``metrics.jsonl``.
    summary : dict
        What ``run_server`` returned (``summary.json``).
    initial, final : dict
        The model before the run and ``final_model.npz``.
    adjusted : list of (dict, dict)
        Input and output of every call of ``ServerAdjusted``'s ``adjust_fn``.
    exp : Experiment
        The run's experiment (data, model factory).
    """

    cfg: dict[str, Any]
    strategy: Any
    grid: InProcessGrid
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    initial: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    adjusted: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    exp: Any

    @property
    def is_async(self) -> bool:
        return bool(self.rows) and "updates" in self.rows[0]


def _spy(
    adjust_fn: Callable[..., Any],
    calls: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
) -> Callable[..., Any]:
    """``adjust_fn`` recording its input and output arrays (it is called exactly as
    before)."""

    def spied(arrays: Any, server_round: int) -> Any:
        before = {k: v.numpy().copy() for k, v in arrays.items()}
        result = adjust_fn(arrays, server_round)
        out = result[0] if isinstance(result, tuple) else result
        calls.append(
            (
                before,
                {
                    k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                    for k, v in out.items()
                },
            )
        )
        return result

    return spied


def run_round(
    cfg: dict[str, Any], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Outcome:
    """Run ``cfg`` through ``run_server`` on an :class:`InProcessGrid` (see the module
    docstring)."""
    from bouquet.simulations.methods.experiments import get_experiment
    from bouquet.simulations.run import results
    from bouquet.simulations.run import serverapp as server
    from bouquet.strategies.server_adjusted import ServerAdjusted
    from bouquet.strategies.wrapper import chain

    built: list[Any] = []
    adjusted: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    original = server.build_strategy

    def recording_build(cfg_: dict[str, Any], exp: Any) -> Any:
        strategy = original(cfg_, exp)
        for link in chain(strategy):
            if isinstance(link, ServerAdjusted):
                link.adjust_fn = _spy(link.adjust_fn, adjusted)
        built.append(strategy)
        return strategy

    monkeypatch.setattr(server, "build_strategy", recording_build)
    # not under test here
    monkeypatch.setattr(results, "plot_curves", lambda rows, path: None)
    grid = InProcessGrid(
        server.make_client_app(cfg), int(cfg["simulation"]["num_clients"])
    )
    summary = server.run_server(grid, cfg, run_dir)  # type: ignore[arg-type]
    exp = get_experiment(cfg)
    if len(built) != 1:
        raise AssertionError(f"run_server built {len(built)} strategies, expected 1")
    return Outcome(
        cfg=cfg,
        strategy=built[0],
        grid=grid,
        rows=results.read_rows(run_dir),
        summary=summary,
        initial=exp.initial_arrays(),
        final=dict(np.load(run_dir / results.MODEL_FILE)),
        adjusted=adjusted,
        exp=exp,
    )
