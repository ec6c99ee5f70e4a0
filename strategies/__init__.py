"""bouquet.strategies: Flower Message-API strategies and strategy wrappers (no
torch)."""

from bouquet.strategies.async_fedavg import AsyncFedAvg
from bouquet.strategies.compressed import Compressed
from bouquet.strategies.dense_checks import check_dense_reply
from bouquet.strategies.depth_fedavg import DepthFedAvg
from bouquet.strategies.downlink import CompressedDownlink
from bouquet.strategies.guard import ReplyGuard
from bouquet.strategies.kl_weighted import KLWeightedFedAvg
from bouquet.strategies.metrics import scalar_metrics_mean
from bouquet.strategies.reports import inner_report
from bouquet.strategies.reports import merge_reports
from bouquet.strategies.round_offset import RoundOffset
from bouquet.strategies.server_adjusted import ServerAdjusted
from bouquet.strategies.server_momentum import ServerMomentum
from bouquet.strategies.wrapper import StrategyWrapper

__all__ = [
    "scalar_metrics_mean",
    "AsyncFedAvg",
    "Compressed",
    "CompressedDownlink",
    "DepthFedAvg",
    "KLWeightedFedAvg",
    "ReplyGuard",
    "RoundOffset",
    "ServerAdjusted",
    "ServerMomentum",
    "StrategyWrapper",
    "check_dense_reply",
    "inner_report",
    "merge_reports",
]
