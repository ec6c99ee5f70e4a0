"""Ternary quantisation of model updates (method S5; TernGrad).

TernGrad (Wen et al. 2017, arXiv:1705.07878) sends each tensor :math:`g` as a scale
:math:`s` and trits :math:`t_i \\in \\{-1, 0, 1\\}`; the receiver uses :math:`s\\,t`.
The stochastic variant is unbiased:

.. math::

    s = \\max_i |g_i|, \\qquad
    t_i = \\operatorname{sign}(g_i)\\, b_i, \\quad b_i \\sim
        \\operatorname{Bernoulli}(|g_i| / s),
    \\qquad \\mathbb{E}[s\\,t_i] = g_i .

With gradient clipping (``clip_c``), :math:`g` is first clipped to
:math:`[-c\\sigma, c\\sigma]` (:math:`\\sigma` the tensor's standard deviation), so
:math:`s = \\min(\\max|g|, c\\sigma)` and the estimate is unbiased for the clipped
tensor. The deterministic variant (``stochastic=False``) uses the threshold of Ternary
Weight Networks (Li & Liu 2016, arXiv:1605.04711):
:math:`t_i = \\operatorname{sign}(g_i)[|g_i| > \\Delta]` with
:math:`\\Delta = 0.7\\,\\overline{|g|}` and :math:`s` the mean of :math:`|g_i|` above
it.

Body of ``bouquet.ternary/1`` (after the ``wire`` header)::

    scale f32 | form u8 | form body
    form 0 "2bit":   ceil(n/4) bytes, 4 trits per byte (2 bits each)
    form 1 "trit":   ceil(n/5) bytes, 5 trits per byte (base 3, 1.6 bits each)
    form 2 "sparse": k u32 | position coding u8 | position bytes u32 | positions
                     | ceil(k/8) sign bytes

``packing="auto"`` picks the smallest form for each tensor. The sparse form is also the
body of Sparse Ternary Compression (``stc.py``).
"""

from __future__ import annotations

import math

import numpy as np

from bouquet.codecs import kernels
from bouquet.codecs import packing
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import Reader
from bouquet.codecs.wire import checked_scale
from bouquet.codecs.wire import stype_string
from bouquet.codecs.wire import write_header

NAME = "ternary"  # the codec's name: bouquet.ternary/1 (see bouquet.codecs.catalog)
WIRE_ID = 2  # its id in the header (wire.py)

FORMS = {"2bit": 0, "trit": 1, "sparse": 2}
PACKINGS = ("auto", *FORMS)
TWN_THRESHOLD = 0.7
_BLOCK = 1 << 16


def _max_abs(g: np.ndarray) -> float:
    return float(max(g.max(), -g.min())) if g.size else 0.0


def _prepare(
    g: np.ndarray, clip_c: float | None
) -> tuple[np.ndarray, type, float | None, float]:
    """(flat view, working float type, clip bound or None, scale s) of a tensor to
    ternarise;
    ``ValueError`` for a non-float tensor, NaN or inf."""
    if g.dtype.kind != "f":
        raise ValueError(f"ternarize needs a floating tensor, got {g.dtype}")
    work = np.float64 if g.dtype == np.float64 else np.float32
    flat = g.reshape(-1)
    bound = None
    if clip_c is not None:
        if not clip_c > 0:
            raise ValueError(f"clip_c={clip_c} must be > 0 (or None for no clipping)")
        bound = clip_c * float(flat.std(dtype=np.float64))
    top = _max_abs(flat)
    if not np.isfinite(top):
        raise ValueError("update holds NaN or inf: not sent")
    return flat, work, bound, top if bound is None else min(top, bound)


def ternarize(
    g: np.ndarray,
    *,
    stochastic: bool = True,
    clip_c: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, float]:
    """Trits (int8, same shape) and scale of ``g`` (see module docstring).

    Works block by block (cache-sized temporaries); the random draws are float32
    (float64 for a float64 tensor), one per element.
    """
    g = np.asarray(g)
    flat, work, bound, scale = _prepare(g, clip_c)
    t = np.zeros(flat.size, dtype=np.int8)
    if not scale > 0:
        return t.reshape(g.shape), 0.0
    if not stochastic:
        return _twn(flat, bound, t, work, g.shape)
    rng = rng if rng is not None else np.random.default_rng()
    mag: np.ndarray = np.empty(min(_BLOCK, flat.size), dtype=work)
    draw = np.empty_like(mag)
    hit = np.empty(mag.size, dtype=bool)
    for start in range(0, flat.size, _BLOCK):
        part = flat[start : start + _BLOCK]
        m, d, h = mag[: part.size], draw[: part.size], hit[: part.size]
        np.abs(part, out=m, casting="unsafe")
        if bound is not None:
            np.minimum(m, bound, out=m)
        rng.random(out=d, dtype=work)
        d *= scale
        np.less(d, m, out=h)  # P(keep) = |g| / s
        block = t[start : start + part.size]
        np.copyto(block, h, casting="unsafe")
        np.negative(block, out=block, where=part < 0)
    return t.reshape(g.shape), float(scale)


def ternarize_sparse(
    g: np.ndarray,
    *,
    clip_c: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Stochastic ternarisation returned sparse: sorted kept indices, their signs
    (True =
    negative) and the scale; ``ValueError`` on NaN or inf.

    The same distribution as :func:`ternarize` (unbiased,
    :math:`P(\\text{keep}_i) = |g_i| / s`) with one random *byte* per element: with
    :math:`q_i = 256 |g_i| / s`, keep when the byte :math:`u_i < \\lfloor q_i \\rfloor`,
    drop when :math:`u_i > \\lfloor q_i \\rfloor`, and on a tie (probability 1/256) keep
    with probability :math:`q_i - \\lfloor q_i \\rfloor` from a float draw:
    :math:`P = (\\lfloor q_i \\rfloor + \\{q_i\\}) / 256 = |g_i| / s` exactly.

    Draw order (the same for any block size, so the compiled path gives the same
    result): two raw words of ``rng`` seed a child generator for the ties' float draws;
    then byte ``i`` of ``rng``'s raw 64-bit stream (``bit_generator.random_raw``,
    little-endian) is element ``i``'s byte, and the ties draw their floats from the
    child generator in index order.
    """
    flat, work, bound, scale = _prepare(np.asarray(g), clip_c)
    if not scale > 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), 0.0
    rng = rng if rng is not None else np.random.default_rng()
    tie_rng = np.random.default_rng(rng.bit_generator.random_raw(2))
    factor = 256.0 / scale
    if kernels.enabled(flat.size) is not None and flat.dtype == np.float32:
        u = _random_bytes(rng, flat.size)
        found = kernels.ternary_candidates(flat, u, bound, factor)
        if found is None:  # enabled() said numba is there
            raise RuntimeError("the compiled ternary selection is not available")
        cand, tie, neg = found
        return _settle_ties(flat, bound, factor, work, u, cand, tie, neg, tie_rng) + (
            float(scale),
        )
    q: np.ndarray = np.empty(min(_BLOCK, flat.size), dtype=work)
    qi = np.empty(q.size, dtype=np.uint8)
    cands, negs = [], []
    for start in range(0, flat.size, _BLOCK):
        part = flat[start : start + _BLOCK]
        u = _random_bytes(rng, part.size)
        qb, qib = q[: part.size], qi[: part.size]
        np.abs(part, out=qb, casting="unsafe")
        if bound is not None:
            np.minimum(qb, bound, out=qb)
        qb *= factor
        # q = 256 (the largest element): byte 255 ties, frac 1
        np.minimum(qb, 255.0, out=qb)
        np.copyto(qib, qb, casting="unsafe")  # floor of a non-negative value
        local = np.flatnonzero(u <= qib)
        cand, neg = _settle_ties(
            part,
            bound,
            factor,
            work,
            u,
            local,
            u[local] == qib[local],
            part[local] < 0,
            tie_rng,
        )
        cands.append(cand + start)
        negs.append(neg)
    return (
        np.concatenate(cands).astype(np.int64, copy=False),
        np.concatenate(negs),
        float(scale),
    )


def _random_bytes(rng: np.random.Generator, count: int) -> np.ndarray:
    """The next ``count`` bytes of ``rng``'s raw 64-bit stream (little-endian words)."""
    words = rng.bit_generator.random_raw((count + 7) // 8)
    return words.astype("<u8", copy=False).view(np.uint8)[:count]


def _settle_ties(
    flat: np.ndarray,
    bound: float | None,
    factor: float,
    work: type,
    u: np.ndarray,
    cand: np.ndarray,
    tie: np.ndarray,
    neg: np.ndarray,
    tie_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (positions into ``flat`` and ``u``) and their signs without the ties
    that lose their float draw: a tie keeps with probability ``q - floor(q)`` (``q``
    unclamped by 255), drawn from ``tie_rng`` in position order."""
    ties = np.flatnonzero(tie)
    if not ties.size:
        return cand, neg
    at = cand[ties]
    mag = np.abs(flat[at]).astype(work)
    if bound is not None:
        mag = np.minimum(mag, bound)
    lose = ties[tie_rng.random(ties.size) >= mag * factor - u[at]]
    if not lose.size:
        return cand, neg
    # in place: cand and neg are this call's own
    compacted = kernels.drop_entries(cand, neg, lose)
    if compacted is not None:
        return compacted
    keep = np.ones(cand.size, dtype=bool)
    keep[lose] = False
    return cand[keep], neg[keep]


def _twn(
    flat: np.ndarray,
    bound: float | None,
    t: np.ndarray,
    work: type,
    shape: tuple[int, ...],
) -> tuple[np.ndarray, float]:
    """Deterministic ternarisation with the TWN threshold (see module docstring)."""
    mag = np.abs(flat).astype(work, copy=False)
    if bound is not None:
        mag = np.minimum(mag, bound)
    keep = mag > TWN_THRESHOLD * float(mag.mean())
    scale = float(mag[keep].mean()) if keep.any() else 0.0
    t[keep] = 1
    t[keep & (flat < 0)] = -1
    return t.reshape(shape), scale


def sparse_ternary_body(
    indices: np.ndarray, negative: np.ndarray, n: int, pos_coding: int | None = None
) -> bytes:
    """``k | coding | len | positions | signs`` of the non-zero trits at sorted
    ``indices``."""
    coding, block = packing.encode_positions(indices, n, pos_coding)
    return b"".join(
        [
            np.array([indices.size], "<u4").tobytes(),
            bytes([coding]),
            np.array([len(block)], "<u4").tobytes(),
            block,
            packing.pack_signs(negative),
        ]
    )


def read_sparse_ternary(reader: Reader, n: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Indices (``None``: all ``n`` elements) and signs (+-1 int8) of a sparse ternary
    body,
    which must be the rest of the payload."""
    (k,) = reader.unpack("I", "k")
    if k > n:
        raise ValueError(f"k={k} > tensor size {n}")
    (coding,) = reader.unpack("B", "position coding")
    (plen,) = reader.unpack("I", "position block length")
    reader.expect_remaining(
        plen + (k + 7) // 8, f"a position block of {plen} bytes and {k} signs"
    )
    indices = packing.read_position_block(reader, coding, plen, k, n)
    signs = packing.unpack_signs(reader.take((k + 7) // 8, "sign block"), k)
    return indices, signs


def read_scale(reader: Reader) -> float:
    (scale,) = reader.unpack("f", "scale")
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale {scale} must be finite and >= 0")
    return float(scale)


def encode_ternary(
    t: np.ndarray, scale: float, *, dtype: str = "float32", packing_form: str = "auto"
) -> tuple[Encoded, Decoded]:
    """Encode trits ``t`` with ``scale``; returns the payload and what the receiver
    decodes."""
    flat = np.asarray(t, dtype=np.int8).reshape(-1)
    idx = np.flatnonzero(flat) if packing_form in ("auto", "sparse") else None
    return _encode(
        idx,
        None if idx is None else flat[idx] < 0,
        flat,
        scale,
        tuple(np.shape(t)),
        dtype,
        packing_form,
    )


def encode_ternary_sparse(
    indices: np.ndarray,
    negative: np.ndarray,
    scale: float,
    shape: tuple[int, ...],
    *,
    dtype: str = "float32",
    packing_form: str = "auto",
) -> tuple[Encoded, Decoded]:
    """:func:`encode_ternary` of the trits given sparse (sorted ``indices``,
    ``negative`` signs):
    the dense trit array is built only if a dense form is chosen."""
    return _encode(
        np.asarray(indices, dtype=np.int64),
        np.asarray(negative, dtype=bool),
        None,
        scale,
        shape,
        dtype,
        packing_form,
    )


def _encode(
    idx: np.ndarray | None,
    negative: np.ndarray | None,
    flat: np.ndarray | None,
    scale: float,
    shape: tuple[int, ...],
    dtype: str,
    packing_form: str,
) -> tuple[Encoded, Decoded]:
    if packing_form not in PACKINGS:
        raise ValueError(
            f"packing={packing_form!r} is not allowed; allowed: {list(PACKINGS)}"
        )
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"scale={scale} must be finite and >= 0")
    n = math.prod(shape)
    form, body = packing_form, b""
    if packing_form == "auto":  # 2-bit is never smaller than 5 trits per byte
        form = "trit"
        # positions + signs may beat 1.6 bits per element
        if idx is not None and idx.size < 0.6 * n:
            body = sparse_ternary_body(idx, negative, n)  # type: ignore[arg-type]
            form = "sparse" if len(body) < (n + 4) // 5 else "trit"
    if form == "sparse" and not body:
        body = sparse_ternary_body(idx, negative, n)  # type: ignore[arg-type]
    elif form in ("trit", "2bit"):
        if flat is None:
            flat = np.zeros(n, dtype=np.int8)
            flat[idx] = np.where(np.asarray(negative), -1, 1)
        body = packing.pack_trits(flat) if form == "trit" else packing.pack_2bit(flat)
    scale32 = np.float32(scale)
    data = (
        write_header(WIRE_ID, dtype, shape)
        + scale32.astype("<f4").tobytes()
        + bytes([FORMS[form]])
        + body
    )
    np_dtype = np.dtype(dtype)
    typed = float(np_dtype.type(scale32))
    if form == "sparse" and idx is not None and idx.size < n:
        # 1 - 2 * negative
        signs = np.asarray(negative, dtype=bool).view(np.int8) * np.int8(-2)
        signs += np.int8(1)
        sent = Decoded(shape, np_dtype, idx, signs, scale=typed)
    else:
        sent = Decoded(shape, np_dtype, None, flat, scale=typed)  # type: ignore[arg-type]
    return Encoded(stype_string(NAME), dtype, shape, data), sent


def decode_ternary_body(reader: Reader, dtype: np.dtype, n: int) -> Decoded:
    """Read a ``bouquet.ternary/1`` body (header already read); the trits stay int8."""
    scale = checked_scale(read_scale(reader), dtype)
    (form,) = reader.unpack("B", "form")
    if form == FORMS["sparse"]:
        indices, signs = read_sparse_ternary(reader, n)
        return Decoded((), dtype, indices, signs, scale=scale)
    if form == FORMS["2bit"]:
        t = packing.unpack_2bit(reader.take((n + 3) // 4, "2-bit trits"), n)
    elif form == FORMS["trit"]:
        t = packing.unpack_trits(reader.take((n + 4) // 5, "5-per-byte trits"), n)
    else:
        raise ValueError(
            f"ternary form {form} is unknown; allowed: {sorted(FORMS.values())}"
        )
    return Decoded((), dtype, None, t, scale=scale)
