"""The ``privacy`` config group: central differential privacy around the configured strategy.

* ``privacy=none`` (default): nothing.
* ``privacy=dp_client``: every client clips its update to ``privacy.clip_norm`` *before* its
  codec sees it (:class:`~bouquet.clients.privacy.PrivateClient`); the server wraps the strategy
  in Flower's ``DifferentialPrivacyClientSideFixedClipping`` (Gaussian noise
  ``noise_multiplier * clip_norm / m`` on the mean of the ``m`` sampled clients) inside
  :class:`~bouquet.strategies.privacy.DPAccountant` (uniform weights, the bound enforced on the
  decoded updates, epsilon at ``privacy.delta``), all inside ``Compressed`` when the client
  compresses (:func:`wrap_privacy` runs before :func:`~bouquet.simulations.compression.wrap_compression`).
* ``privacy=dp_server``: the same with ``DifferentialPrivacyServerSideFixedClipping`` (the
  server clips the decoded updates; clients do nothing).
* ``privacy=secagg``: refused before start (see :mod:`bouquet.simulations.combinations`): Flower
  1.42's SecAgg+ exists only as the legacy ``SecAggPlusWorkflow`` + ``secaggplus_mod``, which drive
  ``aggregate_fit`` of ``flwr.server.strategy`` strategies, not bouquet's Message-API strategies.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.client import NumPyClient
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from bouquet.clients.privacy import PrivateClient
from bouquet.strategies.privacy import DPAccountant

logger = logging.getLogger(__name__)

MODES = ("none", "dp_client", "dp_server", "secagg")
DP_MODES = ("dp_client", "dp_server")


def privacy_mode(cfg: dict[str, Any]) -> str:
    """The configured privacy mode (``none`` when the group is absent)."""
    return str((cfg.get("privacy") or {}).get("name", "none"))


def sampled_clients(cfg: dict[str, Any], strategy: Any) -> int:
    """How many clients Flower's FedAvg samples each round: ``max(int(N * fraction_train), min_train_nodes)``."""
    n = int(cfg["simulation"]["num_clients"])
    fraction = float(getattr(strategy, "fraction_train", cfg["simulation"].get("fraction_train", 1.0)))
    return min(n, max(int(n * fraction), int(getattr(strategy, "min_train_nodes", 1) or 1)))


def wrap_privacy(cfg: dict[str, Any], exp: Any, strategy: Strategy) -> Strategy:
    """``DPAccountant(DifferentialPrivacy*SideFixedClipping(strategy, ...))`` for ``privacy=dp_*``, else ``strategy``."""
    mode = privacy_mode(cfg)
    if mode not in DP_MODES:
        return strategy
    p = cfg["privacy"]
    m = sampled_clients(cfg, strategy)
    wrapper = DifferentialPrivacyClientSideFixedClipping if mode == "dp_client" else DifferentialPrivacyServerSideFixedClipping
    dp = wrapper(strategy, noise_multiplier=float(p["noise_multiplier"]), clipping_norm=float(p["clip_norm"]),
                 num_sampled_clients=m)
    logger.info("privacy=%s: %s(z=%s, C=%s, m=%d) inside DPAccountant(N=%d, delta=%g)", mode, wrapper.__name__,
                p["noise_multiplier"], p["clip_norm"], m, int(cfg["simulation"]["num_clients"]), float(p["delta"]))
    return DPAccountant(dp, population_size=int(cfg["simulation"]["num_clients"]), delta=float(p["delta"]))


def private_client(cfg: dict[str, Any], client: NumPyClient) -> NumPyClient:
    """``client`` clipping its update before its codec for ``privacy=dp_client``, else ``client``."""
    if privacy_mode(cfg) != "dp_client":
        return client
    return PrivateClient(client, float(cfg["privacy"]["clip_norm"]), seed=int(cfg.get("seed", 0)))


# ------------------------------------------------------------------ refused combinations
# Registered in bouquet.simulations.combinations.COMBINATIONS (imported at its end).
from bouquet.simulations.combinations import _both, combination  # noqa: E402
from bouquet.simulations.validate import Options  # noqa: E402

PER_CLIENT_POSITIONS = ("topk", "stc", "ternary")  # codecs whose kept positions differ from client to client
DP_STRATEGIES = ("fedavg", "fedprox")  # a synchronous (unweighted) mean: what the DP noise is calibrated to


@combination("privacy=secagg")
def _secagg(cfg: dict[str, Any], opt: Options) -> str | None:
    """Secure aggregation sums vectors laid out the same way on every client (a shared-support codec,
    client=shared_topk, not per-client top-k/STC/ternary positions); Flower 1.42's SecAgg+ runs only
    as the legacy SecAggPlusWorkflow, not with bouquet's Message-API strategies: refused for now."""
    if opt.get("privacy", "none") != "secagg":
        return None
    client = opt["client"]
    if client in PER_CLIENT_POSITIONS:
        return _both("privacy=secagg", f"client={client}", f"secure aggregation sums vectors laid out the same way on every "
                     f"client, and client={client} sends each client's own positions; use a shared-support codec, "
                     "client=shared_topk (not built yet: issue 34)")
    return ("privacy=secagg is not available: Flower 1.42's SecAgg+ is the legacy SecAggPlusWorkflow + secaggplus_mod, "
            "which drives flwr.server.strategy strategies (aggregate_fit), not bouquet's Message-API strategies "
            "(see docs/privacy.md); use privacy=dp_client or privacy=dp_server")


@combination("privacy=dp_client|dp_server + strategy, client")
def _dp(cfg: dict[str, Any], opt: Options) -> str | None:
    """Central DP noise is calibrated to an unweighted mean of synchronous rounds: strategy=fedavg|fedprox,
    with an image-classification client (not early-exit sub-models or recommendation)."""
    mode = opt.get("privacy", "none")
    if mode not in DP_MODES:
        return None
    if opt["strategy"] not in DP_STRATEGIES:
        return _both(f"privacy={mode}", f"strategy={opt['strategy']}", "the DP noise is calibrated to the mean of one "
                     f"synchronous round's updates: strategy={'|'.join(DP_STRATEGIES)}")
    if opt["client"] in ("early_exit", "recsys"):
        return _both(f"privacy={mode}", f"client={opt['client']}", "central DP is built and tested for "
                     "image-classification clients (plain|topk|stc|ternary|slow)")
    return None
