"""Config values that are fine alone but cannot work together, refused before anything
starts.

Each rule of :data:`COMBINATIONS` gets the composed config and the value of each config
group (``{"client": "topk", "strategy": "async", ...}``, from
:func:`bouquet.simulations.config.validate.check_schema`) and returns a one-line reason
naming the keys involved, or ``None``. Most are silent failures otherwise: the run
starts, and the feature does nothing or every client fails. The rule's docstring is its
line in the README. :func:`check_data` holds the checks that need the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bouquet import keys
from bouquet.data import load_dataset
from bouquet.simulations.config import codec_rules
from bouquet.simulations.config import method_rules
from bouquet.simulations.config import privacy_rules
from bouquet.simulations.config.checks import Options
from bouquet.simulations.config.checks import fmt
from bouquet.simulations.config.rules import Combination
from bouquet.simulations.config.rules import Rules
from bouquet.simulations.methods.experiments import get_experiment

RULES = Rules()


@RULES("fault.crash_rate + hang_rate + corrupt_rate")
def _fault_rates(cfg: dict[str, Any], opt: Options) -> str | None:
    """The fault rates are shares of the same messages: their sum is at most 1."""
    fault = cfg["fault"]
    total = fault["crash_rate"] + fault["hang_rate"] + fault["corrupt_rate"]
    if total > 1.0 + 1e-12:
        return (
            f"fault.crash_rate={fault['crash_rate']} + "
            f"fault.hang_rate={fault['hang_rate']} + "
            f"fault.corrupt_rate={fault['corrupt_rate']} = {total:g} is out of range "
            "[0, 1]"
        )
    return None


@RULES(
    "model.families, model.widths, model.exit_weights, model.architecture",
    tasks=("federated", "search"),
)
def _early_exit_model(cfg: dict[str, Any], opt: Options) -> str | None:
    """At least 2 different residual families, widths that are multiples of 4, exit
    weights with a positive
    sum, and an architecture file that exists."""
    if opt["model"] != "early_exit":
        return None
    model = cfg["model"]
    if len(set(model["families"])) < 2:
        return (
            f"model.families={fmt(model['families'])} must name at least 2 different "
            "families"
        )
    if model["widths"] is not None and any(w % 4 for w in model["widths"]):
        return (
            f"model.widths={fmt(model['widths'])} is not allowed: every width must "
            "be a multiple of 4"
        )
    if model["exit_weights"] is not None and sum(model["exit_weights"]) <= 0:
        return (
            f"model.exit_weights={fmt(model['exit_weights'])} must have a positive sum"
        )
    arch = model["architecture"]
    if arch is not None and not Path(arch).expanduser().is_file():
        return (
            f"model.architecture={fmt(arch)}: no such file (write one with "
            "experiment=early_exit_search)"
        )
    return None


@RULES("strategy.depth_probs vs strategy.depths")
def _depth_probs(cfg: dict[str, Any], opt: Options) -> str | None:
    """strategy.depth_probs gives one weight per depth of strategy.depths, with a
    positive sum."""
    if opt["strategy"] != "depth_fedavg" or cfg["strategy"]["depth_probs"] is None:
        return None
    probs, depths = cfg["strategy"]["depth_probs"], cfg["strategy"]["depths"]
    if depths is None or len(probs) != len(depths):
        return (
            f"strategy.depth_probs={fmt(probs)} needs one weight per depth of "
            f"strategy.depths={fmt(depths)} (set strategy.depths too)"
        )
    if sum(probs) <= 0:
        return f"strategy.depth_probs={fmt(probs)} must have a positive sum"
    return None


@RULES(
    "task=search needs model=early_exit; search.* needs task=search",
    tasks=("federated", "search"),
)
def _search(cfg: dict[str, Any], opt: Options) -> str | None:
    """The search task searches the early-exit backbone on an image dataset; the search
    group does nothing
    in a federated run."""
    if cfg["task"] == "federated":
        return (
            "search.* is set but task=federated ignores it (use "
            "experiment=early_exit_search)"
            if "search" in cfg
            else None
        )
    if opt["model"] != "early_exit":
        return f"task=search needs model=early_exit, not model={opt['model']}"
    if opt["dataset"] == "movielens":
        return "task=search needs an image dataset, not dataset=movielens"
    return None


@RULES("dataset.max_users vs simulation.num_clients")
def _users(cfg: dict[str, Any], opt: Options) -> str | None:
    """Every recommendation client needs at least one user."""
    if opt["dataset"] != "movielens" or cfg["dataset"]["max_users"] is None:
        return None
    n, users = cfg["simulation"]["num_clients"], cfg["dataset"]["max_users"]
    if n > users:
        return (
            f"simulation.num_clients={n} is more than dataset.max_users={users}: "
            "every client needs a user"
        )
    return None


@RULES("train_config.*")
def _train_config(cfg: dict[str, Any], opt: Options) -> str | None:
    """train_config values are ConfigRecord values; its lr is > 0 and its local-epochs
    an integer >= 0."""
    for name, value in cfg["train_config"].items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (bool, int, float, str)) for v in items):
            return (
                f"train_config.{name}={fmt(value)} is not a ConfigRecord value (a "
                "number, string, bool or a list of them)"
            )
    conf = cfg["train_config"]
    if keys.LR in conf and not (
        isinstance(conf[keys.LR], (int, float)) and conf[keys.LR] > 0
    ):
        return f"train_config.{keys.LR}={fmt(conf[keys.LR])} is out of range (0, inf)"
    epochs = conf.get(keys.LOCAL_EPOCHS)
    if epochs is not None and not (
        isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 0
    ):
        return (
            f"train_config.{keys.LOCAL_EPOCHS}={fmt(epochs)} is not an integer in "
            "[0, inf)"
        )
    return None


@RULES("simulation.client_cpus vs total_cpus", simulation_only=True)
def _cpus(cfg: dict[str, Any], opt: Options) -> str | None:
    """Ray cannot place a client that needs more CPUs than the simulation has."""
    sim = cfg["simulation"]
    total = sim["total_cpus"] or (
        None if os.environ.get("RAY_ADDRESS") else os.cpu_count()
    )
    if total is not None and sim["client_cpus"] > total:
        return (
            f"simulation.client_cpus={sim['client_cpus']} is more than the "
            f"simulation's {total} CPUs "
            "(simulation.total_cpus): no client could run"
        )
    return None


@RULES("strategy.min_*_nodes vs simulation.num_clients", simulation_only=True)
def _min_nodes(cfg: dict[str, Any], opt: Options) -> str | None:
    """The simulation never has more nodes than simulation.num_clients: waiting for more
    would never end."""
    n = cfg["simulation"]["num_clients"]
    for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes"):
        value = cfg["strategy"].get(name)
        if value is not None and value > n:
            return (
                f"strategy.{name}={value} is more than simulation.num_clients={n}: "
                "the simulation never has that many nodes"
            )
    return None


# Every rule, in the order they are tried: the methods', the codecs', these, then the
# privacy group's.
COMBINATIONS: list[Combination] = [
    *method_rules.RULES,
    *codec_rules.RULES,
    *RULES,
    *privacy_rules.RULES,
]


def check_combinations(
    cfg: dict[str, Any], options: Options, *, in_simulation: bool = True
) -> None:
    """Raise ``ValueError`` with the reason of the first rule of :data:`COMBINATIONS`
    that refuses."""
    for combo in COMBINATIONS:
        if cfg["task"] not in combo.tasks or (
            combo.simulation_only and not in_simulation
        ):
            continue
        reason = combo.rule(cfg, options)
        if reason:
            raise ValueError(reason)


def check_data(cfg: dict[str, Any], options: Options) -> None:
    """The checks that need the dataset (loaded once per process, cached).

    Raises
    ------
    ValueError
        More clients than samples (or users), more labels per client than classes, a
        partition that leaves a client empty or that flwr-datasets cannot cut, a shared
        source or a model that does not fit the dataset, depths beyond the model's
        exits.
    bouquet.data.loaders.DataMissingError
        If the dataset is not in the cache.
    """

    exp: Any = get_experiment(cfg)  # a RecsysExperiment for dataset=movielens
    data = exp.dataset
    n = int(cfg["simulation"]["num_clients"])
    if options["dataset"] == "movielens":
        users = exp.ratings.num_users
        if n > min(users, cfg["dataset"]["max_users"] or users):
            raise ValueError(
                f"simulation.num_clients={n} is more than the {users} users of "
                "dataset=movielens"
            )
        return
    if cfg["task"] != "federated":
        return
    samples = len(data.y_train) - len(exp.server_shared_indices)
    if n > samples:
        raise ValueError(
            f"simulation.num_clients={n} is more than the {samples} training samples "
            "of the clients"
        )
    if (
        options["partition"] == "pathological"
        and cfg["partition"]["labels_per_client"] > data.num_classes
    ):
        raise ValueError(
            f"partition.labels_per_client={cfg['partition']['labels_per_client']} is "
            "out of range "
            f"[1, {data.num_classes}] (dataset={options['dataset']} has "
            f"{data.num_classes} classes)"
        )
    # Cut the partitions now, once (cached on disk for every ClientApp): a partition
    # flwr-datasets cannot cut (a Dirichlet minimum a large population cannot meet, an
    # unbalanced split that runs out of a class) is refused here in one line, not by
    # every client in every round.
    _ = exp.partitions
    source = cfg["server"].get("shared_source")
    if source:
        other = load_dataset(source, cfg["dataset"]["root"])
        if (other.input_shape, other.num_classes) != (
            data.input_shape,
            data.num_classes,
        ):
            raise ValueError(
                f"server.shared_source={source!r} has inputs {other.input_shape} and "
                f"{other.num_classes} "
                f"classes; dataset={options['dataset']} has {data.input_shape} and "
                f"{data.num_classes}"
            )
    try:
        model = exp.build_model()
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"model={options['model']} does not fit dataset={options['dataset']}: {exc}"
        ) from exc
    depths = (
        cfg["strategy"].get("depths") if options["strategy"] == "depth_fedavg" else None
    )
    exits = getattr(model, "num_exits", None)
    if depths and exits is not None and max(depths) > exits:
        raise ValueError(
            f"strategy.depths={fmt(depths)} is out of range: the model has {exits} "
            f"exits (depths 1..{exits})"
        )
