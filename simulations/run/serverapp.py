"""ServerApp / ClientApp factories shared by the simulation engine and ``flwr run``.

``make_server_app(cfg, run_dir)`` and ``make_client_app(cfg)`` build Flower apps from a
resolved config (a plain ``dict``). The strategy is instantiated from
``cfg["strategy"]`` (``_target_``), then wrapped by the wrappers that the config asks
for (see :data:`STRATEGY_WRAPPERS`), and driven by its own ``start()`` on a
:class:`~bouquet.simulations.run.metering.MeteredGrid`.

Strategy hooks read by the runner (all optional, forwarded by bouquet's wrappers):

* ``round_report() -> dict``: strategy-specific values for this round's
  ``metrics.jsonl`` line; ``clients_dropped`` counts replies the strategy rejected (they
  move from ``clients_ok`` to ``clients_failed``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from typing import cast

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate

from bouquet.clients.bridge import numpyclient_app
from bouquet.clients.faults import fault_mod
from bouquet.clients.staleness import staleness_window_mod
from bouquet.clients.state_store import SpilledState
from bouquet.clients.state_store import prune
from bouquet.data import label_histogram
from bouquet.simulations.methods.adjust import wrap_server_adjust
from bouquet.simulations.methods.compression import wrap_compression
from bouquet.simulations.methods.downlink import client_downlink_mods
from bouquet.simulations.methods.downlink import wrap_downlink
from bouquet.simulations.methods.experiment import Experiment
from bouquet.simulations.methods.experiments import get_experiment
from bouquet.simulations.methods.privacy import privacy_client_mods
from bouquet.simulations.methods.privacy import private_client
from bouquet.simulations.methods.privacy import wrap_privacy
from bouquet.simulations.methods.recsys import wrap_recommendation_evaluation
from bouquet.simulations.run.checkpoint import CONFIG_FILE
from bouquet.simulations.run.checkpoint import Checkpointer
from bouquet.simulations.run.checkpoint import CheckpointError
from bouquet.simulations.run.checkpoint import load_strategy_state
from bouquet.simulations.run.checkpoint import set_rng_state
from bouquet.simulations.run.metering import MAX_REASONS
from bouquet.simulations.run.metering import MeteredGrid
from bouquet.simulations.run.metering import Period
from bouquet.simulations.run.results import RunFailed
from bouquet.simulations.run.results import RunRecorder
from bouquet.simulations.run.results import read_rows
from bouquet.simulations.run.resume import check_resume
from bouquet.simulations.run.trackers import make_tracker
from bouquet.staleness_window import DEFAULT_WINDOW
from bouquet.strategies.guard import ReplyGuard
from bouquet.strategies.hooks import RecorderBinding
from bouquet.strategies.round_offset import RoundOffset

logger = logging.getLogger(__name__)

StrategyWrapper = Callable[[dict[str, Any], Experiment, Strategy], Strategy]
ClientMods = Callable[[dict[str, Any]], list[Callable[..., Any]]]


# Wrappers applied in order to the configured strategy (compression, server-side
# adjustment...). Server-side adjustment comes after compression (it adjusts the decoded
# aggregate). The compressed downlink goes last (outermost): it broadcasts whatever the
# others made the global model. Central DP goes first (innermost): its wrappers must see
# decoded updates, so Compressed is outside them.
STRATEGY_WRAPPERS: list[StrategyWrapper] = [
    wrap_privacy,
    wrap_compression,
    wrap_recommendation_evaluation,
    wrap_server_adjust,
    wrap_downlink,
]


def build_strategy(cfg: dict[str, Any], exp: Experiment) -> Strategy:
    """Instantiate ``cfg["strategy"]`` and apply :data:`STRATEGY_WRAPPERS`."""
    strategy = instantiate(cfg["strategy"])
    # strategies that need run-time inputs take them here
    if isinstance(strategy, partial):
        strategy = strategy(**strategy_runtime_kwargs(cfg, exp, strategy))
    if not isinstance(strategy, Strategy):
        raise ValueError(
            f"strategy._target_ built {type(strategy).__name__}, not a "
            "flwr.serverapp.strategy.Strategy"
        )
    # Innermost: drop malformed dense replies before any aggregation rule sees them.
    strategy = ReplyGuard(
        strategy, min_replies=int(cfg["simulation"].get("min_replies", 1))
    )
    for wrap in STRATEGY_WRAPPERS:
        strategy = wrap(cfg, exp, strategy)
    return strategy


def strategy_runtime_kwargs(
    cfg: dict[str, Any], exp: Experiment, factory: partial
) -> dict[str, Any]:
    """Run-time keyword arguments for a ``_partial_`` strategy config."""
    kwargs: dict[str, Any] = {}
    # KL weighting: Q = the server's test-set labels
    if factory.keywords.get("reference") == "server":
        kwargs["reference_distribution"] = label_histogram(
            exp.dataset.y_test, exp.dataset.num_classes
        ).tolist()
    return kwargs


def client_mods(cfg: dict[str, Any]) -> list[Callable[..., Any]]:
    """Client mods the config asks for, outermost first.

    The compressed downlink's model rebuild (``downlink != none``) first; fault
    injection when ``fault.*`` rates are set; the learner-side sliding window
    (:func:`~bouquet.clients.staleness.staleness_window_mod`) for ``strategy=async
    strategy.policy=sliding_window strategy.window_side=learner``.
    """
    # outermost: rebuilds the model first
    mods: list[Callable[..., Any]] = list(client_downlink_mods(cfg))
    # client=shared_topk: answers the secure-aggregation key query
    mods += privacy_client_mods(cfg)
    fault = cfg.get("fault") or {}
    crash, hang, corrupt = (
        float(fault.get(k, 0.0)) for k in ("crash_rate", "hang_rate", "corrupt_rate")
    )
    if crash or hang or corrupt:
        mods.append(
            fault_mod(
                crash,
                hang,
                corrupt,
                hang_s=float(fault.get("hang_s", 30.0)),
                seed=int(fault.get("seed", cfg.get("seed", 0))),
            )
        )
    strategy = cfg.get("strategy") or {}
    if (
        str(strategy.get("_target_", "")).endswith(".AsyncFedAvg")
        and strategy.get("policy") == "sliding_window"
        and strategy.get("window_side", "learner") == "learner"
    ):
        exponent = strategy.get("exponent")
        # train_config's lr, when set, is in every message and wins
        lr = (cfg.get("client") or {}).get("lr")
        mods.append(
            staleness_window_mod(
                window=int(strategy.get("window", DEFAULT_WINDOW)),
                context=str(strategy.get("context", "mean")),
                exponent=1.0 if exponent is None else float(exponent),
                max_scale=float(strategy.get("max_scale", 1.0)),
                base_lr=None if lr is None else float(lr),
                scale_lr=strategy.get("learner_rate", "both") != "server",
            )
        )
    return mods


def _strings(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_REASONS
        and all(isinstance(x, str) for x in value)
    )


def period_from_state(state: Any) -> Period:
    """The :class:`~bouquet.simulations.run.metering.Period` of a checkpoint's
    ``period`` (its fields)."""
    fields = {f.name for f in dataclasses.fields(Period)}
    if (
        not isinstance(state, dict)
        or not set(state) <= fields
        or not all(
            v is None
            or type(v) in (int, float)
            or (k == "error_reasons" and _strings(v))
            for k, v in state.items()
        )
    ):
        raise CheckpointError(
            "the checkpoint's period is not a Period: keys "
            f"{sorted(state) if isinstance(state, dict) else state!r}"
        )
    return Period(**state)


def run_server(grid: Grid, cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Run the configured strategy on ``grid`` and write the run's outputs into
    ``run_dir``.

    With ``simulation.resume`` set, the run continues from the last valid checkpoint of
    that run directory (see :mod:`bouquet.simulations.run.checkpoint`) and writes into
    it; every check of the resume is done before anything is written
    (:func:`~bouquet.simulations.run.resume.check_resume`).
    """
    sim = cfg["simulation"]
    seed = int(cfg.get("seed", 0))
    random.seed(seed)  # Flower's samplers use the `random` module
    np.random.seed(seed)
    run_dir, ckpt = check_resume(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    exp = get_experiment(cfg)
    exp.run_dir = (
        run_dir  # experiments that write extra outputs (e.g. the best exit model)
    )
    metered = MeteredGrid(
        grid,
        node_wait_s=float(sim.get("node_wait_s") or 0) or None,
        node_ids=sim.get("node_ids"),
    )
    strategy = build_strategy(cfg, exp)
    num_rounds = int(sim["num_rounds"])
    start_round, previous_rows = 0, None
    initial_named = exp.initial_arrays()
    # asynchronous: checkpoints count applied updates
    own_loop = isinstance(strategy, RecorderBinding)
    if ckpt is not None:
        if own_loop != ("updates" in ckpt):
            raise CheckpointError(
                f"cannot resume {run_dir}: its checkpoint is not one of "
                f"{type(strategy).__name__}'s"
            )
        initial_named = ckpt["arrays"]
        load_strategy_state(strategy, ckpt["strategy"])
        set_rng_state(ckpt["rng"])
        if own_loop:
            updates = int(ckpt["updates"])
            previous_rows = [
                r for r in read_rows(run_dir) if r.get("updates", 0) <= updates
            ]
            if "period" in ckpt:  # traffic since the last line before the checkpoint
                metered.period = period_from_state(ckpt["period"])
            logger.info("resuming %s after %d applied updates", run_dir, updates)
        else:
            start_round = int(ckpt["round"])
            previous_rows = read_rows(run_dir, up_to_round=start_round)
            logger.info(
                "resuming %s after round %d of %d", run_dir, start_round, num_rounds
            )
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    node_wait_s = float(sim.get("node_wait_s") or 0)
    if node_wait_s:  # Flower's samplers would wait forever for min_available_nodes
        needed = int(getattr(strategy, "min_available_nodes", 1) or 1)
        logger.info("%d nodes connected", metered.wait_for_nodes(needed, node_wait_s))
    tracker = make_tracker(cfg, run_dir)
    tracker.start(cfg)
    checkpointer = Checkpointer(
        run_dir, cfg, strategy, int(sim.get("checkpoint_every", 1)), num_rounds
    )
    state_dir = run_dir / CLIENT_STATE_DIR
    # the nodes' spilled state follows the checkpoints (clients/state_store.py)
    if not own_loop:
        if start_round:
            prune(state_dir, start_round, resuming=True)
        # a fresh run: no state of an earlier run in the same directory
        elif ckpt is None:
            shutil.rmtree(state_dir, ignore_errors=True)
        checkpointer.after_save = lambda step, _key: prune(state_dir, step)
    recorder = RunRecorder(
        run_dir,
        exp.evaluate_arrays,
        metered,
        extra=getattr(strategy, "round_report", None),
        round_offset=start_round,
        previous_rows=previous_rows,
        on_round=checkpointer,
        # two-way compression: evaluate the clients' copy
        view=getattr(strategy, "held_model", None),
        tracker=tracker,
        total_steps=None if own_loop else num_rounds,
    )
    # asynchronous: records per update, owns its start(), checkpoints per applied
    # updates
    if own_loop:

        def save_updates(updates: int, arrays: dict[str, np.ndarray]) -> None:
            checkpointer.save(
                updates,
                arrays,
                step_key="updates",
                extra={"period": dataclasses.asdict(metered.period)},
            )

        strategy = (
            cast(Any, strategy)
            .bind_recorder(recorder)
            .bind_checkpoint(save_updates, checkpointer.every)
        )
    initial = ArrayRecord({k: Array(np.asarray(v)) for k, v in initial_named.items()})
    driver = RoundOffset(strategy, start_round) if start_round else strategy
    try:
        if num_rounds > start_round:
            driver.start(
                grid=metered,
                initial_arrays=initial,
                num_rounds=num_rounds - start_round,
                timeout=float(sim["round_timeout_s"]),
                train_config=ConfigRecord(dict(cfg.get("train_config") or {})),
                evaluate_fn=recorder,
            )
    except RunFailed:
        raise
    except Exception as exc:  # record why, then fail the run
        recorder.fail(f"{type(exc).__name__}: {exc}")
        raise
    return recorder.finish(
        recorder.last_arrays or initial,
        extra={"checkpoint_s": round(checkpointer.seconds, 4)},
    )


def make_server_app(cfg: dict[str, Any], run_dir: str | Path) -> ServerApp:
    """A ``ServerApp`` that runs :func:`run_server` with this config."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, run_dir)

    return app


def _client_from_cfg(cfg: dict[str, Any], context: Context) -> NumPyClient:
    # privacy=dp_client: clip before the codec
    return private_client(cfg, get_experiment(cfg).client(context))


# in the run directory: the nodes' spilled context.state (simulation)
CLIENT_STATE_DIR = "client_state"


def spills_client_state(cfg: dict[str, Any]) -> bool:
    """Synchronous rounds keep each node's ``context.state`` on disk between its
    messages (the asynchronous loop has no rounds to version it by: its state stays in
    memory)."""
    return not str((cfg.get("strategy") or {}).get("_target_", "")).endswith(
        ".AsyncFedAvg"
    )


def make_client_app(cfg: dict[str, Any], state_dir: Path | None = None) -> ClientApp:
    """A Message-API ``ClientApp`` running the configured NumPyClient on the node's
    partition; with ``state_dir`` (simulation) each node's ``context.state`` lives there
    between messages."""
    spill: list[Callable[..., Any]] = (
        [SpilledState(state_dir)]
        if state_dir is not None and spills_client_state(cfg)
        else []
    )
    return numpyclient_app(
        partial(_client_from_cfg, cfg), mods=[*spill, *client_mods(cfg)]
    )
