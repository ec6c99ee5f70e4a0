"""bouquet.clients: NumPyClient subclasses, client mods and the ClientApp bridge."""

from bouquet.clients.bridge import ReplyEncoder
from bouquet.clients.bridge import dense_arrayrecord
from bouquet.clients.bridge import numpyclient_app
from bouquet.clients.bridge import single_record
from bouquet.clients.compressed import CompressingClient
from bouquet.clients.compressed import STCClient
from bouquet.clients.compressed import TernaryClient
from bouquet.clients.compressed import TopKClient
from bouquet.clients.compressed import compression_mod
from bouquet.clients.downlink import DownlinkMod
from bouquet.clients.downlink import downlink_mod
from bouquet.clients.early_exit import EarlyExitClient
from bouquet.clients.faults import fault_mod
from bouquet.clients.recsys_client import RecsysClient
from bouquet.clients.slow import SlowClient
from bouquet.clients.slow import speed_factors
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
