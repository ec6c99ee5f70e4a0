"""Config values that reach the file system or the clients, checked before anything
starts.

:func:`check_values` runs after the schema
(:func:`bouquet.simulations.config.validate.check_schema`: types are known) and before
the combinations, so that no check opens a path the user gave before it is known to be a
usable one. Every refusal is one ``ValueError`` line naming the key.

- **Paths** (:data:`PATH_KEYS`, and every config group choice and Hydra output directory
  on the command line, :func:`path_problem`): at most :data:`PATH_MAX` bytes,
  :data:`NAME_MAX` per component, no NUL byte; a value that the file system would refuse
  with ``OSError`` (e.g. *file name too long*) is refused here, naming the key.
- **train_config** (:func:`check_train_config`): sent to every client in the train
  ``ConfigRecord``. Keys the server writes itself (:data:`SERVER_SET_KEYS`, and the
  ``bouquet-`` prefix, reserved for bouquet's records) are refused: the server would
  overwrite them or the clients would read a value the strategy did not send. The keys
  bouquet's clients read (:data:`CLIENT_READ_KEYS`) get their ranges; every number must
  be finite; every value must be one a ``ConfigRecord`` holds (a number, a string, a
  bool, or a list of one of them).
- **Options a dataset ignores** (:func:`check_dataset_options`): ``dataset.root`` for
  ``dataset=digits`` (bundled with scikit-learn; its cache follows ``$BOUQUET_DATA``),
  and keys of ``dataset.train`` that no client follows.
"""

from __future__ import annotations

import math
from typing import Any

from bouquet import keys
from bouquet.simulations.config.checks import check_value
from bouquet.simulations.config.checks import fmt
from bouquet.simulations.config.schema_keys import Key

PATH_MAX = 4096  # bytes of a path (Linux PATH_MAX)
NAME_MAX = 255  # bytes of one path component (Linux NAME_MAX, most file systems)
# Config keys whose string value is a file or directory.
PATH_KEYS = ("dataset.root", "model.architecture", "simulation.resume")
# Train-config keys the server writes into every train message itself -> who writes
# them.
SERVER_SET_KEYS: dict[str, str] = {
    keys.SERVER_ROUND: "Flower's strategies (the round number)",
    keys.PROXIMAL_MU: "strategy=fedprox (set strategy.proximal_mu)",
    keys.MODEL_VERSION: "strategy=async (the model version)",
    keys.SUBMODEL_DEPTH: "strategy=depth_fedavg (each node's sub-model depth)",
    keys.PREV_STALENESS: "strategy=async (the learner-side window)",
    keys.APPLIED_UPDATES: "strategy=async (the learner-side window)",
    keys.NODE_INFO: "strategy=depth_fedavg (its node-info query)",
}
RESERVED_PREFIX = "bouquet-"  # bouquet's own record and config keys
# Train-config keys bouquet's clients read -> what they allow.
CLIENT_READ_KEYS: dict[str, Key] = {
    keys.LR: Key("float", "(0, inf)"),
    keys.LOCAL_EPOCHS: Key("int", "[0, inf)"),
    keys.LOCAL_STEPS: Key("int", "[1, inf)"),
}
# Keys of dataset.train that the client configs follow (conf/client/*.yaml interpolate
# them).
DATASET_TRAIN_KEYS = ("local_epochs", "lr")
_SHOWN = 40  # characters of a long value shown in a message


def shown(value: str) -> str:
    """``value`` quoted, cut to its first characters when long (``'aaaa...' (5000
    characters)``)."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a path on this machine's file systems, or ``None``."""
    if "\0" in value:
        return "it contains a NUL byte"
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > PATH_MAX:
        return f"it is {size} bytes long; allowed: at most {PATH_MAX}"
    longest = max(
        (len(part.encode("utf-8", "surrogateescape")) for part in value.split("/")),
        default=0,
    )
    if longest > NAME_MAX:
        return (
            f"one of its components is {longest} bytes long; allowed: at most "
            f"{NAME_MAX} per component"
        )
    return None


def check_path(name: str, value: Any) -> None:
    """``ValueError`` naming ``name`` if the string ``value`` is not a usable path
    (other types pass)."""
    if isinstance(value, str):
        problem = path_problem(value)
        if problem:
            raise ValueError(f"{name}={shown(value)} is not a usable path: {problem}")


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _config_value_problem(value: Any) -> str | None:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (bool, int, float, str)) for v in items):
        return (
            "is not a ConfigRecord value (a number, string, bool or a list of one of "
            "them)"
        )
    if len({bool if isinstance(v, bool) else type(v) for v in items}) > 1:
        return "mixes element types (a ConfigRecord list holds one type)"
    return None


def check_train_config(train_config: Any) -> None:
    """Refuse a ``train_config`` the clients could not use (see the module
    docstring)."""

    if not isinstance(train_config, dict):
        raise ValueError(f"train_config={fmt(train_config)} is not a mapping")
    for name, value in train_config.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"train_config key {name!r} is not a non-empty string")
        if name in SERVER_SET_KEYS or name.startswith(RESERVED_PREFIX):
            who = SERVER_SET_KEYS.get(
                name, f"bouquet (keys starting with {RESERVED_PREFIX!r} are reserved)"
            )
            raise ValueError(
                f"train_config.{name} is set by the server, not the config: {who}; "
                "allowed: other keys"
            )
        problem = _config_value_problem(value)
        if problem:
            raise ValueError(f"train_config.{name}={fmt(value)} {problem}")
        if name in CLIENT_READ_KEYS:
            check_value(f"train_config.{name}", CLIENT_READ_KEYS[name], value)
        elif any(
            isinstance(v, float) and not math.isfinite(v)
            for v in (value if isinstance(value, list) else [value])
        ):
            raise ValueError(
                f"train_config.{name}={fmt(value)} is not finite; allowed: finite "
                "numbers"
            )


def check_dataset_options(cfg: dict[str, Any], dataset: str) -> None:
    """Refuse dataset options that ``dataset`` would ignore (see the module
    docstring)."""

    section = cfg.get("dataset") or {}
    if dataset == "digits" and section.get("root") is not None:
        raise ValueError(
            f"dataset.root={shown(str(section['root']))} is not used by "
            "dataset=digits (bundled with "
            "scikit-learn, cached under $BOUQUET_DATA or ~/.cache/bouquet/data); "
            "allowed: null"
        )
    train = section.get("train")
    if not isinstance(train, dict):
        return
    for name in train:
        if name not in DATASET_TRAIN_KEYS:
            raise ValueError(
                f"dataset.train.{name}={fmt(train[name])} is not followed by any "
                "client; "
                f"allowed: {', '.join(DATASET_TRAIN_KEYS)}"
            )


def check_values(cfg: dict[str, Any], options: dict[str, str]) -> None:
    """Paths, ``train_config`` and dataset options of a schema-checked ``cfg``
    (``ValueError``)."""
    for name in PATH_KEYS:
        check_path(name, _get(cfg, name))
    check_train_config(cfg.get("train_config") or {})
    check_dataset_options(cfg, options.get("dataset", ""))


def check_overrides(overrides: list[str], groups: tuple[str, ...]) -> None:
    """Command-line overrides that name files, before Hydra opens them: a config group's
    choice (``dataset=<value>`` reads ``conf/dataset/<value>.yaml``; Hydra's own groups
    are ``hydra/<group>``) and Hydra's output directories.

    Raises
    ------
    ValueError
        Naming the override, if its value is not a usable path (:func:`path_problem`).
    """
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~").split("@", 1)[0]
        if key in groups or key.startswith("hydra/"):
            for choice in value.split(","):  # a sweep: dataset=mnist,digits
                problem = path_problem(f"{choice.strip()}.yaml")
                if problem:
                    raise ValueError(
                        f"{key}={shown(choice)} is not a usable config group choice "
                        "(it names the file "
                        f"{key}/<choice>.yaml): {problem}"
                    )
        elif key in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir"):
            check_path(key, value)
