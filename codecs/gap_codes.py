"""Integer codes for the gaps between sorted positions: LEB128 varints and Golomb-Rice.

The position codings ``varint`` and ``rice`` of :mod:`bouquet.codecs.packing` code
sorted unique indices by their gaps :math:`d_0 = i_0 + 1,\\ d_j = i_j - i_{j-1} \\ge 1`:

* ``varint``: the gaps as LEB128 varints (:func:`varint_encode`, :func:`varint_decode`;
  7 bits a byte, at most 5 bytes a value);
* ``rice``: Golomb-Rice code of :math:`d_j - 1` with parameter :math:`r` (a quotient
  :math:`q = (d_j - 1) \\gg r` in unary, the remainder in :math:`r` raw bits;
  :func:`rice_encode`, :func:`rice_decode`). The unary parts and the remainders are
  stored as two separate bit streams: the same number of bits as the interleaved code,
  but both encode and decode vectorise (Golomb 1966; Rice 1979).
  :func:`best_rice_parameter` picks :math:`r` in :func:`rice_window`.

Sizes are had without encoding (:func:`varint_size`, :func:`rice_size_bits`). Every
decoder validates what it reads and raises ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import math

import numpy as np

_ZEROS_IN_BYTE = np.array([8 - bin(i).count("1") for i in range(256)], dtype=np.uint8)


# --------------------------------------------------------------------------- varint
def varint_encode(values: np.ndarray) -> bytes:
    """LEB128-encode non-negative integers (< 2**35) into bytes, vectorised."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.size, dtype=np.int64)
    for shift in (7, 14, 21, 28):
        nbytes += v >= (np.uint64(1) << np.uint64(shift))
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    owner = np.repeat(np.arange(v.size), nbytes)
    pos_in = np.arange(out.size) - starts[owner]
    chunk = (v[owner] >> (np.uint64(7) * pos_in.astype(np.uint64))) & np.uint64(0x7F)
    cont = pos_in < (nbytes[owner] - 1)
    out[:] = chunk.astype(np.uint8) | (cont.astype(np.uint8) << 7)
    return out.tobytes()


def varint_decode(data: bytes, count: int) -> np.ndarray:
    """Decode exactly ``count`` LEB128 varints (each at most 5 bytes) filling
    ``data``."""
    b = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if b.size:
            raise ValueError(f"varint block has {b.size} bytes but 0 values")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero((b & 0x80) == 0)
    if ends.size != count or ends[-1] != b.size - 1:
        raise ValueError(
            f"varint block holds {ends.size} complete values in {b.size} bytes, "
            f"expected {count}"
        )
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise ValueError(f"varint longer than 5 bytes ({int(lengths.max())})")
    owner = np.repeat(np.arange(count), lengths)
    pos_in = (np.arange(b.size) - starts[owner]).astype(np.uint64)
    parts = (b & 0x7F).astype(np.uint64) << (np.uint64(7) * pos_in)
    return np.add.reduceat(parts, starts).astype(np.int64)


def varint_size(gaps: np.ndarray) -> int:
    """Bytes of :func:`varint_encode` of ``gaps`` without building it."""
    return int(
        gaps.size
        + sum(int(np.count_nonzero(gaps >= (1 << s))) for s in (7, 14, 21, 28))
    )


# ----------------------------------------------------------------------- Golomb-Rice
def rice_size_bits(gaps: np.ndarray, r: int) -> int:
    """Bits of the Rice code of non-negative ``gaps`` with parameter ``r``."""
    return int(np.sum(gaps >> r, dtype=np.int64)) + gaps.size * (1 + r)


def best_rice_parameter(gaps: np.ndarray) -> int:
    """The Rice parameter in a window around ``log2(mean gap)`` giving the fewest bits
    (the
    optimum for geometric gaps is within one of it)."""
    if gaps.size == 0:
        return 0
    g = gaps.astype(np.int32, copy=False) if int(gaps.max()) < 2**31 else gaps
    return min(
        rice_window(int(gaps.sum(dtype=np.int64)), gaps.size),
        key=lambda r: rice_size_bits(g, r),
    )


def rice_window(total: int, count: int) -> range:
    """The Rice parameters tried for ``count`` gaps summing to ``total``: ``log2(mean
    gap)`` and its neighbours (from exact integers, so every encoder picks the same
    window)."""
    centre = int(math.log2(max(total / count, 1.0))) if count else 0
    return range(max(0, centre - 1), min(31, centre + 2))


def rice_encode(gaps: np.ndarray, r: int) -> bytes:
    """Rice-code non-negative ``gaps``: unary stream (``q`` ones, one zero), then
    remainders."""
    g = np.asarray(gaps)
    g = g.astype(np.int32 if g.size and int(g.max()) < 2**31 else np.int64, copy=False)
    q = g >> r
    ends = np.cumsum(q, dtype=np.int64)
    # the zero closing code j is at bit q_0 + ... + q_j + j
    ends += np.arange(1, g.size + 1)
    unary_len = int(ends[-1]) if g.size else 0
    unary = np.ones(unary_len, dtype=np.uint8)
    unary[ends - 1] = 0
    if not r:
        return np.packbits(unary).tobytes()
    if r > 8:
        rem_bits = (
            ((g[:, None] >> np.arange(r - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
        )
        return np.packbits(np.concatenate([unary, rem_bits])).tobytes()
    return _append_bits(
        np.packbits(unary),
        unary_len,
        _pack_fixed_width(g & ((1 << r) - 1), r),
        g.size * r,
    )


def _pack_fixed_width(values: np.ndarray, r: int) -> np.ndarray:
    """``values`` (each < 2**r, r <= 8) as consecutive r-bit fields, MSB first, packed
    in bytes:
    8 values make r bytes, built as one 64-bit word per group."""
    pad = (-values.size) % 8
    v = np.concatenate([values, np.zeros(pad, dtype=values.dtype)]) if pad else values
    v = v.astype(np.uint64).reshape(-1, 8)
    word = np.zeros(v.shape[0], dtype=np.uint64)
    for j in range(8):
        word |= v[:, j] << np.uint64(r * (7 - j) + 64 - 8 * r)
    packed = word.astype(">u8").view(np.uint8).reshape(-1, 8)[:, :r].reshape(-1)
    return packed[: (values.size * r + 7) // 8]


def _append_bits(
    head: np.ndarray, head_bits: int, tail: np.ndarray, tail_bits: int
) -> bytes:
    """The bit string ``head[:head_bits] + tail[:tail_bits]`` packed in bytes (both MSB
    first)."""
    shift = head_bits % 8
    if shift == 0 or tail.size == 0:
        return head.tobytes() + tail.tobytes()
    t = tail.astype(np.uint16)
    out_head = head.copy()
    out_head[-1] |= np.uint8(t[0] >> shift)
    rest = ((t << (8 - shift)) & 0xFF).astype(np.uint8)
    rest[:-1] |= (t[1:] >> shift).astype(np.uint8)
    total = (head_bits + tail_bits + 7) // 8
    return (out_head.tobytes() + rest.tobytes())[:total]


def _fixed_width_fields(
    b: np.ndarray, bit_offset: int, count: int, r: int
) -> np.ndarray:
    """``count`` consecutive ``r``-bit big-endian fields (r <= 31) starting at
    ``bit_offset`` of ``b``,
    read with five byte gathers per field (no expansion to one byte per bit)."""
    padded = np.zeros(b.size + 8, dtype=np.uint64)
    padded[: b.size] = b
    off = np.uint64(bit_offset) + np.arange(count, dtype=np.uint64) * np.uint64(r)
    byte = (off >> np.uint64(3)).astype(np.intp)
    window = np.zeros(count, dtype=np.uint64)
    for j in range(5):  # 40 bits hold any field of <= 31 bits at a bit shift of <= 7
        window = (window << np.uint64(8)) | padded[byte + j]
    shift = np.uint64(40 - r) - (off & np.uint64(7))
    return ((window >> shift) & np.uint64((1 << r) - 1)).astype(np.int64)


def rice_decode(data: bytes | memoryview, count: int, r: int) -> np.ndarray:
    """Decode ``count`` Rice-coded gaps with parameter ``r`` (see :func:`rice_encode`).

    Only the unary stream is expanded to bits (it ends at the ``count``-th zero bit,
    found with a per-byte zero count); the remainders are read as fixed-width fields.
    """
    b = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if b.size:
            raise ValueError(f"rice block has {b.size} bytes but 0 codes")
        return np.zeros(0, dtype=np.int64)
    if count > 8 * b.size:
        raise ValueError(f"rice block of {b.size} bytes cannot hold {count} codes")
    zeros_to = np.cumsum(_ZEROS_IN_BYTE[b], dtype=np.int64)
    last = int(np.searchsorted(zeros_to, count))  # the byte holding the count-th zero
    if last >= b.size:
        raise ValueError(f"rice block ends after {int(zeros_to[-1])} of {count} codes")
    zeros = np.flatnonzero(np.unpackbits(b[: last + 1]) == 0)[:count]
    unary_end = int(zeros[-1]) + 1
    total = unary_end + count * r
    if not total <= 8 * b.size < total + 8:
        raise ValueError(
            f"rice block has {8 * b.size} bits, expected {total} plus padding"
        )
    q = np.diff(zeros, prepend=-1) - 1
    if not r:
        return q.astype(np.int64)
    if r <= 8:
        rem = _unpack_fixed_width(_bits_from(b, unary_end, count * r), count, r)
    else:
        rem = _fixed_width_fields(b, unary_end, count, r)
    return (q.astype(np.int64) << r) | rem


def _bits_from(b: np.ndarray, bit_offset: int, nbits: int) -> np.ndarray:
    """The ``nbits`` bits of ``b`` from ``bit_offset`` on, re-aligned to start a
    byte."""
    start, shift = divmod(bit_offset, 8)
    nbytes = (nbits + 7) // 8
    part = b[start : start + nbytes + 1]
    if shift == 0:
        return part[:nbytes]
    t = part.astype(np.uint16)
    out = ((t[:nbytes] << shift) & 0xFF).astype(np.uint8)
    nxt = t[1 : nbytes + 1] >> (8 - shift)
    out[: nxt.size] |= nxt.astype(np.uint8)
    return out


def _unpack_fixed_width(packed: np.ndarray, count: int, r: int) -> np.ndarray:
    """Inverse of :func:`_pack_fixed_width`: ``count`` r-bit fields (r <= 8) from
    aligned bytes."""
    groups = (count + 7) // 8
    buf = np.zeros(groups * r, dtype=np.uint8)
    buf[: packed.size] = packed[: groups * r]
    g = buf.reshape(groups, r).astype(np.uint64)
    word = np.zeros(groups, dtype=np.uint64)
    for j in range(r):
        word = (word << np.uint64(8)) | g[:, j]
    mask = np.uint64((1 << r) - 1)
    fields = np.empty((groups, 8), dtype=np.int64)
    for j in range(8):
        fields[:, j] = (word >> np.uint64(r * (7 - j))) & mask
    return fields.reshape(-1)[:count]
