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

from bouquet.data.loaders import DATASETS
from bouquet.data.partition import PARTITIONERS
from bouquet.data.unbalanced import SIZE_RULES
from bouquet.models.nas import FAMILIES
from bouquet.simulations.config.schema_client import CLIENT
from bouquet.simulations.config.schema_client import DOWNLINK
from bouquet.simulations.config.schema_keys import PARTIAL
from bouquet.simulations.config.schema_keys import SEED
from bouquet.simulations.config.schema_keys import Group
from bouquet.simulations.config.schema_keys import Key
from bouquet.simulations.config.schema_keys import choice
from bouquet.simulations.config.schema_keys import flag
from bouquet.simulations.config.schema_keys import integer
from bouquet.simulations.config.schema_keys import real
from bouquet.simulations.config.schema_keys import target
from bouquet.simulations.config.schema_strategy import STRATEGY
from bouquet.simulations.methods.adjust import OPTIMIZERS as ADJUST_OPTIMIZERS

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
