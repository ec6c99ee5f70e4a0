"""Compiled loops (numba) behind :mod:`bouquet.codecs.kernels`; import that module, not
this one.

Every loop that reads client bytes checks its own bounds and returns a status code
instead of reading or writing outside its arrays (numba does not bounds-check); the
callers turn a non-zero status into the same ``ValueError`` the numpy code raises.
"""

from __future__ import annotations

import numpy as np
from numba import njit

OK, UNARY_SHORT, BIT_COUNT, OUT_OF_RANGE, LENGTHS, UNSORTED = 0, 1, 2, 3, 4, 5


def _unary_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per byte value of the unary stream (MSB first; a code is ones ended by a zero):
    how many zero bits it has, where they are, the runs of ones that each of them ends,
    and the ones after the last zero (8 when there is no zero)."""
    count = np.zeros(256, dtype=np.int64)
    where = np.zeros((256, 8), dtype=np.int64)
    runs = np.zeros((256, 8), dtype=np.int64)
    tail = np.zeros(256, dtype=np.int64)
    for v in range(256):
        ones = 0
        for t in range(8):
            if (v >> (7 - t)) & 1:
                ones += 1
            else:
                where[v, count[v]] = t
                runs[v, count[v]] = ones
                count[v] += 1
                ones = 0
        tail[v] = ones
    return count, where, runs, tail


ZERO_COUNT, ZERO_AT, ZERO_RUNS, ONES_TAIL = _unary_tables()
SLACK = 8  # extra entries ``rice_positions`` may write past ``count`` in ``out``


@njit(cache=True, nogil=True)
def rice_positions(b, count, r, n, out):  # type: ignore[no-untyped-def]
    """Decode ``count`` Rice-coded gaps (unary stream, then ``r``-bit remainders, see
    ``packing.rice_encode``) into sorted positions ``out[j] = sum(gap + 1) - 1``; the
    status is ``OK`` or why the block is invalid. ``out`` needs ``count + SLACK``
    entries.

    The unary stream is read a byte at a time: the byte's runs of ones come from a table
    and are written as eight entries whatever the byte holds (no branch per code), the
    count of its zeros advances the output. Remainders come out of a 64-bit bit
    register. Quotients and positions are checked against ``n`` (no overflow, nothing
    outside the tensor)."""
    nbits = b.size * 8
    if out.size < count + SLACK:
        return LENGTHS
    if count <= 0:
        return OK if nbits == 0 else BIT_COUNT
    zc, za, runs, tail = ZERO_COUNT, ZERO_AT, ZERO_RUNS, ONES_TAIL
    carry = 0  # ones since the last zero bit
    j = 0
    i = 0
    while i < b.size:
        v = b[i]
        z = zc[v]
        if j + z >= count:
            break
        for t in range(8):
            out[j + t] = runs[v, t]
        out[j] += carry
        j += z
        carry = tail[v] + (carry if z == 0 else 0)
        if carry > n:  # (q << r) >= n: out of range whatever follows (and no overflow)
            return OUT_OF_RANGE
        i += 1
    if i == b.size:
        return UNARY_SHORT
    v = b[i]  # the byte holding the count-th zero bit
    t = 0
    while j < count:
        out[j] = runs[v, t] + (carry if t == 0 else 0)
        j += 1
        t += 1
    bit = 8 * i + za[v, t - 1] + 1  # first remainder bit
    total = bit + count * r
    if not (total <= nbits < total + 8):
        return BIT_COUNT
    limit = n >> r
    pos = -1
    if r == 0:
        for j in range(count):
            if out[j] > limit:
                return OUT_OF_RANGE
            pos += out[j] + 1
            out[j] = pos
        return OK if pos < n else OUT_OF_RANGE
    mask = np.uint64((1 << r) - 1)
    byte = bit >> 3
    have = 8 - (bit & 7)
    reg = np.uint64(b[byte]) & np.uint64((1 << have) - 1)
    byte += 1
    for j in range(count):
        # at most 4 bytes (r <= 31); past the block reads as 0 (counted above)
        while have < r:
            reg = (reg << np.uint64(8)) | (
                np.uint64(b[byte]) if byte < b.size else np.uint64(0)
            )
            byte += 1
            have += 8
        have -= r
        rem = np.int64((reg >> np.uint64(have)) & mask)
        reg &= (np.uint64(1) << np.uint64(have)) - np.uint64(1)
        if out[j] > limit:  # (q << r) >= n, checked before shifting (no overflow)
            return OUT_OF_RANGE
        # positions increase: the last one is checked below
        pos += (out[j] << r) + rem + 1
        out[j] = pos
    return OK if pos < n else OUT_OF_RANGE


@njit(cache=True, nogil=True)
def rice_sizes(idx, r_lo, r_hi):  # type: ignore[no-untyped-def]
    """Bits of the Rice code of the gaps ``idx[i] - idx[i-1] - 1`` (``idx[-1] = -1``) of
    sorted positions, for every parameter in ``r_lo..r_hi`` (one pass, no gap array)."""
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
def _flush32(reg, held, out, pos):  # type: ignore[no-untyped-def]
    """Move the oldest 32 of the ``held`` (>= 32) bits in ``reg`` to ``out[pos:pos +
    4]``."""
    held -= 32
    word = reg >> held
    out[pos] = (word >> 24) & 0xFF
    out[pos + 1] = (word >> 16) & 0xFF
    out[pos + 2] = (word >> 8) & 0xFF
    out[pos + 3] = word & 0xFF
    return reg & ((1 << held) - 1), held, pos + 4


@njit(cache=True, nogil=True)
def rice_encode(idx, r, out):  # type: ignore[no-untyped-def]
    """Write the Rice code of the gaps of sorted positions ``idx`` (see
    :func:`rice_sizes`) into ``out`` (sized by the caller from :func:`rice_sizes`): the
    unary stream (``q`` ones, a zero), then the ``r``-bit remainders, MSB first, the
    last byte zero-padded. Bits gather in a 64-bit register (under 32 pending between
    codes) and leave 32 at a time; returns the bit count."""
    reg = 0
    held = 0
    pos = 0
    total = 0
    prev = -1
    for i in range(idx.size):
        q = (idx[i] - prev - 1) >> r
        prev = idx[i]
        total += q + 1
        while q >= 31:  # ones in chunks: the register never holds more than 62 bits
            reg = (reg << 31) | 0x7FFFFFFF
            held += 31
            q -= 31
            if held >= 32:
                reg, held, pos = _flush32(reg, held, out, pos)
        reg = (reg << (q + 1)) | (((1 << q) - 1) << 1)  # q ones and the closing zero
        held += q + 1
        if held >= 32:
            reg, held, pos = _flush32(reg, held, out, pos)
    if r:
        mask = (1 << r) - 1
        prev = -1
        for i in range(idx.size):
            reg = (reg << r) | ((idx[i] - prev - 1) & mask)
            prev = idx[i]
            held += r
            total += r
            if held >= 32:
                reg, held, pos = _flush32(reg, held, out, pos)
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
    """``acc[idx[j]] += factor * values[j]`` (``values`` and ``factor`` of ``acc``'s
    dtype: numpy's ``acc[idx] += factor * values`` for unique indices, the same
    roundings); indices outside ``acc`` are refused before anything is written."""
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
    """One block of TernGrad's byte-draw ternarisation (``ternary.ternarize_sparse``),
    float32:
    ``q = min(min(|g|, bound) * factor, 255)`` in float32, keep when ``u < floor(q)``, a
    tie when ``u == floor(q)``. Writes the candidates' positions (``start`` + offset),
    tie flags and sign flags in order; returns how many (or -1 when a buffer is shorter
    than the block)."""
    if min(cand.size, tie.size, neg.size, u.size) < part.size:
        return -1
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
        # written always, kept by advancing m (no unpredictable branch)
        cand[m] = start + i
        tie[m] = u[i] == qi
        neg[m] = part[i] < 0
        m += u[i] <= qi
    return m


@njit(cache=True, nogil=True)
def drop_entries(a, b, drop):  # type: ignore[no-untyped-def]
    """Remove entries ``drop`` (strictly increasing, inside both arrays) from ``a`` and
    ``b`` in place, keeping the order; returns the new length (-1 when ``drop`` is not
    valid)."""
    n = min(a.size, b.size)
    prev = -1
    for j in range(drop.size):
        if drop[j] <= prev or drop[j] >= n:
            return -1
        prev = drop[j]
    if drop.size == 0:
        return n
    w = drop[0]
    d = 0
    for i in range(drop[0], n):
        if d < drop.size and i == drop[d]:
            d += 1
            continue
        a[w] = a[i]
        b[w] = b[i]
        w += 1
    return w


@njit(cache=True, nogil=True)
def stage_positions(idx, n, out):  # type: ignore[no-untyped-def]
    """Copy positions into ``out`` (same length) while checking they are strictly
    increasing and inside ``[0, n)``: what :func:`sparse_sum` relies on to stay inside
    its arrays."""
    if out.size != idx.size:
        return LENGTHS
    prev = -1
    for j in range(idx.size):
        v = idx[j]
        if v >= n or v < 0:
            return OUT_OF_RANGE
        if v <= prev:
            return UNSORTED
        out[j] = v
        prev = v
    return OK


@njit(cache=True, nogil=True)
def sparse_sum(acc, src, idx, vals, starts, tile):  # type: ignore[no-untyped-def]
    """``acc[idx[s]] += vals[s]`` for the segments ``starts[r]:starts[r+1]`` (one per
    update, each strictly increasing, staged by :func:`stage_positions`), in tiles of
    ``acc``: each tile is first set from ``src`` (when ``src`` is not empty), then gets
    every segment's entries in it, segment after segment, so each element sees its
    additions in segment order (numpy's result) while the tile stays in cache. Re-checks
    the staged bounds before writing anything."""
    n = acc.size
    m = starts.size - 1
    if src.size != 0 and src.size != n:
        return LENGTHS
    if m < 0 or starts[0] != 0 or starts[m] > idx.size or starts[m] > vals.size:
        return LENGTHS
    for r in range(m):
        if starts[r + 1] < starts[r]:
            return LENGTHS
        if starts[r + 1] > starts[r] and (
            idx[starts[r]] < 0 or idx[starts[r + 1] - 1] >= n
        ):
            return OUT_OF_RANGE
    cur = starts[:m].copy()
    for t0 in range(0, n, tile):
        t1 = min(n, t0 + tile)
        if src.size:
            acc[t0:t1] = src[t0:t1]
        for r in range(m):
            j = cur[r]
            end = starts[r + 1]
            stop = j
            while stop < end and idx[stop] < t1:
                stop += 1
            for q in range(j, stop):
                acc[idx[q]] += vals[q]
            cur[r] = stop
    return OK
