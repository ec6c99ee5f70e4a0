"""Refused combinations of the codecs' settings: ``client.codec_args``, DGC's options,
the ``compression`` group (tried after
:mod:`bouquet.simulations.config.method_rules`)."""

from __future__ import annotations

from typing import Any

from bouquet.codecs.catalog import CODECS
from bouquet.codecs.catalog import LOSSY_CODECS
from bouquet.simulations.config.checks import Options
from bouquet.simulations.config.checks import check_value
from bouquet.simulations.config.checks import fmt
from bouquet.simulations.config.rules import Rules
from bouquet.simulations.config.rules import both
from bouquet.simulations.config.schema_client import CODEC_ARGS
from bouquet.simulations.config.schema_client import CODEC_REQUIRED

RULES = Rules()
# a density: topk, stc
SPARSE_CODECS = tuple(name for name, c in CODECS.items() if "alpha" in c.options()[0])


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
    client=recsys with client.codec=topk|stc; absent codec_args take the codec's
    defaults), else None."""
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
    residual, so it needs residual_decay > 0; a density warm-up from a density of 1
    (alpha = rho = 1) sends nothing less."""
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
