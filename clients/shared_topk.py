"""``client=shared_topk``: upload the update at the server's shared coordinates, masked
for secure aggregation.

:class:`SharedTopKClient` trains like
:class:`~bouquet.clients.torch_client.TorchClient`, then uploads one dense vector: its
update plus error-feedback residual at the :math:`k` coordinates the server chose for
the round (:mod:`bouquet.codecs.shared_topk`), float32; or, when the train config lists
the round's peers and their public keys (``privacy=secagg``), in fixed point modulo
:math:`2^{32}` plus pairwise masks that cancel only in the sum of all peers. The
residual stays in ``context.state`` (never sent). :func:`secagg_key_mod` answers the
server's key query with a fresh X25519 public key per round, its private half kept in
``context.state``. Pair with :class:`bouquet.strategies.privacy_secagg.SharedSupport` on
the server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import RecordDict
from flwr.client import NumPyClient
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import NDArrays
from flwr.common.logger import log

from bouquet import keys
from bouquet.clients.bridge import Arrays
from bouquet.clients.bridge import EvaluateResult
from bouquet.clients.bridge import FitResult
from bouquet.clients.bridge import single_record
from bouquet.clients.torch_client import TorchClient
from bouquet.codecs.shared_topk import KEY_BYTES
from bouquet.codecs.shared_topk import from_fixed
from bouquet.codecs.shared_topk import mask
from bouquet.codecs.shared_topk import new_keypair
from bouquet.codecs.shared_topk import shared_indices
from bouquet.codecs.shared_topk import shared_k
from bouquet.codecs.shared_topk import to_fixed

RESIDUAL = "shared-ef-residual"  # context.state: flat error-feedback residual
SECRET = "bouquet-secagg"  # context.state: {"round", "sk"}


def secagg_key_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Answer the server's secure-aggregation key query (other messages pass
    through)."""
    if msg.metadata.message_type != MessageType.QUERY:
        return call_next(msg, context)
    config = single_record(msg.content, "config", keys.CONFIG)
    if keys.SECAGG_QUERY not in config:
        return call_next(msg, context)
    server_round = config[keys.SECAGG_QUERY]
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        raise ValueError(f"{keys.SECAGG_QUERY}={server_round!r} is not a round number")
    private, public = new_keypair()
    context.state[SECRET] = ConfigRecord({"round": server_round, "sk": private})
    return Message(
        RecordDict({keys.CONFIG: ConfigRecord({keys.SECAGG_PUBLIC: public})}),
        reply_to=msg,
    )


class SharedEncoding:
    """The reply encoder of shared-support uploads (see module docstring); the class
    using it has ``alpha``, ``min_k``, ``residual_decay``, ``train_config`` (the last
    train config) and ``context``."""

    alpha: float
    min_k: int
    residual_decay: float
    train_config: dict[str, Any]
    context: Context | None

    def encode_train_reply(
        self, names: Sequence[str], received: Arrays, returned: Arrays
    ) -> ArrayRecord:
        """The shared vector (float32, or masked uint32 under secure aggregation)."""
        cfg = self.train_config
        if keys.SHARED_SEED not in cfg or keys.SHARED_K not in cfg:
            raise ValueError(
                f"client=shared_topk needs the server's {keys.SHARED_SEED} and "
                f"{keys.SHARED_K} in the train config: "
                "pair it with SharedSupport on the server"
            )
        server_round, k = int(cfg.get(keys.SERVER_ROUND, 1)), int(cfg[keys.SHARED_K])
        parts = []
        for name, g, r in zip(names, received, returned, strict=True):
            g, r = np.asarray(g), np.asarray(r)
            if g.dtype.kind != "f":
                if not np.array_equal(g, r):
                    log(
                        logging.WARNING,
                        "shared_topk: tensor %r is not floating point; its update is "
                        "not sent",
                        name,
                    )
                continue
            parts.append(np.subtract(r, g, dtype=np.float64).ravel())
        a = np.concatenate(parts) if parts else np.zeros(0)
        if not np.all(np.isfinite(a)):
            raise ValueError("the update is not finite: not uploaded")
        state = self.context.state if self.context is not None else None
        if (
            state is not None
            and self.residual_decay > 0
            and RESIDUAL in state.array_records
        ):
            e = state.array_records[RESIDUAL]["e"].numpy()
            if e.shape == a.shape:
                a += self.residual_decay * e
        if k != shared_k(a.size, self.alpha, self.min_k):
            raise ValueError(
                f"the server asks for {k} shared values, this client's "
                f"alpha={self.alpha}, min_k={self.min_k} "
                f"give {shared_k(a.size, self.alpha, self.min_k)}: configure both alike"
            )
        idx = shared_indices(a.size, k, int(cfg[keys.SHARED_SEED]), server_round)
        values = a[idx]
        if keys.SECAGG_PEERS in cfg:
            out, sent = self._masked(values, cfg, server_round, state)
        else:
            out = values.astype(np.float32)
            sent = out.astype(np.float64)
        a[idx] = values - sent  # what was not sent waits in the residual
        if state is not None and self.residual_decay > 0:
            state[RESIDUAL] = ArrayRecord({"e": Array(a)})
        return ArrayRecord({keys.SHARED_ARRAY: Array(out)})

    def _masked(
        self,
        values: np.ndarray,
        cfg: dict[str, Any],
        server_round: int,
        state: RecordDict | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        peers, publics = (
            list(cfg[keys.SECAGG_PEERS]),
            list(cfg.get(keys.SECAGG_PUBLIC, [])),
        )
        node = int(self.context.node_id) if self.context is not None else -1
        if (
            len(peers) != len(publics)
            or node not in peers
            or any(len(p) != KEY_BYTES for p in publics)
        ):
            raise ValueError(
                f"secure aggregation: {len(peers)} peers, {len(publics)} keys, this "
                f"node {node} "
                f"{'listed' if node in peers else 'not listed'}: not uploaded"
            )
        secret = state.config_records.get(SECRET) if state is not None else None
        if secret is None or secret.get("round") != server_round:
            raise ValueError(
                f"secure aggregation: no key of round {server_round} in "
                "context.state (the key query "
                "was not answered by secagg_key_mod on this node)"
            )
        fixed, clipped = to_fixed(values, len(peers))
        if clipped:
            log(
                logging.WARNING,
                "shared_topk: %d values beyond the fixed-point range were clipped "
                "(kept in the residual)",
                clipped,
            )
        masked = fixed + mask(
            node,
            _raw(secret["sk"]),
            dict(zip(peers, publics, strict=True)),
            values.size,
            server_round,
        )
        return masked, from_fixed(fixed)


class SharedTopKClient(SharedEncoding, TorchClient):
    """A :class:`TorchClient` uploading its update at the server's shared coordinates
    (see module docstring).

    Parameters
    ----------
    alpha, min_k : float, int
        The fraction (and least number) of coordinates the server was configured with
        (``SharedSupport(alpha=..., min_k=...)``); the server picks and sends them, the
        client refuses a round whose size differs (client and server configured
        differently).
    residual_decay : float
        :math:`\\beta` of the error feedback (1 classic, 0 off), in [0, 1].
    **kwargs
        :class:`TorchClient` arguments.
    """

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.01,
        min_k: int = 1,
        residual_decay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(residual_decay, bool) or not (
            0.0 <= float(residual_decay) <= 1.0
        ):
            raise ValueError(f"residual_decay={residual_decay!r} must be in [0, 1]")
        shared_k(1, alpha, min_k)  # checks alpha and min_k
        self.alpha, self.min_k = float(alpha), int(min_k)
        self.residual_decay = float(residual_decay)
        self.train_config: dict[str, Any] = {}

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        self.train_config = dict(config)
        return super().fit(parameters, config)


class SecureDenseClient(SharedEncoding, NumPyClient):
    """Any NumPyClient whose whole update is uploaded for secure aggregation
    (``privacy=secagg`` with
    ``client=plain``: every coordinate shared, masked; no error feedback).

    Parameters
    ----------
    client : flwr.client.NumPyClient
        The client to wrap (its ``fit``, ``evaluate`` and ``context`` are used).
    """

    def __init__(self, client: NumPyClient) -> None:
        if not isinstance(client, NumPyClient) or isinstance(client, SharedEncoding):
            raise ValueError(
                "client must be a NumPyClient that does not share-encode already, "
                f"got {type(client).__name__}"
            )
        self.inner = client
        self.alpha, self.min_k, self.residual_decay = 1.0, 1, 0.0
        self.train_config = {}

    @property  # type: ignore[override]
    def context(self) -> Context | None:
        return getattr(self.inner, "context", None)

    @context.setter
    def context(self, value: Context | None) -> None:
        if hasattr(self.inner, "context"):
            self.inner.context = value

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return self.inner.get_parameters(config)  # type: ignore[arg-type]

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        self.train_config = dict(config)
        return self.inner.fit(parameters, config)  # type: ignore[arg-type,return-value]

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]) -> EvaluateResult:
        return self.inner.evaluate(parameters, config)  # type: ignore[arg-type,return-value]


def _raw(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("the secure-aggregation key in context.state is not bytes")
    return value
