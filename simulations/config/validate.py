"""Checks on a composed config before anything starts: one ``ValueError`` naming the
key.

Four layers, all before the simulation engine (or a SuperLink run) starts:

1. :func:`check_schema`: every key of every config group value against the table of
   :mod:`bouquet.simulations.config.schema` (unknown and missing keys, types, ranges,
   allowed values);
2. :func:`~bouquet.simulations.config.values.check_values`: values that reach the file
   system or the clients (paths, ``train_config``) and options the chosen dataset would
   ignore;
3. :data:`COMBINATIONS` (:mod:`bouquet.simulations.config.combinations`): values that
   are fine alone but cannot work together, most of them known silent failures;
4. :func:`validate_run`: the checks that need the data (clients vs samples, the model
   built for the dataset's inputs, the strategy's depths vs the model's exits).

Every message is one line: ``client.alpha=2 is out of range (0, 1]``.
"""

from __future__ import annotations

from typing import Any

from bouquet.simulations.config.checks import Options
from bouquet.simulations.config.checks import check_keys
from bouquet.simulations.config.checks import check_value
from bouquet.simulations.config.checks import fmt
from bouquet.simulations.config.checks import group_value
from bouquet.simulations.config.combinations import check_combinations
from bouquet.simulations.config.combinations import check_data
from bouquet.simulations.config.schema import GROUPS
from bouquet.simulations.config.schema import ROOT
from bouquet.simulations.config.values import check_values
from bouquet.simulations.run.trackers import check_available


def check_schema(cfg: dict[str, Any]) -> Options:
    """Check ``cfg`` against :mod:`bouquet.simulations.config.schema`; return each
    group's value.

    Raises
    ------
    ValueError
        Naming the first key that is unknown, missing, of the wrong type or out of
        range.
    """
    known = [*ROOT, *GROUPS]
    for name in cfg:
        if name not in known:
            raise ValueError(f"{name} is not a config key; allowed: {', '.join(known)}")
    for name, key in ROOT.items():
        if name not in cfg:
            raise ValueError(f"{name} is missing from the config")
        check_value(name, key, cfg[name])
    options: Options = {}
    for name, group in GROUPS.items():
        if name not in cfg:
            if group.optional:
                continue
            raise ValueError(
                f"config group {name} is missing; allowed: {', '.join(group.values)}"
            )
        section = cfg[name]
        if not isinstance(section, dict):
            raise ValueError(
                f"{name}={fmt(section)} is not a config group; allowed: "
                f"{', '.join(group.values)}"
            )
        value = group_value(name, section)
        options[name] = value
        check_keys(
            name,
            name if value == "*" else f"{name}={value}",
            group.values[value],
            section,
        )
    return options


def validate_config(
    cfg: dict[str, Any],
    num_train_samples: int | None = None,
    *,
    in_simulation: bool = True,
) -> Options:
    """Raise ``ValueError`` naming the first impossible value or combination in ``cfg``.

    Parameters
    ----------
    cfg : dict
        The resolved config (``OmegaConf.to_container(cfg, resolve=True)``).
    num_train_samples : int, optional
        When known, more clients than samples are refused too.
    in_simulation : bool
        Also apply the checks that hold only in the simulation engine (``False`` for
        ``flwr run``).

    Returns
    -------
    dict
        The value of each config group (``{"client": "topk", "simulation": "*", ...}``).
    """
    options = check_schema(cfg)
    check_values(cfg, options)
    check_combinations(cfg, options, in_simulation=in_simulation)
    # the tracker's optional package
    check_available(str(options.get("logger", "none")))
    num_clients = int(cfg["simulation"]["num_clients"])
    if num_train_samples is not None and num_clients > num_train_samples:
        raise ValueError(
            f"simulation.num_clients={num_clients} is more than the "
            f"{num_train_samples} training samples"
        )
    return options


def validate_run(cfg: dict[str, Any], *, in_simulation: bool = True) -> None:
    """:func:`validate_config`, then the checks that need the data.

    Raises
    ------
    ValueError
        For an impossible value or combination (naming the key).
    bouquet.data.loaders.DataMissingError
        If the dataset is not in the cache (a ``FileNotFoundError`` naming ``make
        data``).
    """
    options = validate_config(cfg, in_simulation=in_simulation)
    check_data(cfg, options)
