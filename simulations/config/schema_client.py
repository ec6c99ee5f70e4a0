"""The ``client`` and ``downlink`` groups of the config schema
(:mod:`bouquet.simulations.config.schema`): training settings, the codecs' options
(checked at import against :mod:`bouquet.codecs.catalog`) and every client value."""

from __future__ import annotations

from bouquet.clients.recsys_client import OPTIMIZERS as RECSYS_OPTIMIZERS
from bouquet.codecs.catalog import COMPRESSORS
from bouquet.codecs.catalog import DOWNLINK_CODECS
from bouquet.codecs.catalog import codec_options
from bouquet.codecs.compressors import SCOPES
from bouquet.codecs.ternary import PACKINGS
from bouquet.codecs.topk import VALUE_DTYPES
from bouquet.simulations.config.schema_keys import PARTIAL
from bouquet.simulations.config.schema_keys import SEED
from bouquet.simulations.config.schema_keys import Key
from bouquet.simulations.config.schema_keys import choice
from bouquet.simulations.config.schema_keys import flag
from bouquet.simulations.config.schema_keys import integer
from bouquet.simulations.config.schema_keys import real
from bouquet.simulations.config.schema_keys import target

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
