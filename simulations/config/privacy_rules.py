"""The ``privacy`` group's refused combinations (tried after those of
:mod:`bouquet.simulations.config.combinations`)."""

from __future__ import annotations

from typing import Any

from bouquet.codecs.catalog import PER_CLIENT_POSITIONS
from bouquet.simulations.config.checks import Options
from bouquet.simulations.config.rules import NON_IMAGE_CLIENTS
from bouquet.simulations.config.rules import Rules
from bouquet.simulations.config.rules import both
from bouquet.simulations.config.rules import sync_image_only

DP_MODES = ("dp_client", "dp_server")
RULES = Rules()
# a synchronous (unweighted) mean: what the DP noise is calibrated to
DP_STRATEGIES = ("fedavg", "fedprox")


@RULES("privacy=secagg <-> client=shared_topk")
def _secagg(cfg: dict[str, Any], opt: Options) -> str | None:
    """Secure aggregation sums vectors laid out the same way on every client:
    privacy=secagg takes client=shared_topk (or a dense client=plain|slow), not
    per-client top-k/STC/ternary positions; shared-support uploads serve
    strategy=fedavg|fedprox with a dense broadcast."""
    mode, client = opt.get("privacy", "none"), opt["client"]
    if mode == "secagg" and client in PER_CLIENT_POSITIONS:
        return both(
            "privacy=secagg",
            f"client={client}",
            "secure aggregation sums vectors laid out the same way on "
            f"every client, and client={client} sends each client's own positions; "
            "use the shared-support "
            "codec client=shared_topk (or client=plain: dense secure aggregation)",
        )
    if mode == "secagg" and client in NON_IMAGE_CLIENTS:
        return both(
            "privacy=secagg",
            f"client={client}",
            "secure aggregation is built for image-classification "
            "clients (shared_topk|plain|slow)",
        )
    if client != "shared_topk" and mode != "secagg":
        return None
    what = "client=shared_topk" if client == "shared_topk" else "privacy=secagg"
    if opt["strategy"] not in DP_STRATEGIES:
        return both(
            what,
            f"strategy={opt['strategy']}",
            "shared-support uploads serve one synchronous round's mean: "
            f"strategy={'|'.join(DP_STRATEGIES)}",
        )
    if opt.get("downlink", "none") != "none":
        return both(
            what,
            f"downlink={opt['downlink']}",
            "shared-support uploads are built and tested with the dense "
            "broadcast (downlink=none)",
        )
    return None


@RULES("privacy=dp_client|dp_server + strategy, client")
def _dp(cfg: dict[str, Any], opt: Options) -> str | None:
    """Central DP noise is calibrated to an unweighted mean of synchronous rounds:
    strategy=fedavg|fedprox,
    with an image-classification client (not early-exit sub-models or
    recommendation)."""
    mode = opt.get("privacy", "none")
    if mode not in DP_MODES:
        return None
    return sync_image_only(
        f"privacy={mode}",
        opt,
        DP_STRATEGIES,
        "the DP noise is calibrated to the mean of one synchronous round's updates",
        "central DP",
    )
