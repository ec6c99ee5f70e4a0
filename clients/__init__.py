"""bouquet.clients: NumPyClient subclasses, client mods and the ClientApp bridge."""

from bouquet.clients.bridge import (
    ReplyEncoder,
    dense_arrayrecord,
    numpyclient_app,
    single_record,
)
from bouquet.clients.compressed import (
    CompressingClient,
    STCClient,
    TernaryClient,
    TopKClient,
    compression_mod,
)
from bouquet.clients.downlink import DownlinkMod, downlink_mod
from bouquet.clients.early_exit import EarlyExitClient
from bouquet.clients.faults import fault_mod
from bouquet.clients.recsys_client import RecsysClient
from bouquet.clients.slow import SlowClient, speed_factors
from bouquet.clients.staleness import staleness_window_mod
from bouquet.clients.torch_client import TorchClient

__all__ = [
    "CompressingClient",
    "EarlyExitClient",
    "RecsysClient",
    "ReplyEncoder",
    "STCClient",
    "SlowClient",
    "TernaryClient",
    "TopKClient",
    "TorchClient",
    "compression_mod",
    "dense_arrayrecord",
    "DownlinkMod",
    "downlink_mod",
    "fault_mod",
    "numpyclient_app",
    "single_record",
    "speed_factors",
    "staleness_window_mod",
]
