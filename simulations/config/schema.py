"""The config schema of ``bouquet-sim`` and ``flwr run``: every key of every config
group value.

One declarative table. For each config group (``client``, ``strategy``, ...) and each of
its values (``client=topk``, ``strategy=async``, ...) it lists the keys that value has,
each with its type, its range or allowed values, and what ``null`` means where null is
allowed. A group's values are told apart by one key (``client._target_``,
``model.name``, ...). Defaults are not here: they are defined once, in the yaml files
under ``conf/``. :mod:`bouquet.simulations.config.validate` checks a composed config
against this table (unknown keys, types, ranges), then the combinations that cannot
work. ``python -m bouquet.simulations.config.schema_doc --markdown`` prints the README's
config reference (:mod:`bouquet.simulations.config.schema_doc`).

Ranges are intervals written as in mathematics: ``(0, 1]`` excludes 0 and includes 1;
``inf`` is unbounded. A ``float`` key takes an integer too; an ``int`` key takes no
float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bouquet.clients.recsys_client import OPTIMIZERS as RECSYS_OPTIMIZERS
from bouquet.codecs.catalog import COMPRESSORS, DOWNLINK_CODECS, codec_options
from bouquet.codecs.compressor import SCOPES
from bouquet.codecs.ternary import PACKINGS
from bouquet.codecs.topk import VALUE_DTYPES
from bouquet.data.loaders import DATASETS
from bouquet.data.partition import PARTITIONERS, SIZE_RULES
from bouquet.models.nas import FAMILIES
from bouquet.simulations.methods.adjust import OPTIMIZERS as ADJUST_OPTIMIZERS
from bouquet.strategies.async_fedavg import LEARNER_RATES, WINDOW_SIDES
from bouquet.strategies.kl_math import (
    BAD_HISTOGRAM_RULES,
    DIRECTIONS,
    MODES,
    REFERENCES,
)
from bouquet.strategies.staleness import CONTEXTS, POLICIES

KINDS = (
    "int",
    "float",
    "bool",
    "str",
    "str or bool",
    "int list",
    "float list",
    "str list",
    "dict",
)


@dataclass(frozen=True)
class Key:
    """One config key.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS` (a ``... list`` is a non-empty list of that type; ``dict``
        has free keys).
    range : str
        Interval of a number or of every element of a list, e.g. ``"(0, 1]"`` ("" =
        any).
    choices : tuple
        Allowed values (of every element, for a list); empty = any.
    null : str
        What ``null`` means; empty = null is refused.
    optional : bool
        The key is absent unless set with ``+group.key=value``.
    doc : str
        One line for the README.
    """

    kind: str
    range: str = ""
    choices: tuple[Any, ...] = ()
    null: str = ""
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Group:
    """A config group: its values (each a key table) and the key that tells them apart.

    ``by`` = "" means every value of the group has the same keys (one table, named
    ``*``).
    """

    by: str
    values: dict[str, dict[str, Key]]
    optional: bool = False
    doc: str = ""


# --------------------------------------------------------------- helpers for the tables
def integer(rng: str = "", **kw: Any) -> Key:
    return Key("int", rng, **kw)


def real(rng: str = "", **kw: Any) -> Key:
    return Key("float", rng, **kw)


def flag(**kw: Any) -> Key:
    return Key("bool", **kw)


def choice(*choices: str, **kw: Any) -> Key:
    return Key("str", choices=tuple(choices), **kw)


def target(path: str) -> Key:
    return Key("str", choices=(path,), doc="what Hydra builds")


PARTIAL = Key(
    "bool", choices=(True,), doc="Hydra builds a factory that the run completes"
)
SEED = integer("[0, 4294967295]")
FRACTION = real("[0, 1]")

# ------------------------------------------------------------------------------- client
TRAINING = {
    "_partial_": PARTIAL,
    "local_epochs": integer(
        "[0, inf)", doc="local epochs per round (train_config local-epochs wins)"
    ),
    "batch_size": integer("[1, inf)"),
    "lr": real("(0, inf)", doc="learning rate (train_config lr wins)"),
    "momentum": real("[0, 1)", doc="SGD momentum"),
    "weight_decay": real("[0, inf)"),
    "torch_threads": integer("[1, inf)", doc="torch threads per client"),
}
STEPS = {
    "local_steps": integer(
        "[1, inf)",
        null="use local_epochs",
        optional=True,
        doc="batches per round instead of local_epochs (1 with momentum 0: one SGD "
        "step)",
    )
}
TOPK = {
    "alpha": real("(0, 1]", doc="fraction of elements kept in round 1"),
    "rho": real("(0, 1]", doc="attenuation: alpha * rho**(round - 1)"),
    "min_k": integer(
        "[0, inf)", doc="at least this many elements per tensor (or model)"
    ),
    "scope": choice(*SCOPES, doc="top-k per tensor or over the whole model"),
    "value_dtype": choice(*VALUE_DTYPES, doc="dtype of the kept values on the wire"),
    "residual_decay": real("[0, 1]", doc="error feedback: 1 classic, 0 none"),
    "momentum_correction": real(
        "[0, 1)",
        doc="DGC momentum correction m: u = m u + update, u zeroed where sent (0: off)",
    ),
    "clip_norm": real(
        "(0, inf)",
        null="no clipping",
        doc="DGC local clipping: L2 bound on the round's update",
    ),
    "warmup_rounds": integer(
        "[0, inf)",
        doc="DGC density warm-up: round r <= W keeps d_r**(r/(W+1)) (0: off)",
    ),
}
STC = {
    k: TOPK[k]
    for k in (
        "alpha",
        "rho",
        "min_k",
        "scope",
        "residual_decay",
        "momentum_correction",
        "clip_norm",
        "warmup_rounds",
    )
}
TERNARY = {
    "stochastic": flag(
        doc="unbiased stochastic rounding (false: deterministic threshold)"
    ),
    "clip_c": real(
        "(0, inf)", null="no clipping", doc="clip at clip_c * std before ternarising"
    ),
    "packing": choice(*PACKINGS, doc="wire form of the trits"),
    "residual_decay": TOPK["residual_decay"],
}
# Keyword arguments of client.codec_args per client.codec (recsys), and the ones without
# a default.
CODEC_ARGS: dict[str, dict[str, Key]] = {
    "topk": TOPK,
    "stc": STC,
    "ternary": TERNARY,
    "dense": {"residual_decay": TOPK["residual_decay"]},
}
CODEC_REQUIRED: dict[str, tuple[str, ...]] = {
    c: tuple(codec_options(c)[1]) for c in COMPRESSORS if codec_options(c)[1]
}

CLIENT = {
    "plain": {"_target_": target("bouquet.clients.TorchClient"), **TRAINING, **STEPS},
    "topk": {
        "_target_": target("bouquet.clients.TopKClient"),
        **TRAINING,
        **STEPS,
        **TOPK,
    },
    "stc": {
        "_target_": target("bouquet.clients.STCClient"),
        **TRAINING,
        **STEPS,
        **STC,
    },
    "ternary": {
        "_target_": target("bouquet.clients.TernaryClient"),
        **TRAINING,
        **STEPS,
        **TERNARY,
    },
    "shared_topk": {
        "_target_": target("bouquet.clients.shared_topk.SharedTopKClient"),
        **TRAINING,
        **STEPS,
        **{k: TOPK[k] for k in ("alpha", "min_k", "residual_decay")},
    },
    "slow": {
        "_target_": target("bouquet.clients.SlowClient"),
        **TRAINING,
        **STEPS,
        "speed_sigma": real(
            "[0, inf)", doc="log-normal sigma of the per-node compute-time factor"
        ),
        "slow_fraction": real("[0, 1]", doc="share of very slow nodes"),
        "slow_factor": real("[1, inf)", doc="extra factor of the slow nodes"),
        "base_time_s": real(
            "[0, inf)", doc="simulated task time of a median node (0: measured time)"
        ),
        "speed_seed": SEED,
    },
    "early_exit": {
        "_target_": target("bouquet.clients.early_exit.EarlyExitClient"),
        **TRAINING,
        **STEPS,
        "max_depth": integer(
            "[0, inf)", null="no limit", doc="this node's capacity (0 = no limit)"
        ),
        "max_depth_by_partition": Key(
            "int list", "[0, inf)", null="no capacities", doc="capacity by partition-id"
        ),
        "self_distillation": real(
            "[0, inf)",
            doc="weight of DepthFL's mutual self-distillation among exits (0: off)",
        ),
    },
    "recsys": {
        "_target_": target("bouquet.clients.recsys_client.RecsysClient"),
        "_partial_": PARTIAL,
        "local_epochs": TRAINING["local_epochs"],
        "batch_size": TRAINING["batch_size"],
        "lr": TRAINING["lr"],
        "optimizer": choice(*RECSYS_OPTIMIZERS, doc="a fresh optimizer every round"),
        "reg": real("[0, inf)", doc="L2 on the factors of each batch"),
        "torch_threads": TRAINING["torch_threads"],
        "codec": choice(*sorted(COMPRESSORS), null="plain upload", doc="upload codec"),
        "codec_args": Key(
            "dict",
            doc="settings of client.codec (its keys as for client=topk/stc/ternary)",
        ),
    },
}

# ----------------------------------------------------------------------------- strategy
FEDAVG = {
    "fraction_train": real(
        "(0, 1]", doc="share of connected nodes sampled for training"
    ),
    "fraction_evaluate": FRACTION,
    "min_train_nodes": integer("[1, inf)"),
    "min_available_nodes": integer(
        "[1, inf)", doc="nodes to wait for before the first round"
    ),
    "min_evaluate_nodes": integer("[0, inf)", optional=True),
}
STRATEGY = {
    "fedavg": {"_target_": target("flwr.serverapp.strategy.FedAvg"), **FEDAVG},
    "fedprox": {
        "_target_": target("flwr.serverapp.strategy.FedProx"),
        **FEDAVG,
        "proximal_mu": real(
            "[0, inf)", doc="mu of the proximal term (sent to the clients)"
        ),
    },
    "kl_weighted": {
        "_target_": target("bouquet.strategies.kl_weighted.KLWeightedFedAvg"),
        "_partial_": PARTIAL,
        **FEDAVG,
        "mode": choice(*MODES, doc="exp: n^a exp(-D/tau) | disco: ReLU(n/N - a D + b)"),
        "tau": real("(0, inf)", doc="exp temperature"),
        "a": real(
            "[0, inf)", doc="exp: exponent of n_i; disco: weight of the divergence"
        ),
        "b": real(doc="disco offset"),
        "reference": choice(
            *REFERENCES, doc="Q: this round's pooled histograms or the server's labels"
        ),
        "direction": choice(*DIRECTIONS, doc="which clients count more"),
        "bad_histogram": choice(
            *BAD_HISTOGRAM_RULES, doc="a reply without a usable histogram"
        ),
        "smoothing": real("[0, 1)", doc="eps of the smoothed distributions"),
    },
    "depth_fedavg": {
        "_target_": target("bouquet.strategies.depth_fedavg.DepthFedAvg"),
        **FEDAVG,
        "depths": Key("int list", "[1, inf)", null="1..L", doc="depths to draw from"),
        "depth_probs": Key(
            "float list",
            "[0, inf)",
            null="uniform",
            doc="weights of depths (one per depth)",
        ),
        "assignment": choice(
            "per_round",
            "fixed",
            doc="redraw depths every round (seeded by seed, round, "
            "partition-id) or once per node",
        ),
        "node_info_timeout": real(
            "(0, inf)", doc="seconds to wait for the nodes' node-info answers"
        ),
        "seed": SEED,
    },
    "async": {
        "_target_": target("bouquet.strategies.async_fedavg.AsyncFedAvg"),
        "policy": choice(*POLICIES, doc="staleness policy"),
        "alpha": real("(0, 1]", doc="mixing rate of the mixing policies"),
        "exponent": real(
            "[0, inf)",
            null="the policy's default",
            doc="a of (1+tau)^-a or of the window ratio",
        ),
        "hinge_a": real("(0, inf)"),
        "hinge_b": real("[0, inf)"),
        "buffer_size": integer("[1, inf)", doc="fedbuff: updates per server step"),
        "server_lr": real("(0, inf)", doc="fedbuff: eta_g"),
        "window": integer("[1, inf)", doc="sliding_window: staleness samples kept"),
        "context": choice(*CONTEXTS, doc="sliding_window: context value of the window"),
        "max_scale": real("(0, inf)", doc="sliding_window: cap of the scale"),
        "per_node": flag(doc="sliding_window, window_side=server: one window per node"),
        "window_side": choice(
            *WINDOW_SIDES,
            doc="sliding_window: who keeps the window and picks the scale",
        ),
        "learner_rate": choice(
            *LEARNER_RATES,
            doc="window_side=learner: the scale acts on the local lr, the server "
            "mixing, or both",
        ),
        "max_staleness": integer("[0, inf)", null="no cutoff"),
        "max_updates": integer("[1, inf)", null="simulation.num_rounds x nodes"),
        "max_wall_s": real("(0, inf)", null="no wall-time budget"),
        "eval_every": integer("[1, inf)", doc="evaluate every E accepted updates"),
        "plateau_window": integer(
            "[0, inf)",
            null="max(5, ceil(5 x nodes / eval_every))",
            doc="stop after this many evaluations without gain (0: off)",
        ),
        "plateau_min_delta": real(
            "[0, inf)", doc="the gain of plateau_metric that counts"
        ),
        "plateau_metric": Key("str", doc="metric of the plateau rule"),
        "plateau_mode": choice("max", "min"),
        "reply_timeout_s": real("(0, inf)", null="simulation.round_timeout_s"),
        "max_node_failures": integer(
            "[1, inf)", doc="consecutive failures before a node is dropped"
        ),
        "poll_interval_s": real("(0, inf)"),
    },
}

# ------------------------------------------------------------------ other config groups
ROOT_DIR = Key(
    "str",
    null="$BOUQUET_DATA or ~/.cache/bouquet/data",
    doc="data cache or torchvision-layout directory",
)
DATASET = {
    **{
        name: {
            "_target_": target("bouquet.data.load_dataset"),
            "name": choice(name),
            "root": ROOT_DIR,
            "train": Key(
                "dict",
                doc="training defaults that client.local_epochs / client.lr follow",
            ),
        }
        for name in ("mnist", "fashion_mnist", "digits")
    },
    "movielens": {
        "name": choice("movielens"),
        "task_type": choice("recommendation"),
        "root": ROOT_DIR,
        "test_per_user": integer("[1, inf)", doc="held-out ratings per user"),
        "num_negatives": integer(
            "[1, inf)", doc="sampled unrated items per user (HR@10, NDCG@10)"
        ),
        "max_users": integer(
            "[1, inf)", null="all 943 users", doc="a seeded subset of users"
        ),
        "eval_fraction": real(
            "(0, 1]", doc="share of clients that evaluate each round"
        ),
        "train": Key(
            "dict", doc="training defaults that client.local_epochs / client.lr follow"
        ),
    },
}
if set(DATASET) - {"movielens"} != set(DATASETS):
    raise ValueError(
        f"schema DATASET has {sorted(DATASET)}, bouquet.data has {sorted(DATASETS)}"
    )
PARTITION_BASE = {
    "_target_": target("bouquet.data.partition_indices"),
    "_partial_": PARTIAL,
}
PARTITION = {
    "iid": {**PARTITION_BASE, "kind": choice("iid")},
    "dirichlet": {
        **PARTITION_BASE,
        "kind": choice("dirichlet"),
        "alpha": real("(0, inf)", doc="concentration"),
        "min_partition_size": integer(
            "[0, inf)", doc="resample until every client has this many"
        ),
    },
    "pathological": {
        **PARTITION_BASE,
        "kind": choice("pathological"),
        "labels_per_client": integer(
            "[1, inf)", doc="classes per client (<= the dataset's classes)"
        ),
    },
    "unbalanced": {
        **PARTITION_BASE,
        "kind": choice("unbalanced"),
        "sizes": choice(
            *SIZE_RULES,
            doc="client i = 1..N gets a share ~ exp(i), i or i^2 of the rest "
            "(flwr-datasets' Exponential/Linear/SquarePartitioner)",
        ),
        "min_size": integer(
            "[0, inf)",
            doc="samples every client gets before the size rule splits the rest",
        ),
        "alpha": real(
            "(0, inf)",
            doc="Dirichlet concentration of each client's labels "
            "(InnerDirichletPartitioner)",
        ),
    },
}
if set(PARTITION) != set(PARTITIONERS):
    raise ValueError(
        f"schema PARTITION has {sorted(PARTITION)}, bouquet.data has "
        f"{sorted(PARTITIONERS)}"
    )
SMALL_MODEL = {"_target_": target("bouquet.models.build_model"), "_partial_": PARTIAL}
MODEL = {
    **{
        name: {
            **SMALL_MODEL,
            "name": choice(name),
            "hidden": integer("[1, inf)", doc="hidden width (mlp)"),
        }
        for name in ("auto", "mlp", "lenet", "cnn_bn")
    },
    "early_exit": {
        "_target_": target("bouquet.models.early_exit.build_early_exit"),
        "_partial_": PARTIAL,
        "name": choice("early_exit"),
        "architecture": Key(
            "str",
            null="the baseline network",
            doc="path of an architecture.json (must exist)",
        ),
        "exit_weights": Key(
            "float list",
            "[0, inf)",
            null="all 1.0",
            doc="lambda_i, one per exit, positive sum",
        ),
        "families": Key(
            "str list",
            choices=tuple(FAMILIES),
            doc="residual families (>= 2 different)",
        ),
        "blocks_per_stage": Key(
            "int list", "[1, inf)", doc="depths of the source networks"
        ),
        "widths": Key(
            "int list",
            "[4, inf)",
            null="16/32/64 (8/16/32 for 8x8 inputs)",
            doc="stage widths, multiples of 4",
        ),
    },
    "mf": {
        "_target_": target("bouquet.models.recsys.build_recsys_model"),
        "_partial_": PARTIAL,
        "name": choice("mf"),
        "dim": integer("[1, inf)", doc="latent dimension"),
        "init_std": real("(0, inf)", doc="std of the initial factors"),
        "mu": real(doc="initial global bias"),
    },
}
SERVER = {
    "none": {
        "name": choice("none"),
        "shared_fraction": real("[0, 1)", doc="server-only slice of the training set"),
    },
    "adjust": {
        "name": choice("adjust"),
        "shared_fraction": real(
            "(0, 1)", doc="server-only class-balanced slice of the training set"
        ),
        "shared_source": choice(
            *DATASETS, null="that slice", doc="or this dataset's train split"
        ),
        "epochs": integer("[1, inf)"),
        "lr": real("(0, inf)"),
        "batch_size": integer("[1, inf)"),
        "optimizer": choice(*ADJUST_OPTIMIZERS),
        "momentum": real("[0, 1)", doc="sgd only"),
        "proximal_mu": real("[0, inf)", doc="mu ||w - w_agg||^2"),
        "every_n_rounds": integer("[1, inf)"),
        "record_before": flag(doc="evaluate the aggregate before adjusting"),
    },
}
DOWNLINK = {
    "none": {"name": choice("none")},
    "topk": {
        "name": choice("topk"),
        **{k: TOPK[k] for k in ("alpha", "min_k", "scope", "value_dtype")},
    },
    "stc": {"name": choice("stc"), **{k: STC[k] for k in ("alpha", "min_k", "scope")}},
    "ternary": {
        "name": choice("ternary"),
        **{k: TERNARY[k] for k in ("stochastic", "clip_c", "packing")},
    },
}
# import time: a new codec needs its settings here
if (
    set(CODEC_ARGS) != set(COMPRESSORS)
    or set(DOWNLINK) - {"none"} != set(DOWNLINK_CODECS)
    or any(set(a) - set(codec_options(c)[0]) for c, a in CODEC_ARGS.items())
):
    raise ValueError(
        "schema CODEC_ARGS and DOWNLINK type the options of bouquet.codecs.catalog's "
        "codecs, and no others"
    )
PRIVACY = {
    "none": {"name": choice("none")},
    "secagg": {"name": choice("secagg")},
    **{
        m: {
            "name": choice(m),
            "clip_norm": real("(0, inf)", doc="C: L2 bound of each client's update"),
            "delta": real("(0, 1)", doc="epsilon is reported at this delta"),
            "noise_multiplier": real(
                "(0, inf)", doc="z: Gaussian noise std z * C on the sum of the updates"
            ),
        }
        for m in ("dp_client", "dp_server")
    },
}
LOGGER = {
    "none": {"name": choice("none")},
    "csv": {"name": choice("csv")},
    "tensorboard": {"name": choice("tensorboard")},
    "mlflow": {
        "name": choice("mlflow"),
        "dir": Key(
            "str",
            null="mlruns under the sweep (multirun) or run dir",
            doc="MLflow's local file store",
        ),
        "experiment": Key("str", doc="MLflow experiment name"),
    },
}
SIMULATION = {
    "num_clients": integer("[1, inf)", doc="simulated SuperNodes (= data partitions)"),
    "num_rounds": integer("[1, inf)"),
    "fraction_train": real("(0, 1]", doc="share of clients trained per round"),
    "round_timeout_s": real("(0, inf)"),
    "client_cpus": real("(0, inf)", doc="CPUs per simulated client (<= total_cpus)"),
    "total_cpus": integer("[1, inf)", null="all cores of this machine"),
    "node_wait_s": real(
        "[0, inf)",
        null="no bound",
        doc="fail when too few nodes connect this long (0: no bound)",
    ),
    "checkpoint_every": integer(
        "[0, inf)",
        doc="rounds between checkpoints (strategy=async: applied updates; 0: off)",
    ),
    "resume": Key(
        "str or bool",
        null="a fresh run",
        doc="run dir to continue, or true = this run's own dir",
    ),
    "min_replies": integer("[1, inf)", doc="fewer valid replies: the round is skipped"),
    "node_ids": Key(
        "int list",
        "[1, inf)",
        null="every connected node",
        optional=True,
        doc="deployment: the only node ids the run samples (others are ignored, with "
        "a WARNING)",
    ),
}
RATE = real("[0, 1]")
FAULT = {
    "crash_rate": RATE,
    "hang_rate": RATE,
    "corrupt_rate": RATE,
    "hang_s": real("[0, inf)", doc="how long a hanging client hangs"),
    "seed": SEED,
}
SEARCH = {
    "steps": integer("[1, inf)", doc="controller steps"),
    "warmup_steps": integer("[0, inf)"),
    "shared_batches": integer("[1, inf)"),
    "batch_size": integer("[1, inf)"),
    "shared_lr": real("(0, inf)"),
    "threads": integer("[1, inf)"),
    "controller_samples": integer("[1, inf)"),
    "controller_lr": real("(0, inf)"),
    "controller_hidden": integer("[1, inf)"),
    "baseline_decay": real("[0, 1]"),
    "entropy_weight": real("[0, inf)"),
    "val_fraction": real("(0, 1)"),
    "val_batch": integer("[1, inf)"),
    "max_train_samples": integer("[10, inf)", null="all"),
    "final_samples": integer("[0, inf)"),
    "final_val_samples": integer("[1, inf)"),
    "beta": integer(
        "[1, inf)",
        doc="exponent of the cost term: a k-times cheaper network gains k^(beta*w)",
    ),
    "w": real("[0, inf)", doc="soft-constraint weight"),
    "cost": choice(
        "params",
        "macs",
        "params_macs",
        doc="what the reward prices, on the early-exit model (MACs: mean over exits)",
    ),
}
COMPRESSION = {
    "server_lr": real(
        "(0, inf)",
        optional=True,
        doc="step applied to the decoded mean update (absent: 1.0)",
    ),
    "fast_path": flag(
        optional=True, doc="sparse weighted-mean aggregation (absent: true)"
    ),
    "server_momentum": real(
        "[0, 1)",
        optional=True,
        doc="beta of the server momentum on the decoded mean update (absent: 0, off)",
    ),
    "gamma": real(
        "(0, inf)",
        optional=True,
        doc="S1's server learning rate on the combined sparse gradient: server_lr = "
        "gamma / client.lr",
    ),
}

# Checked in this order: keys that others interpolate (simulation.*, seed) come first.
GROUPS: dict[str, Group] = {
    "simulation": Group("", {"*": SIMULATION}),
    "dataset": Group("name", DATASET),
    "partition": Group("kind", PARTITION, doc="image datasets only"),
    "model": Group("name", MODEL),
    "client": Group("_target_", CLIENT),
    "strategy": Group("_target_", STRATEGY),
    "server": Group("name", SERVER),
    "logger": Group(
        "name",
        LOGGER,
        optional=True,
        doc="experiment tracker (offline): per-round metrics, config, artifacts",
    ),
    "downlink": Group(
        "name",
        DOWNLINK,
        optional=True,
        doc="compressed broadcast of the global model (two-way compression)",
    ),
    "privacy": Group(
        "name",
        PRIVACY,
        optional=True,
        doc="central differential privacy (client- or server-side clipping), secure "
        "aggregation",
    ),
    "fault": Group("", {"*": FAULT}, doc="fault injection (tests, benchmarks)"),
    "search": Group("", {"*": SEARCH}, optional=True, doc="only with task=search"),
    "compression": Group(
        "",
        {"*": COMPRESSION},
        optional=True,
        doc="set with +compression.server_lr=0.5; only with a compressing client",
    ),
}
TASKS = ("federated", "search")
ROOT = {
    "task": choice(
        *TASKS, doc="federated (simulation) or search (S2 architecture search)"
    ),
    "verbose": flag(doc="Flower's INFO lines and full tracebacks on the console"),
    "seed": SEED,
    "train_config": Key(
        "dict",
        doc="extra key/values of every train ConfigRecord (lr > 0, local-epochs >= 0)",
    ),
}
