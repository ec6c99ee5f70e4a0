"""bouquet.clients: NumPyClient subclasses, client mods and the ClientApp bridge."""

from bouquet.clients.bridge import ReplyEncoder, dense_arrayrecord, numpyclient_app, single_record
from bouquet.clients.compressed import (
    CompressingClient,
    STCClient,
    TernaryClient,
    TopKClient,
    compression_mod,
)
from bouquet.clients.slow import SlowClient, speed_factors
from bouquet.clients.torch_client import TorchClient

__all__ = ["CompressingClient", "STCClient", "TernaryClient", "TopKClient", "compression_mod", "ReplyEncoder", "SlowClient", "TorchClient", "dense_arrayrecord", "numpyclient_app", "single_record", "speed_factors"]
