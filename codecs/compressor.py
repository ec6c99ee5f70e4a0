"""Update compressors: a codec, its settings and error feedback, for a list of tensors.

A compressor turns the update tensors of one client and round (local weights minus the
received global weights) into payloads (:class:`~bouquet.codecs.wire.Encoded`), applying
error feedback (``error_feedback.py``) when ``residual_decay > 0``:

* :class:`TopKCompressor`: top-:math:`m_j` per tensor or over the whole model
  (``topk.py``; Lin et al. 2018), values float32 or float16;
* :class:`TernaryCompressor`: TernGrad (``ternary.py``; Wen et al. 2017);
* :class:`STCCompressor`: sparse ternary compression (``stc.py``; Sattler et al. 2019);
* :class:`DenseCompressor`: no compression (``bouquet.dense/1``), for tests and
  baselines.

Non-floating tensors (counters, integer buffers) are always sent dense. Compressors are
pure numpy and hold only settings; residuals (and DGC momenta) are passed in and
returned so the caller keeps them in the node's state.

Deep Gradient Compression's remedies (Lin et al. 2018, arXiv:1712.01887), options of the
top-k and STC compressors (all off by default). Our clients send one round's update
:math:`\\Delta_t`, not per-step gradients; **our reading** treats :math:`\\Delta_t` as
DGC's gradient:

* local clipping (``clip_norm`` :math:`c`): :math:`\\Delta_t \\leftarrow \\Delta_t
  \\min(1, c /
  \\lVert\\Delta_t\\rVert_2)`, one L2 norm over all the lossy (float, non-exact)
  tensors, applied to the new update *before* it enters the momentum and the residual
  (DGC clips the gradient before adding it to the accumulation, so what waits in the
  residual is never shrunk);
* momentum correction (``momentum_correction`` :math:`m`) with momentum factor masking:

  .. math::

      u_t = m\\, u_{t-1} + \\Delta_t, \\quad a_t = u_t + \\beta e_{t-1}, \\quad
      \\text{send } C(a_t), \\quad e_t = a_t - C(a_t), \\quad u_t[S_t] = 0,

  :math:`S_t` the positions sent, :math:`\\beta` the residual decay (DGC:
  :math:`v_t = v_{t-1} + u_t`, i.e. :math:`\\beta = 1`). For float32 top-k,
  :math:`e_t[S_t] = 0` exactly as DGC zeroes :math:`v`; float16 and STC keep their
  quantisation error there (bouquet's error feedback);
* density warm-up (``warmup_rounds`` :math:`W`): round :math:`r \\le W` keeps the
  fraction :math:`d_r^{\\,r/(W+1)}` of the round's target
  :math:`d_r = \\alpha \\rho^{r-1}` (DGC's exponential warm-up: target 0.1% and
  :math:`W = 4` give 25%, 6.3%, 1.6%, 0.4%, then 0.1%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bouquet.codecs.error_feedback import accumulate
from bouquet.codecs.error_feedback import check_decay
from bouquet.codecs.error_feedback import subtract_sent
from bouquet.codecs.wire import DENSE
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import encode_dense
from bouquet.codecs.wire import sum_squares

STATISTIC_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def is_statistic(name: str) -> bool:
    """Whether ``name`` is a normalisation statistic (BatchNorm's running mean /
    variance / counter): sent dense and exact, never through a lossy codec (a ternary or
    sign code could make a running variance negative), and left out of server momentum.
    Our choice; they are a tiny share of any model."""
    return name.endswith(STATISTIC_SUFFIXES)


class CompressOutput(NamedTuple):
    """What :meth:`UpdateCompressor.compress_stateful` returns."""

    payloads: list[Encoded]
    residuals: list[np.ndarray] | None  # None without error feedback
    momenta: list[np.ndarray] | None  # None without momentum correction


class UpdateCompressor:
    """Base class: error feedback (and the DGC options) around :meth:`encode` (override
    it)."""

    codec = DENSE
    checks_finite = (
        False  # True: encode() raises ValueError on NaN / inf in the accumulated update
    )
    # DGC options (see the module docstring); set by the top-k and STC compressors, off
    # here.
    momentum_correction = 0.0
    clip_norm: float | None = None
    warmup_rounds = 0

    def __init__(self, *, residual_decay: float = 0.0) -> None:
        self.residual_decay = check_decay(residual_decay)

    def encode(
        self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator
    ) -> list[tuple[Encoded, Decoded]]:
        """Encode float tensors; return payloads and what the receiver decodes."""
        return [dense_pair(t) for t in tensors]

    def compress(
        self,
        updates: Sequence[np.ndarray],
        residuals: Sequence[np.ndarray] | None = None,
        *,
        server_round: int = 1,
        rng: np.random.Generator | None = None,
        inplace: bool = False,
        exact: Sequence[bool] | None = None,
    ) -> tuple[list[Encoded], list[np.ndarray] | None]:
        """Compress ``updates`` (+ decayed ``residuals``) for ``server_round``
        (1-based).

        ``exact[i]`` sends tensor ``i`` dense and exact (e.g. BatchNorm statistics,
        whose variances a sign-and-scale code could make negative); integer and bool
        tensors always are. A non-finite float update raises ``ValueError`` and nothing
        is returned (with ``inplace=True`` the caller's residual buffers may have been
        overwritten; the client keeps the residual as bytes in ``context.state``, which
        is then left unchanged). ``inplace=True`` lets the compressor overwrite
        ``updates`` and ``residuals`` (the caller's fresh copies): error feedback then
        costs one pass for the accumulation and O(k) for the new residual. With momentum
        correction use :meth:`compress_stateful` (its momenta must come back to the
        caller).

        Returns
        -------
        (list of Encoded, list of numpy.ndarray or None)
            One payload per update, and the new residuals (``None`` without error
            feedback).
        """
        if self.momentum_correction > 0:
            raise ValueError(
                f"momentum_correction={self.momentum_correction}: use "
                "compress_stateful(), which "
                "takes and returns the momenta (compress() would drop them every round)"
            )
        out = self.compress_stateful(
            updates,
            residuals,
            None,
            server_round=server_round,
            rng=rng,
            inplace=inplace,
            exact=exact,
        )
        return out.payloads, out.residuals

    def compress_stateful(
        self,
        updates: Sequence[np.ndarray],
        residuals: Sequence[np.ndarray] | None = None,
        momenta: Sequence[np.ndarray] | None = None,
        *,
        server_round: int = 1,
        rng: np.random.Generator | None = None,
        inplace: bool = False,
        exact: Sequence[bool] | None = None,
    ) -> CompressOutput:
        """:meth:`compress` with the DGC state: clip the update, add the decayed
        momentum ``momenta`` (:math:`u_{t-1}`, None = zeros), accumulate the residual,
        encode, and return the new residuals and the masked momenta (see the module
        docstring). Nothing is returned when a float update, momentum or residual holds
        NaN or inf (``ValueError``, checked on the accumulated vector); ``inplace=True``
        may then have overwritten the caller's buffers (the client keeps its state as
        bytes, left unchanged)."""
        if residuals is not None and len(residuals) != len(updates):
            raise ValueError(f"{len(residuals)} residuals for {len(updates)} updates")
        if momenta is not None and len(momenta) != len(updates):
            raise ValueError(f"{len(momenta)} momenta for {len(updates)} updates")
        rng = rng if rng is not None else np.random.default_rng()
        round_index = max(int(server_round) - 1, 0)
        arrays = [np.asarray(u) for u in updates]
        if exact is not None and len(exact) != len(arrays):
            raise ValueError(f"{len(exact)} exact flags for {len(arrays)} updates")
        # the selecting codecs check NaN / inf in their own pass
        for i, u in enumerate(arrays):
            if not self.checks_finite or (exact is not None and exact[i]):
                check_finite_update(u, i)
        use_ef = self.residual_decay > 0
        use_momentum = self.momentum_correction > 0
        floats = [
            i
            for i, u in enumerate(arrays)
            if u.dtype.kind == "f" and not (exact is not None and exact[i])
        ]
        lossy = set(floats)
        if self.clip_norm is not None:
            clipped, _ = clip_update(
                [arrays[i] for i in floats], self.clip_norm, inplace=inplace
            )
            for i, t in zip(floats, clipped, strict=True):
                arrays[i] = t
        velocity = list(arrays)  # u_t (= Delta_t without momentum correction)
        if use_momentum:
            for i in floats:
                velocity[i] = momentum_step(
                    arrays[i],
                    None if momenta is None else momenta[i],
                    self.momentum_correction,
                    inplace=inplace,
                )
        acc = list(velocity)
        if use_ef:  # integer / bool tensors are sent exactly: no residual to carry
            for i in floats:
                residual = None if residuals is None else residuals[i]
                # the velocity must survive the accumulation: never accumulate into its
                # buffer
                acc[i] = accumulate(
                    velocity[i],
                    residual,
                    self.residual_decay,
                    inplace=inplace and not (use_momentum and residual is None),
                )
        lossy_pairs = dict(
            zip(
                floats,
                self.encode([acc[i] for i in floats], round_index, rng),
                strict=True,
            )
        )
        # integer / bool tensors travel dense and exact
        encoded = [lossy_pairs.get(i) or dense_pair(a) for i, a in enumerate(acc)]
        payloads = [e for e, _ in encoded]
        new = None
        if use_ef:
            new = [
                subtract_sent(acc[i], encoded[i][1]) if i in lossy else np.zeros_like(a)
                for i, a in enumerate(acc)
            ]
        masked = None
        if use_momentum:  # momentum factor masking: u_t[S_t] = 0
            masked = [
                mask_sent(velocity[i], encoded[i][1])
                if i in lossy
                else np.zeros_like(a)
                for i, a in enumerate(acc)
            ]
        return CompressOutput(payloads, new, masked)


def update_norm(tensors: Sequence[np.ndarray]) -> float:
    """L2 norm over all ``tensors`` (float64, in blocks: no overflow for finite float32
    input)."""
    return math.sqrt(sum(sum_squares(t) for t in tensors))


def clip_update(
    tensors: list[np.ndarray], bound: float, *, inplace: bool = False
) -> tuple[list[np.ndarray], float]:
    """``tensors`` scaled by :math:`\\min(1, c / \\lVert\\cdot\\rVert_2)` (one norm over
    all of them; new arrays unless ``inplace``) and the norm before clipping.
    ``ValueError`` if they hold NaN or inf."""
    norm = update_norm(tensors)
    if not math.isfinite(norm):
        raise ValueError(
            "update holds NaN or inf: not uploaded (the error-feedback residual is "
            "unchanged)"
        )
    if norm <= bound:
        return list(tensors), norm
    factor = bound / norm
    out = []
    for t in tensors:
        if inplace and t.flags.writeable:
            t *= t.dtype.type(factor)
            out.append(t)
        else:
            out.append((t * t.dtype.type(factor)).astype(t.dtype, copy=False))
    return out, norm


def momentum_step(
    update: np.ndarray, previous: np.ndarray | None, m: float, *, inplace: bool = False
) -> np.ndarray:
    """:math:`u_t = m\\, u_{t-1} + \\Delta_t` (a new array unless ``inplace``: then the
    buffer of ``previous``, or of ``update`` when ``previous=None``, which stands for
    zeros)."""
    if previous is None:
        return (
            update
            if inplace and update.flags.writeable
            else np.array(update, dtype=update.dtype, copy=True)
        )
    if previous.shape != update.shape:
        raise ValueError(
            f"momentum shape {previous.shape} != update shape {update.shape}"
        )
    if inplace and previous.flags.writeable and previous.dtype == update.dtype:
        previous *= update.dtype.type(m)
        previous += update
        return previous
    out = previous.astype(update.dtype) * update.dtype.type(m)
    out += update
    return out


def mask_sent(velocity: np.ndarray, sent: Decoded) -> np.ndarray:
    """Momentum factor masking: ``velocity`` with zeros at the positions ``sent``
    carries, in
    place, O(k) (all positions when ``sent`` is dense)."""
    if sent.indices is None:
        velocity[...] = 0
    else:
        np.put(velocity, sent.indices, np.zeros(1, dtype=velocity.dtype))
    return velocity


def check_finite_update(u: np.ndarray, index: int) -> None:
    """``ValueError`` if a float update holds NaN or inf (one summing pass; exact check
    only
    when the sum is not finite)."""
    if (
        u.dtype.kind == "f"
        and u.size
        and not np.isfinite(u.sum())
        and not np.all(np.isfinite(u))
    ):
        raise ValueError(
            f"update tensor {index} holds NaN or inf: not uploaded (the "
            "error-feedback residual is unchanged)"
        )


def dense_pair(t: np.ndarray) -> tuple[Encoded, Decoded]:
    """``t`` as ``bouquet.dense/1`` and its exact decoding."""
    enc = encode_dense(t)
    return enc, Decoded(tuple(t.shape), t.dtype, None, t)
