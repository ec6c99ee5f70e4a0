"""Refused combinations of the methods' groups: downlink and strategy, early exits and
depths, the recommendation task, LeNet on digits (tried first, before
:mod:`bouquet.simulations.config.codec_rules`)."""

from __future__ import annotations

from typing import Any

from bouquet.simulations.config.checks import Options
from bouquet.simulations.config.checks import fmt
from bouquet.simulations.config.rules import Rules
from bouquet.simulations.config.rules import both
from bouquet.simulations.config.rules import sync_image_only
from bouquet.simulations.methods.downlink import DOWNLINK_STRATEGIES

RULES = Rules()


@RULES("downlink + strategy")
def _downlink_strategy(cfg: dict[str, Any], opt: Options) -> str | None:
    """A compressed downlink broadcasts one global model each round:
    strategy=fedavg|fedprox|kl_weighted, with an image-classification client (not
    early-exit sub-models, recommendation or the asynchronous loop)."""
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
    asynchronous loop never runs the federated evaluation, and client=recsys does not
    apply FedProx's proximal term."""
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
    sub-models (every other strategy drops such replies, the asynchronous loop refuses
    them)."""
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
