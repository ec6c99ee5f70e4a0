"""The Flower App behind ``flwr run``: one ``ServerApp`` and one ``ClientApp`` for every
config.

``pyproject.toml`` points ``[tool.flwr.app.components]`` at :data:`server_app` and
:data:`client_app`. Both read the run config (``[tool.flwr.app.config]``, overridable
with ``flwr run --run-config``):

* ``overrides``: Hydra overrides, space separated, exactly as on the ``bouquet-sim``
  command line (``"dataset=digits strategy=fedprox simulation.num_rounds=3"``). Both
  apps compose ``bouquet.conf/config.yaml`` with them, so ``strategy=... client=...``
  means the same thing in the simulation engine and on a SuperLink. Pass the string as a
  TOML literal (single-quoted) string; a value with spaces goes in double quotes inside
  it, which Hydra parses: ``flwr run . <connection> --run-config
  "overrides='dataset=digits' run-dir='/abs/dir'"``. Only ``task=federated`` runs here
  (``task=search`` is server-only: use ``bouquet-sim``).
* Flower-style keys (:data:`RUN_CONFIG_KEYS`): ``num-server-rounds``, ``num-clients``,
  ``fraction-train``, ``local-epochs``, ``local-steps``, ``lr``, ``batch-size``,
  ``dataset``, ``partition``, ``strategy``, ``client`` (``plain`` | ``topk`` | ``stc`` |
  ``ternary``), ``alpha``, ``seed``: ``flwr run . --run-config "num-server-rounds=5
  client='topk' alpha=0.01"``. Empty (the declared default) keeps bouquet's default;
  without ``num-clients`` the number of clients is the number of connected SuperNodes (a
  simulation federation's ``num-supernodes``).
* ``run-dir``: where the ServerApp writes ``config.json``, ``metrics.jsonl``,
  ``summary.json``, ``final_model.npz`` and ``curves.png``. Empty means
  ``~/.cache/bouquet/runs/<UTC timestamp>-run<run id>`` of the user running the
  SuperLink (``$XDG_CACHE_HOME`` is honoured). A relative path is taken relative to the
  SuperLink's working directory: prefer absolute.

A refused config (:func:`~bouquet.simulations.config.validate.validate_run`: an unknown
key, a value out of range, a combination that cannot work, a missing dataset) fails the
run before its first round: the ServerApp logs the reason in one line, writes
``summary.json`` with ``status: failed`` and the reason into the run directory, and
raises, so that ``flwr ls`` shows the run as ``finished:failed`` with the reason in its
status details. A ClientApp refuses the same config (``validate_config``) before it
builds anything.

The server side reuses :func:`bouquet.simulations.run.serverapp.run_server`; before the
first round it waits (at most ``simulation.round_timeout_s``) until
``strategy.min_available_nodes`` SuperNodes are connected and fails the run with a clear
message otherwise (Flower's own sampler would wait forever). The client side reuses the
NumPyClient bridge: each node builds its client with
:meth:`~bouquet.simulations.methods.experiment.Experiment.client` for the
``partition-id`` in its node config; a ``num-partitions`` there overrides
``simulation.num_clients`` on that node, so the node cuts the same partitions as a
simulation with that many clients.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp import ServerApp

from bouquet import keys
from bouquet.simulations.config.validate import validate_config
from bouquet.simulations.config.validate import validate_run
from bouquet.simulations.run.engine_poll import shorten_reply_object_retry
from bouquet.simulations.run.results import SUMMARY_FILE
from bouquet.simulations.run.serverapp import make_client_app
from bouquet.simulations.run.serverapp import run_server

logger = logging.getLogger(__name__)

# run-config key: Hydra overrides (space separated)
RUN_CONFIG_OVERRIDES = keys.RUN_OVERRIDES
# run-config key: output directory ("" = default below)
RUN_CONFIG_RUN_DIR = keys.RUN_DIR

# Flower-style run-config keys ([tool.flwr.app.config], kebab-case) -> the Hydra key
# they set. A value of "" (the declared default) leaves bouquet's default; a set value
# wins over the defaults, and naming the same Hydra key in ``overrides`` too is refused.
RUN_CONFIG_KEYS: dict[str, str] = {
    "num-server-rounds": "simulation.num_rounds",
    "num-clients": "simulation.num_clients",
    "fraction-train": "simulation.fraction_train",
    "local-epochs": "client.local_epochs",
    "local-steps": "client.local_steps",
    "lr": "client.lr",
    "batch-size": "client.batch_size",
    "dataset": "dataset",
    "partition": "partition",
    "strategy": "strategy",
    "client": "client",
    "alpha": "client.alpha",
    "seed": "seed",
}


def run_config_overrides(run_config: dict[str, Any]) -> list[str]:
    """Hydra overrides for ``overrides`` plus the Flower-style keys of
    :data:`RUN_CONFIG_KEYS`.

    Group choices (``dataset``, ``partition``, ``strategy``, ``client``) come first so
    that the keys they define can be set by the others.

    Raises
    ------
    ValueError
        If a key of the run config is set and ``overrides`` names the same Hydra key.
    """
    raw = run_config.get(RUN_CONFIG_OVERRIDES, "")
    if not isinstance(raw, str):
        raise ValueError(f"run config {RUN_CONFIG_OVERRIDES}={raw!r} must be a string")
    base = split_overrides(raw)
    named = {o.split("=", 1)[0].lstrip("+~") for o in base}
    groups: list[str] = []
    values: list[str] = []
    for key, target in RUN_CONFIG_KEYS.items():
        value = run_config.get(key, "")
        if value == "" or value is None:
            continue
        if target in named:
            raise ValueError(
                f"run config {key}={value!r} and {RUN_CONFIG_OVERRIDES} both set "
                f"{target}: give one"
            )
        text = str(value).lower() if isinstance(value, bool) else str(value)
        (groups if "." not in target and target != "seed" else values).append(
            f"{target}={text}"
        )
    return groups + base + values


def default_runs_root() -> Path:
    """``$XDG_CACHE_HOME/bouquet/runs`` (default ``~/.cache/bouquet/runs``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "bouquet" / "runs"


def split_overrides(overrides: str) -> list[str]:
    """Split a space-separated override string at spaces outside quotes, keeping the
    quotes.

    Hydra parses the quotes itself (``key="a b"`` is the string ``a b``).

    Raises
    ------
    ValueError
        If a quote is not closed.
    """
    tokens: list[str] = []
    current: list[str] = []
    quote = ""
    for char in overrides:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            if current:
                tokens.append("".join(current))
                current = []
            continue
        current.append(char)
    if quote:
        raise ValueError(
            f"run config {RUN_CONFIG_OVERRIDES}={overrides!r} has an unclosed "
            f"{quote} quote"
        )
    if current:
        tokens.append("".join(current))
    return tokens


@lru_cache(maxsize=8)
def _compose_json(overrides: str) -> str:
    from hydra import compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("bouquet.conf", version_base="1.3"):
        cfg = compose("config", overrides=split_overrides(overrides))
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):
        raise ValueError(
            f"the config composed from {RUN_CONFIG_OVERRIDES}={overrides!r} is not a "
            "mapping"
        )
    return json.dumps(container, sort_keys=True)


def compose_config(overrides: str = "") -> dict[str, Any]:
    """The resolved config (a plain ``dict``) for a Hydra override string.

    Composed with Hydra's compose API from the packaged ``bouquet.conf``; cached per
    process (a fresh copy is returned every time).
    """
    return json.loads(_compose_json(overrides.strip()))


def _run_config_str(context: Context, key: str) -> str:
    value = context.run_config.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"run config {key}={value!r} must be a string")
    return value


def resolve_run_dir(value: str, run_id: int | None = None) -> Path:
    """The run directory for the run config value ``run-dir`` (empty = timestamped
    default)."""
    if value.strip():
        return Path(value).expanduser().resolve()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    suffix = f"-run{run_id}" if run_id is not None else ""
    return default_runs_root() / f"{stamp}{suffix}"


def _ensure_progress_logging() -> None:
    """Show bouquet's progress lines in the ServerApp's log (streamed by ``flwr run
    --stream``)."""
    root = logging.getLogger("bouquet")
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def refusal_reason(exc: BaseException) -> str:
    """The reason of a refused config on one line (Hydra's and OmegaConf's messages
    included)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def context_config(context: Context) -> dict[str, Any]:
    """The config composed from the run config (``overrides`` + Flower-style keys)."""
    return compose_config(" ".join(run_config_overrides(dict(context.run_config))))


def checked_server_config(context: Context) -> dict[str, Any]:
    """The run's config, composed and checked as ``bouquet-sim`` checks it (the data
    included).

    Raises
    ------
    ValueError
        For a refused config (Hydra's composition errors for unknown keys are raised as
        they are).
    FileNotFoundError
        If the dataset is missing.
    """
    cfg = context_config(context)
    task = cfg.get("task", "federated")
    if task != "federated":
        raise ValueError(
            f"task={task!r} does not run on a SuperLink (only task=federated does); "
            "use bouquet-sim"
        )
    validate_run(cfg, in_simulation=False)
    return cfg


def follow_federation_size(
    cfg: dict[str, Any], context: Context, grid: Grid
) -> dict[str, Any]:
    """Unless ``num-clients`` (or ``simulation.num_clients`` in ``overrides``) is set,
    the number
    of clients is the number of SuperNodes connected at the start (a simulation
    federation's ``num-supernodes``); ``min_available_nodes`` follows it."""
    named = {o.split("=", 1)[0] for o in run_config_overrides(dict(context.run_config))}
    if "simulation.num_clients" in named:
        return cfg
    allowed = cfg["simulation"].get("node_ids")
    nodes = len([n for n in grid.get_node_ids() if allowed is None or n in allowed])
    if nodes and nodes != int(cfg["simulation"]["num_clients"]):
        logger.info(
            "simulation.num_clients follows the %d connected SuperNodes (was %s)",
            nodes,
            cfg["simulation"]["num_clients"],
        )
        cfg["simulation"]["num_clients"] = nodes
        if cfg["strategy"].get("min_available_nodes") is not None:
            cfg["strategy"]["min_available_nodes"] = min(
                int(cfg["strategy"]["min_available_nodes"]), nodes
            )
        validate_run(cfg, in_simulation=False)
    return cfg


def record_refusal(run_dir: Path, reason: str) -> None:
    """Write ``summary.json`` with ``status: failed`` and ``reason`` into
    ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"status": "failed", "reason": f"config refused: {reason}"}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


server_app = ServerApp()


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    _ensure_progress_logging()
    overrides = _run_config_str(context, RUN_CONFIG_OVERRIDES)
    run_dir = resolve_run_dir(
        _run_config_str(context, RUN_CONFIG_RUN_DIR), context.run_id
    )
    try:
        cfg = checked_server_config(context)
        cfg = follow_federation_size(cfg, context, grid)
    # refused before the first round: say why, where the user looks
    except Exception as exc:
        reason = refusal_reason(exc)
        logger.error("run %s refused: %s", context.run_id, reason)
        record_refusal(run_dir, reason)
        raise
    logger.info(
        "run %s: overrides=%r, results in %s", context.run_id, overrides, run_dir
    )
    # replies' objects retried after 0.02 s, not 1 s (engine_poll.py)
    shorten_reply_object_retry()
    run_server(grid, cfg, run_dir)


def client_config(context: Context) -> dict[str, Any]:
    """The node's config: composed from the run config, ``num-partitions`` from the node
    config.

    Raises
    ------
    ValueError
        If the node config's ``partition-id`` is not in ``[0, num-partitions)``.
    """
    cfg = context_config(context)
    node = context.node_config
    if keys.NUM_PARTITIONS in node:
        num = int(node[keys.NUM_PARTITIONS])
        if num != int(cfg["simulation"]["num_clients"]):
            logger.warning(
                "node config %s=%d overrides simulation.num_clients=%s on this node",
                keys.NUM_PARTITIONS,
                num,
                cfg["simulation"]["num_clients"],
            )
            cfg["simulation"]["num_clients"] = num
    pid = int(node.get(keys.PARTITION_ID, 0))
    num_clients = int(cfg["simulation"]["num_clients"])
    if not 0 <= pid < num_clients:
        raise ValueError(
            f"node config {keys.PARTITION_ID}={pid} is not in [0, {num_clients})"
        )
    return cfg


@lru_cache(maxsize=8)
def _client_app_for(cfg_json: str) -> ClientApp:
    cfg = json.loads(cfg_json)
    # the same refusals as the ServerApp's, before building
    validate_config(cfg, in_simulation=False)
    return make_client_app(cfg)


def _dispatch(msg: Message, context: Context) -> Message:
    cfg = client_config(context)
    app = _client_app_for(json.dumps(cfg, sort_keys=True))
    return app(msg, context)


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    return _dispatch(msg, context)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return _dispatch(msg, context)
