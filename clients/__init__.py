"""bouquet.clients: NumPyClient subclasses, client mods and the ClientApp bridge."""

from bouquet.clients.bridge import ReplyEncoder, dense_arrayrecord, numpyclient_app, single_record
from bouquet.clients.torch_client import TorchClient

__all__ = ["ReplyEncoder", "TorchClient", "dense_arrayrecord", "numpyclient_app", "single_record"]
