"""Clipping (and optional local Gaussian noise) of a client's update, before it is
compressed.

Differential privacy of federated averaging (DP-FedAvg, McMahan et al. 2018,
arXiv:1710.06963) bounds each client's contribution by clipping its update
:math:`u = w_{\\text{local}} - w_{\\text{received}}` to an L2 norm :math:`C`,

.. math::

    \\tilde u = u \\cdot \\min\\left(1, \\frac{C}{\\lVert u \\rVert_2}\\right), \\qquad
    \\hat u = \\tilde u + \\mathcal N(0, (z C)^2 I) \\quad \\text{(local noise,
        optional)},

and the noise (on the server for central DP, here for local DP) is scaled to :math:`C`.
A codec must see :math:`\\hat u`, never the other way round: compressed bytes have no
norm, and compressing first would let the codec's choices (which coordinates, which
scale) depend on the unclipped update. Two ways to put the step before the codec:

* :func:`dp_clip_mod`, a Message-API client mod for any ClientApp; list it *after*
  (inside) ``compression_mod``: ``mods=[compression_mod("stc", alpha=0.01),
  dp_clip_mod(1.0)]`` (mods run outermost first on the way in, innermost first on the
  way out). Placed outside, it sees a compressed reply and raises, naming that order;
* :class:`PrivateClient`, for a NumPyClient that compresses its own reply
  (:class:`~bouquet.clients.compressed.CompressingClient`: no mod can reach between its
  training and its encoder): it clips (and noises) the returned weights, then hands them
  to the client's own encoder.

The norm covers every floating-point tensor (normalisation statistics too: they come
from the client's data); the update of an integer tensor (a batch counter) is not sent
(set to zero, logged once at WARNING), since it cannot be clipped or noised. Our
reading: Flower's ``fixedclipping_mod`` clips every tensor alike; integer counters are
rare and carry no learning. With error feedback the codec sends :math:`C(\\hat u + e)`,
whose norm can exceed :math:`C`: the server-side
:class:`~bouquet.strategies.privacy.DPAccountant` enforces the bound on what arrives
(see docs/privacy.md).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.client import NumPyClient
from flwr.clientapp.typing import ClientAppCallable  # Flower's own client-mod type
from flwr.clientapp.typing import Mod  # Flower's own client-mod type
from flwr.common import NDArrays
from flwr.common.logger import log

from bouquet import keys
from bouquet.checks import require_number
from bouquet.clients.bridge import Arrays
from bouquet.clients.bridge import EvaluateResult
from bouquet.clients.bridge import FitResult
from bouquet.clients.bridge import ReplyEncoder
from bouquet.clients.bridge import dense_arrayrecord
from bouquet.clients.bridge import received_arrays
from bouquet.clients.bridge import reply_update
from bouquet.clients.bridge import single_record
from bouquet.codecs import is_bouquet_stype

# the key Flower's DifferentialPrivacyClientSide* wrappers put in the train config
KEY_CLIPPING_NORM = "clipping_norm"
ORDER_HINT = (
    "list dp_clip_mod after compression_mod (inner), e.g. "
    "mods=[compression_mod('stc', alpha=0.01), "
    "dp_clip_mod(clip_norm=1.0)], so the update is clipped before it is compressed"
)
_warned: set[str] = set()


def check_dp_options(clip_norm: float | None, noise_multiplier: float) -> None:
    """``ValueError`` naming a clip norm that is not finite and > 0 or a noise
    multiplier that is
    not finite and >= 0."""
    if clip_norm is not None:
        require_number(clip_norm, "clip_norm", "(0, inf)")
    require_number(noise_multiplier, "noise_multiplier", "[0, inf)")


def clip_update(
    names: Sequence[str],
    received: Arrays,
    returned: Arrays,
    clip_norm: float,
    *,
    noise_multiplier: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[list[np.ndarray], float]:
    """``received + clip(returned - received)`` (+ local noise), and the update's norm
    before clipping.

    Parameters
    ----------
    names, received, returned : sequences
        Tensor names, the arrays the server sent, the arrays training returned (same
        shapes).
    clip_norm : float
        :math:`C`, the L2 bound of the update over all floating-point tensors.
    noise_multiplier : float
        :math:`z`: Gaussian noise of standard deviation :math:`z C` added to every
        element of the clipped update (0: none).
    rng : numpy.random.Generator, optional
        Source of the noise (required when ``noise_multiplier`` > 0).

    Returns
    -------
    (list of numpy.ndarray, float)
        Arrays in the dtypes the server sent, and :math:`\\lVert u \\rVert_2`.

    Raises
    ------
    ValueError
        For bad options, mismatched shapes or a non-finite update (nothing is sent).
    """
    check_dp_options(clip_norm, noise_multiplier)
    if noise_multiplier > 0 and rng is None:
        raise ValueError("noise_multiplier > 0 needs an rng")
    updates: list[np.ndarray | None] = []
    total = 0.0
    for name, g, r in zip(names, received, returned, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape:
            raise ValueError(
                f"tensor {name!r}: returned shape {r.shape} differs from the "
                f"received {g.shape}"
            )
        if g.dtype.kind != "f":
            if not np.array_equal(g, r) and name not in _warned:
                _warned.add(name)
                log(
                    logging.WARNING,
                    "dp clipping: tensor %r is not floating point (%s); its update "
                    "is not sent",
                    name,
                    g.dtype,
                )
            updates.append(None)
            continue
        u = np.subtract(r, g, dtype=np.float64)
        total += float(np.dot(u.ravel(), u.ravel()))
        updates.append(u)
    norm = float(np.sqrt(total))
    if not np.isfinite(norm):
        raise ValueError("the update is not finite: not uploaded")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = []
    for g, step in zip(received, updates, strict=True):
        g = np.asarray(g)
        if step is None:
            out.append(np.array(g, copy=True))
            continue
        step *= scale
        if noise_multiplier > 0:
            step += rng.normal(0.0, noise_multiplier * clip_norm, size=step.shape)  # type: ignore[union-attr]
        out.append((g.astype(np.float64) + step).astype(g.dtype))
    return out, norm


def dp_clip_mod(
    clip_norm: float | None = None,
    *not_options: Any,
    noise_multiplier: float = 0.0,
    seed: int = 0,
) -> Mod:
    """A Message-API client mod clipping (and optionally noising) the train reply's
    update.

    Parameters
    ----------
    clip_norm : float or None
        :math:`C`. None: the server's value, sent by Flower's
        ``DifferentialPrivacyClientSideFixedClipping`` in the train config
        (``clipping_norm``); a value given here and a different one from the server is
        an error (the server's noise is scaled to its own).
    noise_multiplier : float
        :math:`z` of local Gaussian noise (standard deviation :math:`z C`; 0: clipping
        only, the server adds the noise).
    seed : int
        Seed of the noise (mixed with node id and round).

    Returns
    -------
    callable
        ``mod(msg, context, call_next) -> Message``; only train messages are touched.
        List it after ``compression_mod`` (inner); a compressed reply raises
        ``ValueError`` naming that order.
    """
    if isinstance(clip_norm, Message) or not_options:
        raise TypeError(
            "dp_clip_mod builds a mod: write mods=[dp_clip_mod(clip_norm=1.0)] "
            "(called, options by "
            "keyword), not mods=[dp_clip_mod]"
        )
    check_dp_options(clip_norm, noise_multiplier)

    def _mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        config = single_record(msg.content, "config", keys.CONFIG)
        bound = _bound(clip_norm, config.get(KEY_CLIPPING_NORM))
        sent = single_record(msg.content, "array", keys.ARRAYS)
        if any(is_bouquet_stype(a.stype) for a in sent.values()):
            raise ValueError(
                "dp_clip_mod received compressed arrays: a compressed broadcast must "
                "be rebuilt first "
                "(list downlink_mod before dp_clip_mod)"
            )
        received = received_arrays(msg)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        rec_key, record, names, compressed = reply_update(reply, received)
        if compressed:
            raise ValueError(
                f"dp_clip_mod got an already compressed reply: {ORDER_HINT}"
            )
        server_round = int(config.get(keys.SERVER_ROUND, 1))
        rng = np.random.default_rng(
            [seed, int(context.node_id) % 2**32, server_round, 29]
        )
        out, norm = clip_update(
            names,
            [received[n] for n in names],
            [record[n].numpy() for n in names],
            bound,
            noise_multiplier=noise_multiplier,
            rng=rng,
        )
        log(
            logging.DEBUG,
            "dp_clip_mod: update norm %.4g clipped to %.4g%s",
            norm,
            bound,
            f", local noise std {noise_multiplier * bound:.4g}"
            if noise_multiplier > 0
            else "",
        )
        reply.content[rec_key] = ArrayRecord(
            OrderedDict((n, Array(a)) for n, a in zip(names, out, strict=True))
        )
        return reply

    return _mod


def _bound(own: float | None, server: Any) -> float:
    """The clip norm to use: this mod's, the server's, or ``ValueError`` if neither or
    they differ."""
    if server is not None:
        if (
            isinstance(server, bool)
            or not isinstance(server, (int, float))
            or not (np.isfinite(server) and server > 0)
        ):
            raise ValueError(
                f"the server's {KEY_CLIPPING_NORM}={server!r} is not a finite number "
                "> 0"
            )
        if own is not None and not np.isclose(
            float(own), float(server), rtol=1e-9, atol=0.0
        ):
            raise ValueError(
                f"dp_clip_mod(clip_norm={own}) differs from the server's "
                f"{KEY_CLIPPING_NORM}={server}: the "
                "server scales its noise to its own bound; give the same value, or "
                "clip_norm=None"
            )
        return float(server)
    if own is None:
        raise ValueError(
            f"dp_clip_mod(clip_norm=None) needs the server's {KEY_CLIPPING_NORM} in "
            "the train config "
            "(DifferentialPrivacyClientSideFixedClipping sends it); none came"
        )
    return float(own)


class PrivateClient(NumPyClient):
    """A NumPyClient whose returned weights are clipped (and noised) before its reply is
    encoded.

    Wraps any NumPyClient for :func:`bouquet.clients.numpyclient_app`. A client with its
    own encoder (:class:`~bouquet.clients.bridge.ReplyEncoder`, e.g. ``STCClient``) gets
    the clipped weights, so its codec and error feedback see the clipped update; other
    clients reply dense.

    Parameters
    ----------
    client : flwr.client.NumPyClient
        The client to wrap (its ``fit``, ``evaluate``, ``context`` and ``capacity`` are
        used).
    clip_norm : float
        :math:`C`.
    noise_multiplier : float
        :math:`z` of local noise (0: none).
    seed : int
        Seed of the noise (mixed with the round).
    """

    def __init__(
        self,
        client: NumPyClient,
        clip_norm: float,
        *,
        noise_multiplier: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(client, NumPyClient) or isinstance(client, PrivateClient):
            raise ValueError(
                "client must be a NumPyClient not already wrapped, got "
                f"{type(client).__name__}"
            )
        check_dp_options(clip_norm, noise_multiplier)
        self.inner = client
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.seed = int(seed)
        self.server_round = 1
        self.last_norm: float | None = None

    @property
    def context(self) -> Context | None:
        return getattr(self.inner, "context", None)

    @context.setter
    def context(self, value: Context) -> None:
        if hasattr(self.inner, "context"):
            self.inner.context = value

    def capacity(self) -> int:
        """The inner client's capacity, else the node's ``max-depth`` (what the bridge
        reads without a wrapper)."""
        cap = getattr(self.inner, "capacity", None)
        if callable(cap):
            return int(cap())
        context = self.context
        return (
            int(context.node_config.get(keys.MAX_DEPTH, 0))
            if context is not None
            else 0
        )

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return self.inner.get_parameters(config)  # type: ignore[arg-type]

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        self.server_round = int(config.get(keys.SERVER_ROUND, 1))
        return self.inner.fit(parameters, config)  # type: ignore[arg-type,return-value]

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]) -> EvaluateResult:
        return self.inner.evaluate(parameters, config)  # type: ignore[arg-type,return-value]

    def encode_train_reply(
        self, names: Sequence[str], received: Arrays, returned: Arrays
    ) -> ArrayRecord:
        """Clip (and noise) ``returned - received``, then the inner client's encoder (or
        dense arrays)."""
        node = int(self.context.node_id) if self.context is not None else 0
        rng = np.random.default_rng([self.seed, node % 2**32, self.server_round, 29])
        clipped, self.last_norm = clip_update(
            names,
            received,
            returned,
            self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            rng=rng,
        )
        if isinstance(self.inner, ReplyEncoder):
            return self.inner.encode_train_reply(names, received, clipped)
        return dense_arrayrecord(names, clipped)
