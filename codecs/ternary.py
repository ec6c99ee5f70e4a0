"""Ternary quantisation of model updates (method S5; TernGrad).

TernGrad (Wen et al. 2017, arXiv:1705.07878) sends each tensor :math:`g` as a scale :math:`s`
and trits :math:`t_i \\in \\{-1, 0, 1\\}`; the receiver uses :math:`s\\,t`. The stochastic
variant is unbiased:

.. math::

    s = \\max_i |g_i|, \\qquad
    t_i = \\operatorname{sign}(g_i)\\, b_i, \\quad b_i \\sim \\operatorname{Bernoulli}(|g_i| / s),
    \\qquad \\mathbb{E}[s\\,t_i] = g_i .

With gradient clipping (``clip_c``), :math:`g` is first clipped to
:math:`[-c\\sigma, c\\sigma]` (:math:`\\sigma` the tensor's standard deviation), so
:math:`s = \\min(\\max|g|, c\\sigma)` and the estimate is unbiased for the clipped tensor.
The deterministic variant (``stochastic=False``) uses the threshold of Ternary Weight Networks
(Li & Liu 2016, arXiv:1605.04711): :math:`t_i = \\operatorname{sign}(g_i)[|g_i| > \\Delta]`
with :math:`\\Delta = 0.7\\,\\overline{|g|}` and :math:`s` the mean of :math:`|g_i|` above it.

Body of ``bouquet.ternary/1`` (after the ``wire`` header)::

    scale f32 | form u8 | form body
    form 0 "2bit":   ceil(n/4) bytes, 4 trits per byte (2 bits each)
    form 1 "trit":   ceil(n/5) bytes, 5 trits per byte (base 3, 1.6 bits each)
    form 2 "sparse": k u32 | position coding u8 | position bytes u32 | positions | ceil(k/8) sign bytes

``packing="auto"`` picks the smallest form for each tensor. The sparse form is also the body of
Sparse Ternary Compression (``stc.py``).
"""

from __future__ import annotations

import numpy as np

from bouquet.codecs import packing
from bouquet.codecs.wire import Decoded, Encoded, Reader, stype_for, write_header

FORMS = {"2bit": 0, "trit": 1, "sparse": 2}
PACKINGS = ("auto", *FORMS)
TWN_THRESHOLD = 0.7


def ternarize(g: np.ndarray, *, stochastic: bool = True, clip_c: float | None = None,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, float]:
    """Trits (int8, same shape) and scale of ``g`` (see module docstring)."""
    g = np.asarray(g)
    g = g.astype(np.float32 if g.dtype in (np.float16, np.float32) else np.float64, copy=False)
    if clip_c is not None:
        if not clip_c > 0:
            raise ValueError(f"clip_c={clip_c} must be > 0 (or None for no clipping)")
        bound = clip_c * float(g.std())
        g = np.clip(g, -bound, bound)
    mag = np.abs(g)
    if g.size == 0 or not mag.max() > 0:
        return np.zeros(g.shape, dtype=np.int8), 0.0
    if stochastic:
        rng = rng if rng is not None else np.random.default_rng()
        scale = float(mag.max())
        keep = rng.random(g.shape, dtype=g.dtype) * scale < mag  # P(keep) = |g| / s
        return (np.sign(g) * keep).astype(np.int8), scale
    delta = TWN_THRESHOLD * float(mag.mean())
    keep = mag > delta
    scale = float(mag[keep].mean()) if keep.any() else 0.0
    return (np.sign(g) * keep).astype(np.int8), scale


def sparse_ternary_body(t_flat: np.ndarray, n: int, pos_coding: int | None = None) -> bytes:
    """``k | coding | len | positions | signs`` of the non-zero trits of ``t_flat``."""
    idx = np.flatnonzero(t_flat)
    coding, block = packing.encode_positions(idx, n, pos_coding)
    return b"".join([
        np.array([idx.size], "<u4").tobytes(), bytes([coding]), np.array([len(block)], "<u4").tobytes(),
        block, packing.pack_signs(t_flat[idx] < 0),
    ])


def read_sparse_ternary(reader: Reader, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and signs (+-1 int8) of a sparse ternary body."""
    (k,) = reader.unpack("I", "k")
    if k > n:
        raise ValueError(f"k={k} > tensor size {n}")
    (coding,) = reader.unpack("B", "position coding")
    (plen,) = reader.unpack("I", "position block length")
    indices = packing.decode_positions(coding, reader.take(plen, "position block"), k, n)
    signs = packing.unpack_signs(reader.take((k + 7) // 8, "sign block"), k)
    return indices, signs


def read_scale(reader: Reader) -> float:
    (scale,) = reader.unpack("f", "scale")
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale {scale} must be finite and >= 0")
    return float(scale)


def encode_ternary(t: np.ndarray, scale: float, *, dtype: str = "float32", packing_form: str = "auto") -> tuple[Encoded, np.ndarray]:
    """Encode trits ``t`` with ``scale``; returns the payload and the dense decoded tensor."""
    if packing_form not in PACKINGS:
        raise ValueError(f"packing={packing_form!r} is not allowed; allowed: {list(PACKINGS)}")
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale={scale} must be finite and >= 0")
    flat = np.asarray(t, dtype=np.int8).reshape(-1)
    n = flat.size
    form, body = packing_form, b""
    if packing_form == "auto":  # 2-bit is never smaller than 5 trits per byte
        form = "trit"
        if np.count_nonzero(flat) < 0.6 * n:  # positions + signs may beat 1.6 bits per element
            body = sparse_ternary_body(flat, n)
            form = "sparse" if len(body) < (n + 4) // 5 else "trit"
    if form == "sparse" and not body:
        body = sparse_ternary_body(flat, n)
    elif form == "trit":
        body = packing.pack_trits(flat)
    elif form == "2bit":
        body = packing.pack_2bit(flat)
    shape = tuple(np.shape(t))
    scale32 = np.float32(scale)
    data = write_header("ternary", dtype, shape) + scale32.astype("<f4").tobytes() + bytes([FORMS[form]]) + body
    sent = (scale32 * flat.astype(np.float32)).astype(dtype).reshape(shape)
    return Encoded(stype_for("ternary"), dtype, shape, data), sent


def decode_ternary_body(reader: Reader, dtype: np.dtype, n: int) -> Decoded:
    """Read a ``bouquet.ternary/1`` body (header already read)."""
    scale = read_scale(reader)
    (form,) = reader.unpack("B", "form")
    if form == FORMS["sparse"]:
        indices, signs = read_sparse_ternary(reader, n)
        return Decoded((), dtype, indices, (np.float32(scale) * signs).astype(dtype))
    if form == FORMS["2bit"]:
        t = packing.unpack_2bit(reader.take((n + 3) // 4, "2-bit trits"), n)
    elif form == FORMS["trit"]:
        t = packing.unpack_trits(reader.take((n + 4) // 5, "5-per-byte trits"), n)
    else:
        raise ValueError(f"ternary form {form} is unknown; allowed: {sorted(FORMS.values())}")
    return Decoded((), dtype, None, (np.float32(scale) * t).astype(dtype))
