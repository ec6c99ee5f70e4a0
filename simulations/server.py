"""ServerApp / ClientApp factories shared by the simulation engine and ``flwr run``.

``make_server_app(cfg, run_dir)`` and ``make_client_app(cfg)`` build Flower apps from a
resolved config (a plain ``dict``). The strategy is instantiated from ``cfg["strategy"]``
(``_target_``), then wrapped by the wrappers that the config asks for (see
:data:`STRATEGY_WRAPPERS`), and driven by its own ``start()`` on a
:class:`~bouquet.simulations.metering.MeteredGrid`.

Strategy hooks read by the runner (all optional, forwarded by bouquet's wrappers):

* ``round_report() -> dict``: strategy-specific values for this round's ``metrics.jsonl``
  line; ``clients_dropped`` counts replies the strategy rejected (they move from
  ``clients_ok`` to ``clients_failed``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate

from bouquet.clients.bridge import numpyclient_app
from bouquet.simulations.experiment import Experiment, get_experiment
from bouquet.simulations.metering import MeteredGrid
from bouquet.simulations.results import RunFailed, RunRecorder

logger = logging.getLogger(__name__)

StrategyWrapper = Callable[[dict[str, Any], Experiment, Strategy], Strategy]
ClientMods = Callable[[dict[str, Any]], list[Callable[..., Any]]]


def _no_wrap(cfg: dict[str, Any], exp: Experiment, strategy: Strategy) -> Strategy:
    return strategy


# Wrappers applied in order to the configured strategy (compression, server-side adjustment...).
STRATEGY_WRAPPERS: list[StrategyWrapper] = []


def build_strategy(cfg: dict[str, Any], exp: Experiment) -> Strategy:
    """Instantiate ``cfg["strategy"]`` and apply :data:`STRATEGY_WRAPPERS`."""
    strategy = instantiate(cfg["strategy"])
    if isinstance(strategy, partial):  # strategies that need run-time inputs take them here
        strategy = strategy(**strategy_runtime_kwargs(cfg, exp, strategy))
    if not isinstance(strategy, Strategy):
        raise ValueError(f"strategy._target_ built {type(strategy).__name__}, not a flwr.serverapp.strategy.Strategy")
    for wrap in STRATEGY_WRAPPERS:
        strategy = wrap(cfg, exp, strategy)
    return strategy


def strategy_runtime_kwargs(cfg: dict[str, Any], exp: Experiment, factory: partial) -> dict[str, Any]:
    """Run-time keyword arguments for a ``_partial_`` strategy config (none yet)."""
    return {}


def client_mods(cfg: dict[str, Any]) -> list[Callable[..., Any]]:
    """Client mods the config asks for (none by default)."""
    return []


def run_server(grid: Grid, cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Run the configured strategy on ``grid`` and write the run's outputs into ``run_dir``."""
    seed = int(cfg.get("seed", 0))
    random.seed(seed)  # Flower's samplers use the `random` module
    np.random.seed(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    exp = get_experiment(cfg)
    metered = MeteredGrid(grid)
    strategy = build_strategy(cfg, exp)
    report = getattr(strategy, "round_report", None)
    recorder = RunRecorder(run_dir, exp.evaluate_arrays, metered, extra=report)
    sim = cfg["simulation"]
    initial = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in exp.initial_arrays().items()})
    try:
        strategy.start(
            grid=metered,
            initial_arrays=initial,
            num_rounds=int(sim["num_rounds"]),
            timeout=float(sim["round_timeout_s"]),
            train_config=ConfigRecord(dict(cfg.get("train_config") or {})),
            evaluate_fn=recorder,
        )
    except RunFailed:
        raise
    except Exception as exc:  # record why, then fail the run
        recorder.fail(f"{type(exc).__name__}: {exc}")
        raise
    return recorder.finish(None)


def make_server_app(cfg: dict[str, Any], run_dir: str | Path) -> ServerApp:
    """A ``ServerApp`` that runs :func:`run_server` with this config."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, run_dir)

    return app


def _client_from_cfg(cfg: dict[str, Any], context: Context) -> NumPyClient:
    return get_experiment(cfg).client(context)


def make_client_app(cfg: dict[str, Any]) -> ClientApp:
    """A Message-API ``ClientApp`` running the configured NumPyClient on the node's partition."""
    return numpyclient_app(partial(_client_from_cfg, cfg), mods=client_mods(cfg))
