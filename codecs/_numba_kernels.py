"""Compiled loops (numba) behind :mod:`bouquet.codecs.kernels`; import that module, not this one.

Every loop that reads client bytes checks its own bounds and returns a status code instead of
reading or writing outside its arrays (numba does not bounds-check); the callers turn a
non-zero status into the same ``ValueError`` the numpy code raises.
"""

from __future__ import annotations

import numpy as np
from numba import njit

OK, UNARY_SHORT, BIT_COUNT, OUT_OF_RANGE, LENGTHS = 0, 1, 2, 3, 4


def _zero_table() -> tuple[np.ndarray, np.ndarray]:
    """Per byte value: how many zero bits it has and where (0 = MSB), for the unary stream."""
    count = np.zeros(256, dtype=np.int64)
    where = np.zeros((256, 8), dtype=np.int64)
    for v in range(256):
        for t in range(8):
            if not (v >> (7 - t)) & 1:
                where[v, count[v]] = t
                count[v] += 1
    return count, where


ZERO_COUNT, ZERO_AT = _zero_table()


@njit(cache=True, nogil=True)
def rice_positions(b, count, r, n, out):  # type: ignore[no-untyped-def]
    """Decode ``count`` Rice-coded gaps (unary stream, then ``r``-bit remainders, see
    ``packing.rice_encode``) into sorted positions ``out[j] = sum(gap + 1) - 1``; the status is
    ``OK`` or why the block is invalid. Positions are checked against ``n`` as they are made.
    The unary stream is read a byte at a time through a table of its zero bits."""
    nbits = b.size * 8
    if count <= 0:
        return OK if nbits == 0 else BIT_COUNT
    zc, za = ZERO_COUNT, ZERO_AT
    q = 0
    j = 0
    bit = -1
    for i in range(b.size):
        v = b[i]
        z = zc[v]
        if z == 0:
            q += 8
            if q > n:  # (q << r) >= n: out of range whatever follows (and no overflow)
                return OUT_OF_RANGE
            continue
        last = -1
        for t in range(z):
            p = za[v, t]
            q += p - last - 1
            last = p
            if q > n:
                return OUT_OF_RANGE
            out[j] = q
            q = 0
            j += 1
            if j == count:
                bit = 8 * i + p + 1
                break
        if j == count:
            break
        q = 7 - last
    if j < count:
        return UNARY_SHORT
    total = bit + count * r
    if not (total <= nbits < total + 8):
        return BIT_COUNT
    pos = -1
    mask = (1 << r) - 1
    padded = np.zeros(b.size + 5, dtype=np.uint8)  # no bounds test per field (the tail reads as 0)
    padded[: b.size] = b
    for j in range(count):
        if out[j] > (n >> r):  # (q << r) >= n, checked before shifting (no overflow)
            return OUT_OF_RANGE
        rem = 0
        if r:
            byte = bit >> 3  # the 5 bytes from ``byte`` hold any r <= 31 field at a shift <= 7
            w = (np.int64(padded[byte]) << 32) | (np.int64(padded[byte + 1]) << 24) \
                | (np.int64(padded[byte + 2]) << 16) | (np.int64(padded[byte + 3]) << 8) | np.int64(padded[byte + 4])
            rem = (w >> (40 - r - (bit & 7))) & mask
            bit += r
        pos += (out[j] << r) + rem + 1
        if pos >= n:
            return OUT_OF_RANGE
        out[j] = pos
    return OK


@njit(cache=True, nogil=True)
def rice_sizes(idx, r_lo, r_hi):  # type: ignore[no-untyped-def]
    """Bits of the Rice code of the gaps ``idx[i] - idx[i-1] - 1`` (``idx[-1] = -1``) of sorted
    positions, for every parameter in ``r_lo..r_hi`` (one pass, no gap array)."""
    m = r_hi - r_lo + 1
    sums = np.zeros(m, dtype=np.int64)
    prev = -1
    for i in range(idx.size):
        g = idx[i] - prev - 1
        prev = idx[i]
        for t in range(m):
            sums[t] += g >> (r_lo + t)
    for t in range(m):
        sums[t] += idx.size * (1 + r_lo + t)
    return sums


@njit(cache=True, nogil=True)
def rice_encode(idx, r, out):  # type: ignore[no-untyped-def]
    """Write the Rice code of the gaps of sorted positions ``idx`` (see :func:`rice_sizes`) into ``out`` (sized by the caller from :func:`rice_sizes`):
    the unary stream (``q`` ones, a zero), then the ``r``-bit remainders, MSB first, the last byte
    zero-padded. Bits gather in a register and leave a byte at a time; returns the bit count."""
    reg = 0  # pending bits (fewer than 8 after each flush) in the low bits
    held = 0
    pos = 0
    total = 0
    prev = -1
    for i in range(idx.size):
        q = (idx[i] - prev - 1) >> r
        prev = idx[i]
        total += q + 1
        while q >= 24:  # ones in chunks, so the register never holds more than 32 bits
            reg = (reg << 24) | 0xFFFFFF
            held += 24
            q -= 24
            while held >= 8:
                held -= 8
                out[pos] = (reg >> held) & 0xFF
                pos += 1
            reg &= (1 << held) - 1
        reg = (((reg << q) | ((1 << q) - 1)) << 1)  # q ones and the closing zero
        held += q + 1
        while held >= 8:
            held -= 8
            out[pos] = (reg >> held) & 0xFF
            pos += 1
        reg &= (1 << held) - 1
    if r:
        mask = (1 << r) - 1
        prev = -1
        for i in range(idx.size):
            reg = (reg << r) | ((idx[i] - prev - 1) & mask)
            prev = idx[i]
            held += r
            total += r
            while held >= 8:
                held -= 8
                out[pos] = (reg >> held) & 0xFF
                pos += 1
            reg &= (1 << held) - 1
    if held:
        out[pos] = (reg << (8 - held)) & 0xFF
    return total


@njit(cache=True, nogil=True)
def scatter_add(acc, idx, values, factor):  # type: ignore[no-untyped-def]
    """``acc[idx[j]] += factor * values[j]`` (``values`` and ``factor`` of ``acc``'s dtype: numpy's
    ``acc[idx] += factor * values`` for unique indices, the same roundings); indices outside
    ``acc`` are refused before anything is written."""
    n = acc.size
    if values.size != idx.size:
        return LENGTHS
    for j in range(idx.size):
        if idx[j] < 0 or idx[j] >= n:
            return OUT_OF_RANGE
    for j in range(idx.size):
        acc[idx[j]] += factor * values[j]
    return OK


@njit(cache=True, nogil=True)
def ternary_candidates(part, u, bound, factor, start, cand, tie, neg):  # type: ignore[no-untyped-def]
    """One block of TernGrad's byte-draw ternarisation (``ternary.ternarize_sparse``), float32:
    ``q = min(min(|g|, bound) * factor, 255)`` in float32, keep when ``u < floor(q)``, a tie when
    ``u == floor(q)``. Writes the candidates' positions (``start`` + offset), tie flags and sign
    flags in order; returns how many."""
    m = 0
    b32 = np.float32(bound)
    f32 = np.float32(factor)
    top = np.float32(255.0)
    for i in range(part.size):
        q = abs(part[i])
        if bound >= 0 and q > b32:
            q = b32
        q = q * f32
        if q > top:
            q = top
        qi = np.uint8(q)
        cand[m] = start + i  # written always, kept by advancing m (no unpredictable branch)
        tie[m] = u[i] == qi
        neg[m] = part[i] < 0
        m += u[i] <= qi
    return m
