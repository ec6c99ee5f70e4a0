"""Wrap the strategy in :class:`~bouquet.strategies.CompressedDownlink` when
``downlink`` asks for it.

:func:`wrap_downlink` is the last (outermost) of
:data:`bouquet.simulations.run.serverapp.STRATEGY_WRAPPERS`: it compresses what the
server broadcasts after every other wrapper has decided what the global model is.
``downlink=none`` (the default) leaves the strategy as it is;
``downlink=topk|stc|ternary`` builds the wrapper with the group's codec options
(``downlink.alpha`` ...) and :func:`client_downlink_mods` puts
:class:`~bouquet.clients.DownlinkMod` outermost among the client mods.

``bouquet-sim`` clients build the initial model from the run's seed exactly as the
server does (:meth:`~bouquet.simulations.methods.experiment.Experiment.initial_arrays`),
so the wrapper is built with ``initial_known=True``: a node's first round costs the
steps since the initial model, not the dense model, while those are smaller (the client
checks the initial model's digest; a mismatch falls back to the dense model).
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.serverapp.strategy import Strategy

from bouquet.clients.downlink import DownlinkMod
from bouquet.simulations.methods.experiments import get_experiment
from bouquet.strategies.downlink import CompressedDownlink

logger = logging.getLogger(__name__)

# The strategies whose train messages carry the one global model (checked in
# combinations.py).
DOWNLINK_STRATEGIES = ("fedavg", "fedprox", "kl_weighted")


def downlink_codec(cfg: dict[str, Any]) -> str:
    """The configured downlink codec (``none`` when the group is absent)."""
    return str((cfg.get("downlink") or {}).get("name", "none"))


def wrap_downlink(cfg: dict[str, Any], exp: Any, strategy: Strategy) -> Strategy:
    """``CompressedDownlink(strategy, codec, **options)``, or ``strategy`` for
    ``downlink=none``."""
    codec = downlink_codec(cfg)
    if codec == "none":
        return strategy
    options = {k: v for k, v in (cfg.get("downlink") or {}).items() if k != "name"}
    logger.info(
        "downlink=%s: the server broadcasts compressed steps of the global model (%s)",
        codec,
        options,
    )
    return CompressedDownlink(
        strategy, codec, seed=int(cfg.get("seed", 0)), initial_known=True, **options
    )


class InitialModel:
    """``initial()`` of :class:`~bouquet.clients.DownlinkMod`: the run's initial model,
    built once
    per process from the config (a picklable callable, for Ray's workers)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self._arrays: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = get_experiment(self.cfg).initial_arrays()
        return self._arrays


def client_downlink_mods(cfg: dict[str, Any]) -> list[Any]:
    """``[DownlinkMod(initial)]`` when the broadcast is compressed (the first, outermost
    mod), else ``[]``."""
    return (
        []
        if downlink_codec(cfg) == "none"
        else [DownlinkMod(initial=InitialModel(cfg))]
    )
