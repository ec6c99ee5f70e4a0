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
from bouquet.codecs.catalog import CODECS, LOSSY_CODECS
from bouquet.data import load_dataset
from bouquet.simulations.config import privacy_rules
from bouquet.simulations.config.checks import Options, check_value, fmt
from bouquet.simulations.config.rules import Combination, Rules, both, sync_image_only
from bouquet.simulations.config.schema import CODEC_ARGS, CODEC_REQUIRED
from bouquet.simulations.methods.downlink import DOWNLINK_STRATEGIES
from bouquet.simulations.methods.experiments import get_experiment

RULES = Rules()
# a density: topk, stc
SPARSE_CODECS = tuple(name for name, c in CODECS.items() if "alpha" in c.options()[0])


@RULES("downlink + strategy")
def _downlink_strategy(cfg: dict[str, Any], opt: Options) -> str | None:
    """A compressed downlink broadcasts one global model each round:
    strategy=fedavg|fedprox|kl_weighted,
    with an image-classification client (not early-exit sub-models, recommendation or
    the asynchronous loop)."""
    down = opt.get("downlink", "none")
    if down == "none":
        return None
    return sync_image_only(
        f"downlink={down}",
        opt,
        DOWNLINK_STRATEGIES,
        "the compressed downlink serves strategies "
        "that broadcast one global model in synchronous rounds",
        "the compressed downlink",
    )


RULES.refuse_together(
    "_async_adjust",
    "strategy=async",
    "server=adjust",
    "the asynchronous loop applies every update on arrival and never runs "
    "the server-side adjustment (use a synchronous strategy)",
    doc="The asynchronous loop applies every update on arrival and never runs the "
    "server-side adjustment.",
)
RULES.refuse_together(
    "_early_exit_adjust",
    "model=early_exit",
    "server=adjust",
    "the server-side adjuster trains a single-exit model and cannot "
    "train the early-exit model (server.shared_fraction alone keeps a validation "
    "slice)",
    doc="The adjuster fine-tunes with a single-exit cross-entropy and cannot train "
    "an early-exit model.",
)


@RULES("strategy=depth_fedavg without model=early_exit")
def _depth_needs_early_exit(cfg: dict[str, Any], opt: Options) -> str | None:
    """Depth sub-models are cut from the early-exit model's per-stage arrays; other
    models have none."""
    if opt["strategy"] == "depth_fedavg" and opt["model"] != "early_exit":
        return (
            f"strategy=depth_fedavg needs model=early_exit, not model={opt['model']}: "
            "its arrays have no depths to cut sub-models from"
        )
    return None


@RULES("model=early_exit <-> client=early_exit")
def _early_exit_pair(cfg: dict[str, Any], opt: Options) -> str | None:
    """The early-exit model is trained only by client=early_exit (multi-exit loss),
    which trains nothing else."""
    if opt["model"] == "early_exit" and opt["client"] != "early_exit":
        return (
            f"model=early_exit needs client=early_exit, not client={opt['client']}: "
            "other clients train with a single-exit loss and fail on the model's "
            "list of exits"
        )
    if opt["client"] == "early_exit" and opt["model"] != "early_exit":
        return f"client=early_exit needs model=early_exit, not model={opt['model']}"
    return None


@RULES("dataset=movielens <-> client=recsys, model=mf")
def _recsys_pair(cfg: dict[str, Any], opt: Options) -> str | None:
    """Ratings are trained only by client=recsys with model=mf (or auto); client=recsys
    and model=mf need ratings."""
    movielens = opt["dataset"] == "movielens"
    if movielens and opt["client"] != "recsys":
        return (
            f"dataset=movielens needs client=recsys, not client={opt['client']} "
            "(for compressed uploads use client=recsys client.codec=topk|stc|ternary)"
        )
    if opt["client"] == "recsys" and not movielens:
        return f"client=recsys needs dataset=movielens, not dataset={opt['dataset']}"
    if movielens and opt["model"] not in ("mf", "auto"):
        return f"dataset=movielens needs model=mf, not model={opt['model']}"
    if opt["model"] == "mf" and not movielens:
        return f"model=mf needs dataset=movielens, not dataset={opt['dataset']}"
    return None


@RULES("dataset=movielens + strategy=kl_weighted|async|fedprox, server=adjust")
def _recsys_strategy(cfg: dict[str, Any], opt: Options) -> str | None:
    """Ratings have no class labels (KL weighting, server-side adjustment), the
    asynchronous loop never
    runs the federated evaluation, and client=recsys does not apply FedProx's proximal
    term."""
    if opt["dataset"] != "movielens":
        return None
    why = {
        "kl_weighted": "ratings have no class labels to weight clients by",
        "async": (
            "the asynchronous loop never runs the clients' federated evaluation "
            "(no RMSE/HR@10)"
        ),
        "fedprox": "client=recsys does not apply the proximal term",
    }.get(opt["strategy"])
    if why:
        return both("dataset=movielens", f"strategy={opt['strategy']}", why)
    if opt["server"] == "adjust":
        return both(
            "dataset=movielens",
            "server=adjust",
            "the server holds no ratings to fine-tune on",
        )
    return None


@RULES("model=lenet + dataset=digits")
def _lenet_digits(cfg: dict[str, Any], opt: Options) -> str | None:
    """LeNet needs inputs of at least 16x16; digits are 8x8."""
    if opt["model"] == "lenet" and opt["dataset"] == "digits":
        return both(
            "model=lenet",
            "dataset=digits",
            "LeNet needs inputs >= 16x16 and digits are 8x8 (use model=mlp or "
            "model=auto)",
        )
    return None


@RULES("client.max_depth|max_depth_by_partition without strategy=depth_fedavg")
def _capacity_needs_depths(cfg: dict[str, Any], opt: Options) -> str | None:
    """A node with a capacity returns a sub-model; only strategy=depth_fedavg aggregates
    sub-models
    (every other strategy drops such replies, the asynchronous loop refuses them)."""
    client = cfg["client"]
    if opt["client"] == "early_exit" and opt["strategy"] != "depth_fedavg":
        for name in ("max_depth", "max_depth_by_partition"):
            if client[name]:
                return both(
                    f"strategy={opt['strategy']}",
                    f"client.{name}={fmt(client[name])}",
                    "a node with a "
                    "capacity returns a sub-model, which only strategy=depth_fedavg "
                    "aggregates",
                )
    return None


@RULES("client.codec_args vs client.codec")
def _codec_args(cfg: dict[str, Any], opt: Options) -> str | None:
    """client.codec_args holds the settings of client.codec (for topk and stc at least
    alpha)."""
    if opt["client"] != "recsys":
        return None
    codec, args = cfg["client"]["codec"], cfg["client"]["codec_args"]
    if codec is None:
        return (
            f"client.codec_args={fmt(args)} is set but client.codec is null"
            if args
            else None
        )
    table = CODEC_ARGS[codec]
    for name, value in args.items():
        if name not in table:
            return (
                f"client.codec_args.{name} is not a setting of client.codec={codec}; "
                f"allowed: {', '.join(table)}"
            )
        check_value(f"client.codec_args.{name}", table[name], value)
    for name in CODEC_REQUIRED.get(codec, ()):
        if name not in args:
            return (
                f"client.codec={codec} needs client.codec_args.{name} (e.g. "
                f"+client.codec_args.{name}=0.01)"
            )
    return None


def _codec_settings(
    cfg: dict[str, Any], opt: Options
) -> tuple[str, dict[str, Any]] | None:
    """(prefix of the keys, settings) of a top-k or STC upload (client=topk|stc, or
    client=recsys
    with client.codec=topk|stc; absent codec_args take the codec's defaults), else
    None."""
    if opt["client"] in SPARSE_CODECS:
        return "client", cfg["client"]
    if opt["client"] == "recsys" and cfg["client"]["codec"] in SPARSE_CODECS:
        return "client.codec_args", {
            "residual_decay": 1.0,
            "rho": 1.0,
            **cfg["client"]["codec_args"],
        }
    return None


@RULES("client.momentum_correction | warmup_rounds vs residual_decay, alpha, rho")
def _dgc_options(cfg: dict[str, Any], opt: Options) -> str | None:
    """DGC's momentum correction accumulates the momentum in the error-feedback
    residual, so it needs
    residual_decay > 0; a density warm-up from a density of 1 (alpha = rho = 1) sends
    nothing less."""
    found = _codec_settings(cfg, opt)
    if found is None:
        return None
    prefix, codec = found
    mc = codec.get("momentum_correction", 0.0) or 0.0
    if mc > 0 and codec.get("residual_decay", 1.0) == 0:
        return both(
            f"{prefix}.momentum_correction={fmt(mc)}",
            f"{prefix}.residual_decay=0",
            "momentum correction accumulates the momentum in the error-feedback "
            "residual and zeroes it where "
            "sent; without error feedback the unsent momentum is lost (use "
            "residual_decay > 0)",
        )
    warmup = codec.get("warmup_rounds", 0) or 0
    if warmup > 0 and codec.get("alpha") == 1.0 and codec.get("rho", 1.0) == 1.0:
        return both(
            f"{prefix}.warmup_rounds={warmup}",
            f"{prefix}.alpha=1.0",
            "the warm-up starts denser than the target, and a target density of 1 is "
            "already dense",
        )
    return None


@RULES("compression.* without compressed uploads")
def _compression(cfg: dict[str, Any], opt: Options) -> str | None:
    """compression.* sets how the server decodes compressed uploads: it needs a
    compressing client and a
    synchronous strategy (the asynchronous loop decodes each reply itself)."""
    if "compression" not in cfg:
        return None
    name = f"compression.{next(iter(cfg['compression']), 'server_lr')}"
    compresses = opt["client"] in LOSSY_CODECS or (
        opt["client"] == "recsys" and cfg["client"]["codec"]
    )
    if not compresses:
        return (
            f"{name} has no effect: client={opt['client']} does not upload "
            "compressed updates"
        )
    if opt["strategy"] == "async":
        return both(
            name, "strategy=async", "the asynchronous loop decodes each reply itself"
        )
    if "gamma" in cfg["compression"] and "server_lr" in cfg["compression"]:
        return both(
            "compression.gamma",
            "compression.server_lr",
            "gamma sets server_lr = gamma / client.lr: give one",
        )
    return None


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


# Every rule, in the order they are tried: these, then the privacy group's.
COMBINATIONS: list[Combination] = [*RULES, *privacy_rules.RULES]


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
