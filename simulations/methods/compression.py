"""Wrap the configured strategy in :class:`~bouquet.strategies.Compressed` when clients
compress.

:func:`wrap_compression` is one of
:data:`bouquet.simulations.run.serverapp.STRATEGY_WRAPPERS`. It reads

* ``client._target_``: when it names a subclass of
  :class:`~bouquet.clients.compressed.CompressingClient` (``client=topk|ternary|stc``),
  the strategy is wrapped; otherwise it is returned unchanged (``client=plain``);
* ``compression.server_lr`` (optional, default 1.0; e.g.
  ``+compression.server_lr=0.5``): the step :math:`\\eta` applied to the decoded mean
  update;
* ``compression.fast_path`` (optional, default true): sparse weighted-mean aggregation
  when the strategy is FedAvg-like;
* ``compression.server_momentum`` (optional, default 0 = off): :math:`\\beta` of the
  server momentum on the decoded mean update: the chain becomes
  ``ServerMomentum(Compressed(strategy, server_lr), momentum=beta)``
  (:class:`~bouquet.strategies.ServerMomentum`,
  :math:`m \\leftarrow \\beta m + \\eta \\bar u`, :math:`w \\leftarrow w + m`);
* ``compression.gamma`` (optional, instead of ``server_lr``): the S1 source's learning
  rate :math:`\\gamma` of :math:`W \\leftarrow W - \\gamma \\sum_i c_i G_i`. A client
  uploads its update :math:`u_i = -\\text{lr}\\, G_i` (one SGD step with
  ``client.local_steps=1``, momentum 0; top-k selects the same positions in :math:`u_i`
  as in :math:`G_i`), so ``server_lr = gamma / client.lr``.

A strategy with its own ``start()`` loop that takes a ``decoder`` (the asynchronous
strategy) is not wrapped: it gets :func:`~bouquet.strategies.decoding.decode_update` as
its decoder.

The codec settings themselves (``client.alpha``, ``client.rho``, ``client.min_k``,
``client.scope``, ``client.value_dtype``, ``client.residual_decay``,
``client.stochastic``, ``client.clip_c``, ``client.packing``, and DGC's
``client.momentum_correction``, ``client.clip_norm``, ``client.warmup_rounds``) go to
the client's constructor.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.serverapp.strategy import Strategy
from hydra.utils import get_class

from bouquet.clients.compressed import CompressingClient
from bouquet.strategies.compressed import Compressed
from bouquet.strategies.decoding import decode_update
from bouquet.strategies.server_momentum import ServerMomentum

logger = logging.getLogger(__name__)


def client_compresses(cfg: dict[str, Any]) -> bool:
    """Whether ``cfg["client"]`` builds a compressing client."""
    target = (cfg.get("client") or {}).get("_target_")
    if not target:
        return False
    cls = get_class(target)
    return isinstance(cls, type) and issubclass(cls, CompressingClient)


def _own_start_loop(strategy: Strategy) -> Strategy | None:
    """The strategy (looking through ``.strategy`` wrappers) that runs its own
    ``start()`` loop
    and takes a ``decoder`` (bouquet's asynchronous strategy), else None."""
    seen: Strategy | None = strategy
    while seen is not None:
        if "decoder" in vars(seen) and type(seen).start is not Strategy.start:
            return seen
        seen = vars(seen).get("strategy")
    return None


def wrap_compression(cfg: dict[str, Any], exp: Any, strategy: Strategy) -> Strategy:
    """``Compressed(strategy, server_lr)`` (inside ``ServerMomentum`` when
    ``compression.server_momentum`` > 0) if the configured client compresses, else
    ``strategy``."""
    if not client_compresses(cfg):
        return strategy
    own_loop: Any = _own_start_loop(strategy)
    if own_loop is not None:  # asynchronous strategies decode each reply themselves
        if getattr(own_loop, "decoder", None) is None:
            own_loop.decoder = decode_update
        logger.info(
            "client compresses: %s decodes replies in its own loop",
            type(own_loop).__name__,
        )
        return strategy
    comp = cfg.get("compression") or {}
    server_lr = float(comp.get("server_lr", 1.0))
    # S1: W <- W - gamma * sum_i c_i G_i, and the client uploads -lr * G_i
    if "gamma" in comp:
        server_lr = float(comp["gamma"]) / float(cfg["client"]["lr"])
    server_momentum = float(comp.get("server_momentum", 0.0))
    logger.info(
        "client %s compresses: wrapping %s in Compressed(server_lr=%s)%s",
        cfg["client"]["_target_"],
        type(strategy).__name__,
        server_lr,
        f" inside ServerMomentum(momentum={server_momentum})"
        if server_momentum > 0
        else "",
    )
    wrapped: Strategy = Compressed(
        strategy, server_lr=server_lr, fast_path=bool(comp.get("fast_path", True))
    )
    if server_momentum > 0:
        wrapped = ServerMomentum(wrapped, momentum=server_momentum)
    return wrapped
