"""Top-k sparsification of model updates (sparse upload, method S1).

Keep the :math:`m` largest-magnitude elements of an update and send them with their
positions. The number kept in round :math:`j` (counted from 0 for the first round)
decays with the attenuation coefficient :math:`\\rho` from the upload-scale coefficient
:math:`\\alpha`:

.. math::

    m_j = \\min\\bigl(M,\\ \\max(k_{\\min},\\ \\lceil \\alpha\\, \\rho^{j} M
        \\rceil)\\bigr)

for a tensor (or, with whole-model selection, a model) of :math:`M` elements;
:math:`\\rho = 1` keeps :math:`m` constant. With error feedback (``error_feedback.py``)
this is Deep Gradient Compression's sparsification (Lin et al. 2018, arXiv:1712.01887;
Aji & Heafield 2017).

Body of ``bouquet.topk/1`` (after the ``wire`` header)::

    k u32 | value dtype u8 (0 float32, 1 float16) | position coding u8
    | position bytes u32
    | position block | k values

Values are sent as float32 or float16 (float16 values beyond its range are clipped to
+-65504; with error feedback the clipped part stays in the residual).
"""

from __future__ import annotations

import math

import numpy as np

from bouquet.codecs import packing
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import Reader
from bouquet.codecs.wire import finite_or_raise
from bouquet.codecs.wire import stype_string
from bouquet.codecs.wire import write_header

NAME = "topk"  # the codec's name: bouquet.topk/1 (see bouquet.codecs.catalog)
WIRE_ID = 1  # its id in the header (wire.py)

VALUE_DTYPES = {"float32": 0, "float16": 1}
_VALUE_NAMES = {v: k for k, v in VALUE_DTYPES.items()}
_F16_MAX = float(np.finfo(np.float16).max)
_SAMPLE_MIN, _SAMPLE_SIZE = 100_000, 20_000


def topk_count(
    size: int, alpha: float, *, rho: float = 1.0, round_index: int = 0, min_k: int = 1
) -> int:
    """:math:`m_j` of the module docstring for ``size`` elements in round
    ``round_index``."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in (0, 1]")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho={rho} must be in (0, 1]")
    if min_k < 0:
        raise ValueError(f"min_k={min_k} must be >= 0")
    if round_index < 0:
        raise ValueError(f"round_index={round_index} must be >= 0")
    return min(size, max(min_k, math.ceil(alpha * rho**round_index * size)))


def select_topk(flat: np.ndarray, m: int) -> np.ndarray:
    """Sorted flat indices of the ``m`` largest ``|flat|``; ``ValueError`` if ``flat``
    holds
    NaN or inf (checked in the same pass).

    Large tensors (DGC-style): a threshold from a strided sample keeps ~2m candidates,
    found block by block in cache-sized pieces; the exact m-th magnitude among them (a
    partition of the candidates' magnitudes) then picks the m indices in order, without
    a sort. Exact whenever at least m elements pass the sample threshold, else the full
    ``argpartition``.
    """
    n = flat.size
    if not 0 <= m <= n:
        raise ValueError(f"m={m} must be in [0, {n}]")
    if n >= _SAMPLE_MIN and 0 < m <= n // 20:
        sample = np.abs(flat[:: max(1, n // _SAMPLE_SIZE)])
        threshold = (
            float(np.quantile(sample, max(0.0, 1.0 - 2.0 * m / n)))
            if np.isfinite(sample.max())
            else 0.0
        )
        cand, mag = _at_least(flat, threshold)
        if cand.size >= m:
            kth = mag[np.argpartition(mag, cand.size - m)[cand.size - m]]
            above = mag > kth
            chosen = above | (mag == kth)
            extra = int(np.count_nonzero(chosen)) - m
            if extra > 0:  # ties at the m-th magnitude: keep the first ones
                ties = np.flatnonzero(chosen & ~above)
                chosen[ties[len(ties) - extra :]] = False
            return cand[chosen]
    mag = np.abs(flat)
    if mag.size and not np.isfinite(mag.max()):
        raise ValueError("update holds NaN or inf: not sent")
    if m == n:
        return np.arange(n, dtype=np.int64)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(mag, n - m)[n - m :]
    return np.sort(part).astype(np.int64)


def _at_least(flat: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices with ``|flat| >= threshold`` and their magnitudes, computed in
    blocks that stay in cache; ``ValueError`` on NaN or inf (the block maximum is
    checked on the way)."""
    block = 1 << 17
    mag = np.empty(min(block, flat.size), dtype=flat.dtype)
    hit = np.empty(mag.size, dtype=bool)
    found, mags = [], []
    for start in range(0, flat.size, block):
        part = flat[start : start + block]
        m, h = mag[: part.size], hit[: part.size]
        np.abs(part, out=m)
        if not np.isfinite(m.max()):
            raise ValueError("update holds NaN or inf: not sent")
        np.greater_equal(m, threshold, out=h)
        local = np.flatnonzero(h)
        found.append(local + start)
        mags.append(m[local])
    return np.concatenate(found).astype(np.int64, copy=False), np.concatenate(mags)


def select_topk_model(tensors: list[np.ndarray], m: int) -> list[np.ndarray]:
    """Whole-model top-``m``: one global magnitude threshold, indices split per
    tensor."""
    sizes = [t.size for t in tensors]
    flat = (
        np.concatenate([np.abs(t.reshape(-1)) for t in tensors])
        if tensors
        else np.zeros(0)
    )
    chosen = select_topk(flat, m)
    bounds = np.cumsum([0, *sizes])
    cuts = np.searchsorted(chosen, bounds)
    return [chosen[cuts[i] : cuts[i + 1]] - bounds[i] for i in range(len(tensors))]


def _quantise(values: np.ndarray, value_dtype: str) -> np.ndarray:
    if value_dtype == "float16":
        return np.clip(values, -_F16_MAX, _F16_MAX).astype(np.float16)
    return values.astype(np.float32)


def encode_topk(
    x: np.ndarray,
    indices: np.ndarray,
    *,
    value_dtype: str = "float32",
    pos_coding: int | None = None,
) -> tuple[Encoded, Decoded]:
    """Encode ``x`` at sorted unique flat ``indices``.

    Returns
    -------
    (Encoded, Decoded)
        The payload and what the receiver will decode (sparse; for error feedback).
    """
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(
            f"value_dtype={value_dtype!r} is not allowed; allowed: "
            f"{sorted(VALUE_DTYPES)}"
        )
    x = np.asarray(x)
    flat = x.reshape(-1)
    idx = np.asarray(indices, dtype=np.int64)
    values = _quantise(flat[idx], value_dtype)
    coding, block = packing.encode_positions(idx, flat.size, pos_coding)
    shape, dtype = tuple(x.shape), str(x.dtype)
    data = b"".join(
        [
            write_header(WIRE_ID, dtype, shape),
            np.array([idx.size], "<u4").tobytes(),
            bytes([VALUE_DTYPES[value_dtype], coding]),
            np.array([len(block)], "<u4").tobytes(),
            block,
            values.astype(values.dtype.newbyteorder("<")).tobytes(),
        ]
    )
    sent = Decoded(
        shape,
        x.dtype,
        None if coding == packing.POS_ALL else idx,
        values.astype(x.dtype),
    )
    return Encoded(stype_string(NAME), dtype, shape, data), sent


def decode_topk_body(reader: Reader, dtype: np.dtype, n: int) -> Decoded:
    """Read a ``bouquet.topk/1`` body (header already read) for a tensor of ``n``
    elements."""
    (k,) = reader.unpack("I", "k")
    if k > n:
        raise ValueError(f"k={k} > tensor size {n}")
    vcode, coding = reader.unpack("BB", "value dtype and position coding")
    if vcode not in _VALUE_NAMES:
        raise ValueError(
            f"value dtype code {vcode} is unknown; allowed: {sorted(_VALUE_NAMES)}"
        )
    (plen,) = reader.unpack("I", "position block length")
    vdtype = np.dtype(_VALUE_NAMES[vcode]).newbyteorder("<")
    reader.expect_remaining(
        plen + k * vdtype.itemsize, f"a position block of {plen} bytes and {k} values"
    )
    indices = packing.read_position_block(reader, coding, plen, k, n)
    # an overflow is refused just below, not warned
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.frombuffer(
            reader.take(k * vdtype.itemsize, "values"), dtype=vdtype
        ).astype(dtype)
    return Decoded((), dtype, indices, finite_or_raise(values, "top-k values"))
