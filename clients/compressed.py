"""Clients and a client mod that upload compressed updates (methods S1 and S5).

A compressing client trains like :class:`~bouquet.clients.torch_client.TorchClient`,
then uploads the update :math:`u = w_{\\text{local}} - w_{\\text{received}}` of every
tensor encoded by a compressor of :mod:`bouquet.codecs` (top-k with error feedback, Lin
et al. 2018; TernGrad, Wen et al. 2017; sparse ternary compression, Sattler et al.
2019), through the bridge hook ``encode_train_reply``. The error-feedback residual

.. math::

    e_t = (u_t + \\beta e_{t-1}) - C(u_t + \\beta e_{t-1})

is kept in the node's ``context.state`` (an ``ArrayRecord`` under ``keys.EF_RESIDUAL``),
so it survives across rounds on that node and is never sent. The round index of the
top-k schedule (and of its density warm-up) comes from the train config's
``server-round``. With DGC's momentum correction (``momentum_correction`` > 0, Lin et
al. 2018; see :mod:`bouquet.codecs.compressor`) the masked momentum :math:`u_t` is kept
next to it, under ``keys.DGC_MOMENTUM``, on the same terms.

:func:`compression_mod` does the same for the train reply of *any* Message-API ClientApp
(a Flower client mod): it compresses the reply's arrays against the arrays of the
instruction. Pair either with :class:`bouquet.strategies.Compressed` on the server.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from typing import ClassVar
from typing import Protocol

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import RecordDict
from flwr.clientapp.typing import ClientAppCallable  # Flower's own client-mod type
from flwr.clientapp.typing import Mod  # Flower's own client-mod type
from flwr.common import NDArrays

from bouquet import keys
from bouquet.clients.bridge import Arrays
from bouquet.clients.bridge import FitResult
from bouquet.clients.bridge import received_arrays
from bouquet.clients.bridge import reply_update
from bouquet.clients.bridge import single_record
from bouquet.clients.torch_client import TorchClient
from bouquet.codecs import Encoded
from bouquet.codecs import UpdateCompressor
from bouquet.codecs import codec_options
from bouquet.codecs import make_compressor
from bouquet.codecs.compressor import is_statistic

logger = logging.getLogger(__name__)


def encoded_arrayrecord(
    names: Sequence[str], encoded: Sequence[Encoded]
) -> ArrayRecord:
    """An ``ArrayRecord`` of encoded tensors (``Array(dtype, shape, stype, data)``)."""
    return ArrayRecord(
        OrderedDict(
            (n, Array(dtype=e.dtype, shape=tuple(e.shape), stype=e.stype, data=e.data))
            for n, e in zip(names, encoded, strict=True)
        )
    )


def load_residuals(
    state: RecordDict | None,
    names: Sequence[str],
    updates: Sequence[np.ndarray],
    key: str,
) -> list[np.ndarray] | None:
    """Residuals (or DGC momenta) stored under ``key`` in ``state`` if they match
    ``names`` and
    shapes, else None."""
    if state is None or key not in state.array_records:
        return None
    record = state.array_records[key]
    if list(record.keys()) != list(names):
        logger.warning(
            "residual in context.state[%r] has other tensors; starting from zero", key
        )
        return None
    residuals = [record[n].numpy() for n in names]
    if any(r.shape != u.shape for r, u in zip(residuals, updates, strict=True)):
        logger.warning(
            "residual in context.state[%r] has other shapes; starting from zero", key
        )
        return None
    return residuals


def compress_update(
    compressor: UpdateCompressor,
    names: Sequence[str],
    received: Arrays,
    returned: Arrays,
    *,
    state: RecordDict | None,
    server_round: int,
    rng: np.random.Generator,
    state_key: str = keys.EF_RESIDUAL,
    momentum_key: str = keys.DGC_MOMENTUM,
) -> ArrayRecord:
    """Encode ``returned - received`` with error feedback kept in ``state[state_key]``
    (and, with
    momentum correction, the masked momentum in ``state[momentum_key]``).

    The update has the dtype of the array the server sent (the server checks it), so an
    integer buffer returned against a float64 global (Flower's FedAvg averages integers
    in float64) is converted first. A non-finite update raises ``ValueError`` (the
    ClientApp replies with an error) before the residual (or momentum) in ``state`` is
    touched.
    """
    updates = []
    for name, g, r in zip(names, received, returned, strict=True):
        g, r = np.asarray(g), np.asarray(r)
        converted = r.astype(g.dtype, copy=False)
        if (
            g.dtype.kind == "f"
            and r.dtype.kind == "f"
            and np.isfinite(r.sum())
            and not np.isfinite(converted.sum())
        ):
            raise ValueError(
                f"tensor {name!r} overflows {g.dtype} when converted from {r.dtype}: "
                "not uploaded"
            )
        updates.append(np.subtract(converted, g, dtype=g.dtype))
    residuals = (
        load_residuals(state, names, updates, state_key)
        if compressor.residual_decay > 0
        else None
    )
    momenta = (
        load_residuals(state, names, updates, momentum_key)
        if compressor.momentum_correction > 0
        else None
    )
    exact = [is_statistic(n) for n in names]
    out = compressor.compress_stateful(
        updates,
        residuals,
        momenta,
        server_round=server_round,
        rng=rng,
        inplace=True,
        exact=exact,
    )
    for key, kept, what in (
        (state_key, out.residuals, "error-feedback residual"),
        (momentum_key, out.momenta, "DGC momentum"),
    ):
        if kept is None:
            continue
        if state is None:
            logger.warning("no context.state: the %s is not kept", what)
            continue
        state[key] = ArrayRecord(
            OrderedDict(
                (n, Array(np.asarray(r))) for n, r in zip(names, kept, strict=True)
            )
        )
    return encoded_arrayrecord(names, out.payloads)


class CompressingNode(Protocol):
    """What :func:`compress_for` reads of a client."""

    @property
    def compressor(self) -> UpdateCompressor | None: ...
    @property
    def context(self) -> Context | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def server_round(self) -> int: ...


def compress_for(
    client: CompressingNode, names: Sequence[str], received: Arrays, returned: Arrays
) -> ArrayRecord:
    """:func:`compress_update` with ``client``'s compressor, its ``context.state`` for
    the residual and an rng of its seed and the round."""
    if client.compressor is None:
        raise ValueError("compress_for needs a client with a compressor")
    state = client.context.state if client.context is not None else None
    rng = np.random.default_rng([client.seed, client.server_round, 17])
    return compress_update(
        client.compressor,
        names,
        received,
        returned,
        state=state,
        server_round=client.server_round,
        rng=rng,
    )


class CompressingClient(TorchClient):
    """A :class:`TorchClient` uploading its update encoded by ``compressor``.

    Parameters
    ----------
    compressor : bouquet.codecs.UpdateCompressor, optional
        The codec and its settings (top-k, ternary, STC, dense). Left out in a subclass
        that names its :attr:`codec`: built from the keyword arguments that are that
        codec's options (:func:`bouquet.codecs.catalog.codec_options`).
    **kwargs
        :class:`TorchClient` arguments (model, data, training settings).
    """

    #: The codec a subclass builds from its keyword arguments (``None``: pass one).
    codec: ClassVar[str | None] = None
    #: This client's defaults for that codec's options.
    codec_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self, *args: Any, compressor: UpdateCompressor | None = None, **kwargs: Any
    ) -> None:
        if compressor is None and self.codec is not None:
            names = codec_options(self.codec)[0]
            options = {k: kwargs.pop(k) for k in names if k in kwargs}
            compressor = make_compressor(
                self.codec, **{**self.codec_defaults, **options}
            )
        super().__init__(*args, **kwargs)
        if not isinstance(compressor, UpdateCompressor):
            raise ValueError(
                "compressor must be a bouquet.codecs.UpdateCompressor, got "
                f"{type(compressor).__name__}"
            )
        self.compressor = compressor
        self.server_round = 1

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        self.server_round = int(config.get(keys.SERVER_ROUND, 1))
        return super().fit(parameters, config)

    def encode_train_reply(
        self, names: Sequence[str], received: Arrays, returned: Arrays
    ) -> ArrayRecord:
        """Compressed update arrays; the residual goes to ``self.context.state``."""
        return compress_for(self, names, received, returned)


class TopKClient(CompressingClient):
    """Uploads the top-:math:`m_j` elements of its update, with error feedback
    (``bouquet.topk/1``).

    ``alpha`` (here 0.01 by default), ``rho``, ``min_k``, ``scope`` (``tensor`` |
    ``model``), ``value_dtype`` (``float32`` | ``float16``), ``residual_decay`` and
    DGC's ``momentum_correction``, ``clip_norm`` and ``warmup_rounds`` are those of
    :class:`bouquet.codecs.TopKCompressor`; other arguments go to :class:`TorchClient`.
    """

    codec = "topk"
    codec_defaults = {"alpha": 0.01}


class TernaryClient(CompressingClient):
    """Uploads its update ternarised (TernGrad; ``bouquet.ternary/1``).

    ``stochastic``, ``clip_c``, ``packing`` (``auto`` | ``trit`` | ``2bit`` |
    ``sparse``) and ``residual_decay`` (default 0: unbiased, no error feedback) are
    those of :class:`bouquet.codecs.TernaryCompressor`; other arguments go to
    :class:`TorchClient`.
    """

    codec = "ternary"


class STCClient(CompressingClient):
    """Uploads its update as sparse ternary (STC; ``bouquet.stc/1``), with error
    feedback.

    ``alpha`` (here 0.01 by default) and the other codec options (DGC's
    ``momentum_correction``, ``clip_norm``, ``warmup_rounds`` included) are those of
    :class:`bouquet.codecs.STCCompressor`; other arguments go to :class:`TorchClient`.
    """

    codec = "stc"
    codec_defaults = {"alpha": 0.01}


def compression_mod(
    compressor: UpdateCompressor | str = "topk",
    *not_options: Any,
    state_key: str = keys.EF_RESIDUAL,
    seed: int = 0,
    momentum_key: str = keys.DGC_MOMENTUM,
    **codec_kwargs: Any,
) -> Mod:
    """A Flower client mod compressing the train reply of any Message-API ClientApp.

    Parameters
    ----------
    compressor : UpdateCompressor or str
        A compressor, or a codec name (``topk``, ``ternary``, ``stc``, ``dense``) built
        with ``codec_kwargs`` (e.g. ``alpha=0.01``).
    state_key : str
        ``context.state`` key of the error-feedback residual.
    momentum_key : str
        ``context.state`` key of the DGC momentum (with ``momentum_correction`` > 0).
    seed : int
        Seed of the stochastic rounding (mixed with node id and round).

    Returns
    -------
    callable
        ``mod(msg, context, call_next) -> Message``; only train messages are touched.

    Raises
    ------
    TypeError
        When used as a mod without being called (``mods=[compression_mod]``) or given
        positional options.
    ValueError
        For an unknown codec, an option the codec does not take, or a missing required
        one.
    """
    if isinstance(compressor, Message) or not_options:
        raise TypeError(
            "compression_mod builds a mod: write mods=[compression_mod('topk', "
            "alpha=0.01)] (called, "
            "options by keyword), not mods=[compression_mod]"
        )
    comp = (
        make_compressor(compressor, **codec_kwargs)
        if isinstance(compressor, str)
        else compressor
    )
    if not isinstance(comp, UpdateCompressor):
        raise ValueError(
            "compressor must be an UpdateCompressor or a codec name, got "
            f"{type(compressor).__name__}"
        )

    def _mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        received = received_arrays(msg)
        config = single_record(msg.content, "config", keys.CONFIG)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        rec_key, record, names, compressed = reply_update(reply, received)
        if compressed:
            return reply  # already compressed by the client
        server_round = int(config.get(keys.SERVER_ROUND, 1))
        rng = np.random.default_rng([seed, int(context.node_id) % 2**32, server_round])
        out = compress_update(
            comp,
            names,
            [received[n] for n in names],
            [record[n].numpy() for n in names],
            state=context.state,
            server_round=server_round,
            rng=rng,
            state_key=state_key,
            momentum_key=momentum_key,
        )
        reply.content[rec_key] = out
        return reply

    return _mod
