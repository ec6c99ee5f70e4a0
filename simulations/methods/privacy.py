"""The ``privacy`` config group: central differential privacy around the configured
strategy.

* ``privacy=none`` (default): nothing.
* ``privacy=dp_client``: every client clips its update to ``privacy.clip_norm`` *before*
  its codec sees it (:class:`~bouquet.clients.privacy.PrivateClient`); the server wraps
  the strategy in Flower's ``DifferentialPrivacyClientSideFixedClipping`` (Gaussian
  noise ``noise_multiplier * clip_norm / m`` on the mean of the ``m`` sampled clients)
  inside :class:`~bouquet.strategies.privacy.DPAccountant` (uniform weights, the bound
  enforced on the decoded updates, epsilon at ``privacy.delta``), all inside
  ``Compressed`` when the client compresses (:func:`wrap_privacy` runs before
  :func:`~bouquet.simulations.methods.compression.wrap_compression`).
* ``privacy=dp_server``: the same with ``DifferentialPrivacyServerSideFixedClipping``
  (the server clips the decoded updates; clients do nothing).
* ``client=shared_topk``: the strategy is wrapped in
  :class:`~bouquet.strategies.privacy_secagg.SharedSupport` (the server picks the
  round's shared coordinates); with ``privacy=secagg`` it sums the clients' masked
  vectors securely, and the clients get
  :func:`~bouquet.clients.shared_topk.secagg_key_mod` (:func:`privacy_client_mods`) to
  answer the key query. Flower 1.42's own SecAgg+ exists only as the legacy
  ``SecAggPlusWorkflow`` + ``secaggplus_mod``, which drive ``aggregate_fit`` of
  ``flwr.server.strategy`` strategies, not bouquet's Message-API strategies.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.client import NumPyClient
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy import Strategy

from bouquet.clients.privacy import PrivateClient
from bouquet.clients.shared_topk import SecureDenseClient
from bouquet.clients.shared_topk import secagg_key_mod
from bouquet.simulations.config.privacy_rules import DP_MODES
from bouquet.strategies.privacy import DPAccountant
from bouquet.strategies.privacy_secagg import SharedSupport

logger = logging.getLogger(__name__)

MODES = ("none", "dp_client", "dp_server", "secagg")


def privacy_mode(cfg: dict[str, Any]) -> str:
    """The configured privacy mode (``none`` when the group is absent)."""
    return str((cfg.get("privacy") or {}).get("name", "none"))


def sampled_clients(cfg: dict[str, Any], strategy: Any) -> int:
    """How many clients Flower's FedAvg samples each round: ``max(int(N *
    fraction_train), min_train_nodes)``."""
    n = int(cfg["simulation"]["num_clients"])
    fraction = float(
        getattr(
            strategy, "fraction_train", cfg["simulation"].get("fraction_train", 1.0)
        )
    )
    return min(
        n, max(int(n * fraction), int(getattr(strategy, "min_train_nodes", 1) or 1))
    )


def wrap_privacy(cfg: dict[str, Any], exp: Any, strategy: Strategy) -> Strategy:
    """``DPAccountant(DifferentialPrivacy*SideFixedClipping(strategy, ...))`` for
    ``privacy=dp_*``, inside
    ``SharedSupport`` for shared-support uploads (``client=shared_topk``,
    ``privacy=secagg``); else ``strategy``."""
    mode = privacy_mode(cfg)
    if mode in DP_MODES:
        p = cfg["privacy"]
        m = sampled_clients(cfg, strategy)
        wrapper = (
            DifferentialPrivacyClientSideFixedClipping
            if mode == "dp_client"
            else DifferentialPrivacyServerSideFixedClipping
        )
        dp = wrapper(
            strategy,
            noise_multiplier=float(p["noise_multiplier"]),
            clipping_norm=float(p["clip_norm"]),
            num_sampled_clients=m,
        )
        logger.info(
            "privacy=%s: %s(z=%s, C=%s, m=%d) inside DPAccountant(N=%d, delta=%g)",
            mode,
            wrapper.__name__,
            p["noise_multiplier"],
            p["clip_norm"],
            m,
            int(cfg["simulation"]["num_clients"]),
            float(p["delta"]),
        )
        strategy = DPAccountant(
            dp,
            population_size=int(cfg["simulation"]["num_clients"]),
            delta=float(p["delta"]),
        )
    # outside DP: the DP wrappers see the dense replies it rebuilds
    if shared_support(cfg):
        client = cfg["client"]
        # else privacy=secagg with a dense client: every coordinate shared
        topk = shared_topk(cfg)
        alpha, min_k = (
            (float(client["alpha"]), int(client.get("min_k", 1))) if topk else (1.0, 1)
        )
        logger.info(
            "shared-support uploads: SharedSupport(alpha=%s, secure=%s)",
            alpha,
            mode == "secagg",
        )
        strategy = SharedSupport(
            strategy,
            alpha=alpha,
            min_k=min_k,
            secure=mode == "secagg",
            seed=int(cfg.get("seed", 0)),
            key_timeout=float(cfg["simulation"]["round_timeout_s"]),
        )
    return strategy


def shared_topk(cfg: dict[str, Any]) -> bool:
    """Whether the client is ``client=shared_topk``."""
    return str((cfg.get("client") or {}).get("_target_", "")).endswith(
        ".SharedTopKClient"
    )


def shared_support(cfg: dict[str, Any]) -> bool:
    """Whether the run uploads shared-support vectors: ``client=shared_topk``, or
    ``privacy=secagg``
    with a dense client (wrapped in
    :class:`~bouquet.clients.shared_topk.SecureDenseClient`)."""
    return shared_topk(cfg) or privacy_mode(cfg) == "secagg"


def privacy_client_mods(cfg: dict[str, Any]) -> list[Any]:
    """``[secagg_key_mod]`` for ``client=shared_topk`` (answers the server's key query),
    else ``[]``."""
    return [secagg_key_mod] if shared_support(cfg) else []


def private_client(cfg: dict[str, Any], client: NumPyClient) -> NumPyClient:
    """``client`` clipping its update before its codec for ``privacy=dp_client``,
    uploading its whole update masked for ``privacy=secagg`` with a dense client, else
    ``client``."""
    if privacy_mode(cfg) == "secagg" and not shared_topk(cfg):
        return SecureDenseClient(client)
    if privacy_mode(cfg) != "dp_client":
        return client
    return PrivateClient(
        client, float(cfg["privacy"]["clip_norm"]), seed=int(cfg.get("seed", 0))
    )
