"""Update compressors: a codec, its settings and error feedback, for a list of tensors.

A compressor turns the update tensors of one client and round (local weights minus the
received global weights) into payloads (:class:`~bouquet.codecs.wire.Encoded`), applying error
feedback (``error_feedback.py``) when ``residual_decay > 0``:

* :class:`TopKCompressor`: top-:math:`m_j` per tensor or over the whole model
  (``topk.py``; Lin et al. 2018), values float32 or float16;
* :class:`TernaryCompressor`: TernGrad (``ternary.py``; Wen et al. 2017);
* :class:`STCCompressor`: sparse ternary compression (``stc.py``; Sattler et al. 2019);
* :class:`DenseCompressor`: no compression (``bouquet.dense/1``), for tests and baselines.

Non-floating tensors (counters, integer buffers) are always sent dense. Compressors are pure
numpy and hold only settings; residuals are passed in and returned so the caller keeps them
in the node's state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bouquet.codecs.error_feedback import accumulate, check_decay, subtract_sent
from bouquet.codecs.stc import encode_stc
from bouquet.codecs.ternary import (
    PACKINGS,
    encode_ternary,
    encode_ternary_sparse,
    ternarize,
    ternarize_sparse,
)
from bouquet.codecs.topk import (
    VALUE_DTYPES,
    encode_topk,
    select_topk,
    select_topk_model,
    topk_count,
)
from bouquet.codecs.wire import Decoded, Encoded, encode_dense

SCOPES = ("tensor", "model")


class UpdateCompressor:
    """Base class: error feedback around :meth:`encode` (override it)."""

    codec = "dense"
    checks_finite = False  # True: encode() raises ValueError on NaN / inf in the accumulated update

    def __init__(self, *, residual_decay: float = 0.0) -> None:
        self.residual_decay = check_decay(residual_decay)

    def encode(self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator) -> list[tuple[Encoded, Decoded]]:
        """Encode float tensors; return payloads and what the receiver decodes."""
        return [_dense(t) for t in tensors]

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
        """Compress ``updates`` (+ decayed ``residuals``) for ``server_round`` (1-based).

        ``exact[i]`` sends tensor ``i`` dense and exact (e.g. BatchNorm statistics, whose
        variances a sign-and-scale code could make negative); integer and bool tensors always
        are. A non-finite float update raises ``ValueError`` and nothing is returned (with
        ``inplace=True`` the caller's residual buffers may have been overwritten; the client keeps
        the residual as bytes in ``context.state``, which is then left unchanged). ``inplace=True`` lets the compressor overwrite ``updates`` and ``residuals``
        (the caller's fresh copies): error feedback then costs one pass for the accumulation and
        O(k) for the new residual.

        Returns
        -------
        (list of Encoded, list of numpy.ndarray or None)
            One payload per update, and the new residuals (``None`` without error feedback).
        """
        if residuals is not None and len(residuals) != len(updates):
            raise ValueError(f"{len(residuals)} residuals for {len(updates)} updates")
        rng = rng if rng is not None else np.random.default_rng()
        round_index = max(int(server_round) - 1, 0)
        arrays = [np.asarray(u) for u in updates]
        if exact is not None and len(exact) != len(arrays):
            raise ValueError(f"{len(exact)} exact flags for {len(arrays)} updates")
        for i, u in enumerate(arrays):  # the selecting codecs check NaN / inf in their own pass
            if not self.checks_finite or (exact is not None and exact[i]):
                check_finite_update(u, i)
        use_ef = self.residual_decay > 0
        floats = [i for i, u in enumerate(arrays) if u.dtype.kind == "f" and not (exact is not None and exact[i])]
        acc = list(arrays)
        if use_ef:  # integer / bool tensors are sent exactly: no residual to carry
            for i in floats:
                acc[i] = accumulate(arrays[i], None if residuals is None else residuals[i], self.residual_decay, inplace=inplace)
        encoded: list[tuple[Encoded, Decoded] | None] = [None] * len(acc)
        for i, pair in zip(floats, self.encode([acc[i] for i in floats], round_index, rng), strict=True):
            encoded[i] = pair
        for i, a in enumerate(acc):
            if encoded[i] is None:  # integer / bool tensors travel dense and exact
                encoded[i] = _dense(a)
        payloads = [e for e, _ in encoded]  # type: ignore[misc]
        if not use_ef:
            return payloads, None
        new = [subtract_sent(acc[i], encoded[i][1]) if i in floats else np.zeros_like(a)  # type: ignore[index]
               for i, a in enumerate(acc)]
        return payloads, new


def check_finite_update(u: np.ndarray, index: int) -> None:
    """``ValueError`` if a float update holds NaN or inf (one summing pass; exact check only
    when the sum is not finite)."""
    if u.dtype.kind == "f" and u.size and not np.isfinite(u.sum()) and not np.all(np.isfinite(u)):
        raise ValueError(f"update tensor {index} holds NaN or inf: not uploaded (the error-feedback residual is unchanged)")


def _dense(t: np.ndarray) -> tuple[Encoded, Decoded]:
    enc = encode_dense(t)
    return enc, Decoded(tuple(t.shape), t.dtype, None, t)


class DenseCompressor(UpdateCompressor):
    """No compression: every tensor as ``bouquet.dense/1``."""


class _TopKSelection(UpdateCompressor):
    checks_finite = True  # select_topk checks every block it scans

    def __init__(self, *, alpha: float, rho: float = 1.0, min_k: int = 1, scope: str = "tensor", residual_decay: float = 1.0) -> None:
        super().__init__(residual_decay=residual_decay)
        topk_count(1, alpha, rho=rho, min_k=min_k)  # validates alpha, rho, min_k
        if scope not in SCOPES:
            raise ValueError(f"scope={scope!r} is not allowed; allowed: {list(SCOPES)}")
        self.alpha, self.rho, self.min_k, self.scope = float(alpha), float(rho), int(min_k), scope

    def select(self, tensors: list[np.ndarray], round_index: int) -> list[np.ndarray]:
        """Flat kept indices of each tensor for this round."""
        if self.scope == "model":
            total = sum(t.size for t in tensors)
            m = topk_count(total, self.alpha, rho=self.rho, round_index=round_index, min_k=self.min_k)
            return select_topk_model(tensors, m)
        return [select_topk(t.reshape(-1), topk_count(t.size, self.alpha, rho=self.rho, round_index=round_index, min_k=self.min_k))
                for t in tensors]


class TopKCompressor(_TopKSelection):
    """Top-k sparsification with error feedback (``bouquet.topk/1``)."""

    codec = "topk"

    def __init__(self, *, alpha: float, rho: float = 1.0, min_k: int = 1, scope: str = "tensor",
                 value_dtype: str = "float32", residual_decay: float = 1.0) -> None:
        super().__init__(alpha=alpha, rho=rho, min_k=min_k, scope=scope, residual_decay=residual_decay)
        if value_dtype not in VALUE_DTYPES:
            raise ValueError(f"value_dtype={value_dtype!r} is not allowed; allowed: {sorted(VALUE_DTYPES)}")
        self.value_dtype = value_dtype

    def encode(self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator) -> list[tuple[Encoded, Decoded]]:
        return [encode_topk(t, idx, value_dtype=self.value_dtype) for t, idx in zip(tensors, self.select(tensors, round_index), strict=True)]


class STCCompressor(_TopKSelection):
    """Sparse ternary compression with error feedback (``bouquet.stc/1``)."""

    codec = "stc"

    def encode(self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator) -> list[tuple[Encoded, Decoded]]:
        return [encode_stc(t, idx) for t, idx in zip(tensors, self.select(tensors, round_index), strict=True)]


class TernaryCompressor(UpdateCompressor):
    """TernGrad ternarisation (``bouquet.ternary/1``); error feedback off by default."""

    codec = "ternary"
    checks_finite = True  # ternarize / ternarize_sparse refuse NaN and inf

    def __init__(self, *, stochastic: bool = True, clip_c: float | None = None, packing: str = "auto", residual_decay: float = 0.0) -> None:
        super().__init__(residual_decay=residual_decay)
        if clip_c is not None and not clip_c > 0:
            raise ValueError(f"clip_c={clip_c} must be > 0 or None")
        if packing not in PACKINGS:
            raise ValueError(f"packing={packing!r} is not allowed; allowed: {list(PACKINGS)}")
        self.stochastic, self.clip_c, self.packing = bool(stochastic), clip_c, packing

    def encode(self, tensors: list[np.ndarray], round_index: int, rng: np.random.Generator) -> list[tuple[Encoded, Decoded]]:
        out = []
        for t in tensors:
            if self.stochastic and self.packing in ("auto", "sparse"):
                idx, negative, scale = ternarize_sparse(t, clip_c=self.clip_c, rng=rng)
                out.append(encode_ternary_sparse(idx, negative, scale, tuple(t.shape), dtype=str(t.dtype),
                                                 packing_form=self.packing))
                continue
            trits, scale = ternarize(t, stochastic=self.stochastic, clip_c=self.clip_c, rng=rng)
            if not np.isfinite(scale):
                raise ValueError("update holds NaN or inf: not sent")
            out.append(encode_ternary(trits, scale, dtype=str(t.dtype), packing_form=self.packing))
        return out


COMPRESSORS: dict[str, type[UpdateCompressor]] = {
    "dense": DenseCompressor, "topk": TopKCompressor, "ternary": TernaryCompressor, "stc": STCCompressor,
}


def make_compressor(codec: str, **kwargs: object) -> UpdateCompressor:
    """Build a compressor by codec name (``dense``, ``topk``, ``ternary``, ``stc``)."""
    if codec not in COMPRESSORS:
        raise ValueError(f"codec={codec!r} is unknown; allowed: {sorted(COMPRESSORS)}")
    return COMPRESSORS[codec](**kwargs)  # type: ignore[arg-type]
