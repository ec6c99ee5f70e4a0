"""Bit packing for compressed updates: positions, trits, signs and values.

Positions of the non-zeros of a tensor with ``n`` elements, ``k`` of them kept (sorted,
unique), are coded with whichever of these is smallest for that tensor:

* ``all``: nothing (``k == n``);
* ``bitmap``: one bit per element, :math:`\\lceil n/8 \\rceil` bytes;
* ``varint``: gaps :math:`d_0 = i_0 + 1,\\ d_j = i_j - i_{j-1} \\ge 1` as LEB128 varints;
* ``rice``: Golomb-Rice code of :math:`d_j - 1` with parameter :math:`r` (a quotient
  :math:`q = (d_j - 1) \\gg r` in unary, the remainder in :math:`r` raw bits). The unary parts and
  the remainders are stored as two separate bit streams: the same number of bits as the
  interleaved code, but both encode and decode vectorise (Golomb 1966; Rice 1979; used for
  the positions of Sparse Ternary Compression, Sattler et al. 2019, arXiv:1903.02891);
* ``raw``: 4-byte little-endian indices (smallest only for a few indices in a huge tensor).

The information limit of a position set is :math:`\\log_2 \\binom{n}{k}` bits; ``rice`` with
the best :math:`r` stays within a few percent of it for random positions (see
``benchmarks/bench_packing.py``).

Ternary digits :math:`t \\in \\{-1, 0, 1\\}` are packed 5 per byte (:math:`3^5 = 243 \\le 256`,
1.6 bits each) or 4 per byte (2 bits each). Every decoder validates what it reads and raises
``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bouquet.codecs import kernels

POS_ALL, POS_BITMAP, POS_VARINT, POS_RICE, POS_RAW = 0, 1, 2, 3, 4
POS_CODING_NAMES = {POS_ALL: "all", POS_BITMAP: "bitmap", POS_VARINT: "varint", POS_RICE: "rice", POS_RAW: "raw"}
_MAX_U32 = 2**32 - 1
_TRIT_POW = np.array([1, 3, 9, 27, 81], dtype=np.uint16)
_ZEROS_IN_BYTE = np.array([8 - bin(i).count("1") for i in range(256)], dtype=np.uint8)
# byte -> its 5 trits (bytes >= 243 are invalid) and byte -> its 4 two-bit trits (code 3 invalid)
_TRIT_TABLE = ((np.arange(243, dtype=np.int16)[:, None] // _TRIT_POW.astype(np.int16)) % 3 - 1).astype(np.int8)
_2BIT_TABLE = (((np.arange(256)[:, None] >> np.array([0, 2, 4, 6])) & 3) - 1).astype(np.int8)


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
    """Decode exactly ``count`` LEB128 varints (each at most 5 bytes) filling ``data``."""
    b = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if b.size:
            raise ValueError(f"varint block has {b.size} bytes but 0 values")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero((b & 0x80) == 0)
    if ends.size != count or ends[-1] != b.size - 1:
        raise ValueError(f"varint block holds {ends.size} complete values in {b.size} bytes, expected {count}")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 5:
        raise ValueError(f"varint longer than 5 bytes ({int(lengths.max())})")
    owner = np.repeat(np.arange(count), lengths)
    pos_in = (np.arange(b.size) - starts[owner]).astype(np.uint64)
    parts = (b & 0x7F).astype(np.uint64) << (np.uint64(7) * pos_in)
    return np.add.reduceat(parts, starts).astype(np.int64)


# ----------------------------------------------------------------------- Golomb-Rice
def rice_size_bits(gaps: np.ndarray, r: int) -> int:
    """Bits of the Rice code of non-negative ``gaps`` with parameter ``r``."""
    return int(np.sum(gaps >> r, dtype=np.int64)) + gaps.size * (1 + r)


def best_rice_parameter(gaps: np.ndarray) -> int:
    """The Rice parameter in a window around ``log2(mean gap)`` giving the fewest bits (the
    optimum for geometric gaps is within one of it)."""
    if gaps.size == 0:
        return 0
    g = gaps.astype(np.int32, copy=False) if int(gaps.max()) < 2**31 else gaps
    return min(rice_window(int(gaps.sum(dtype=np.int64)), gaps.size), key=lambda r: rice_size_bits(g, r))


def rice_window(total: int, count: int) -> range:
    """The Rice parameters tried for ``count`` gaps summing to ``total``: ``log2(mean gap)`` and
    its neighbours (from exact integers, so every encoder picks the same window)."""
    centre = int(math.log2(max(total / count, 1.0))) if count else 0
    return range(max(0, centre - 1), min(31, centre + 2))


def rice_encode(gaps: np.ndarray, r: int) -> bytes:
    """Rice-code non-negative ``gaps``: unary stream (``q`` ones, one zero), then remainders."""
    g = np.asarray(gaps)
    g = g.astype(np.int32 if g.size and int(g.max()) < 2**31 else np.int64, copy=False)
    q = g >> r
    ends = np.cumsum(q, dtype=np.int64)
    ends += np.arange(1, g.size + 1)  # the zero closing code j is at bit q_0 + ... + q_j + j
    unary_len = int(ends[-1]) if g.size else 0
    unary = np.ones(unary_len, dtype=np.uint8)
    unary[ends - 1] = 0
    if not r:
        return np.packbits(unary).tobytes()
    if r > 8:
        rem_bits = ((g[:, None] >> np.arange(r - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
        return np.packbits(np.concatenate([unary, rem_bits])).tobytes()
    return _append_bits(np.packbits(unary), unary_len, _pack_fixed_width(g & ((1 << r) - 1), r), g.size * r)


def _pack_fixed_width(values: np.ndarray, r: int) -> np.ndarray:
    """``values`` (each < 2**r, r <= 8) as consecutive r-bit fields, MSB first, packed in bytes:
    8 values make r bytes, built as one 64-bit word per group."""
    pad = (-values.size) % 8
    v = np.concatenate([values, np.zeros(pad, dtype=values.dtype)]) if pad else values
    v = v.astype(np.uint64).reshape(-1, 8)
    word = np.zeros(v.shape[0], dtype=np.uint64)
    for j in range(8):
        word |= v[:, j] << np.uint64(r * (7 - j) + 64 - 8 * r)
    packed = word.astype(">u8").view(np.uint8).reshape(-1, 8)[:, :r].reshape(-1)
    return packed[: (values.size * r + 7) // 8]


def _append_bits(head: np.ndarray, head_bits: int, tail: np.ndarray, tail_bits: int) -> bytes:
    """The bit string ``head[:head_bits] + tail[:tail_bits]`` packed in bytes (both MSB first)."""
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


def _fixed_width_fields(b: np.ndarray, bit_offset: int, count: int, r: int) -> np.ndarray:
    """``count`` consecutive ``r``-bit big-endian fields (r <= 31) starting at ``bit_offset`` of ``b``,
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

    Only the unary stream is expanded to bits (it ends at the ``count``-th zero bit, found with
    a per-byte zero count); the remainders are read as fixed-width fields.
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
        raise ValueError(f"rice block has {8 * b.size} bits, expected {total} plus padding")
    q = np.diff(zeros, prepend=-1) - 1
    if not r:
        return q.astype(np.int64)
    if r <= 8:
        rem = _unpack_fixed_width(_bits_from(b, unary_end, count * r), count, r)
    else:
        rem = _fixed_width_fields(b, unary_end, count, r)
    return (q.astype(np.int64) << r) | rem


def _bits_from(b: np.ndarray, bit_offset: int, nbits: int) -> np.ndarray:
    """The ``nbits`` bits of ``b`` from ``bit_offset`` on, re-aligned to start a byte."""
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
    """Inverse of :func:`_pack_fixed_width`: ``count`` r-bit fields (r <= 8) from aligned bytes."""
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


# ------------------------------------------------------------------------ positions
def _gaps(indices: np.ndarray) -> np.ndarray:
    return np.diff(indices, prepend=-1)


def varint_size(gaps: np.ndarray) -> int:
    """Bytes of :func:`varint_encode` of ``gaps`` without building it."""
    return int(gaps.size + sum(int(np.count_nonzero(gaps >= (1 << s))) for s in (7, 14, 21, 28)))


def encode_positions(indices: np.ndarray, n: int, coding: int | None = None) -> tuple[int, bytes]:
    """Code sorted unique ``indices`` in ``[0, n)``; the smallest coding unless ``coding`` is given.

    Returns
    -------
    (int, bytes)
        The coding id (``POS_*``) and the block bytes (``rice`` starts with one byte ``r``).
    """
    idx = np.asarray(indices, dtype=np.int64)
    k = idx.size
    if coding is None and k == n:
        return POS_ALL, b""
    # big position sets: the compiled loops read the gaps straight off idx (no gap arrays)
    compiled = kernels.rice_best(idx, rice_window(int(idx[-1]) + 1 - k, k)) if k and coding in (None, POS_RICE) else None
    gaps = None if compiled is not None else _gaps(idx)
    rice_r = rice_bits = None
    if coding is None:
        if compiled is not None:
            rice_r, rice_bits = compiled
        else:
            g1 = _gaps(idx) - 1 if gaps is None else gaps - 1
            rice_r = best_rice_parameter(g1)
            rice_bits = rice_size_bits(g1, rice_r)
        sizes = {
            POS_BITMAP: (n + 7) // 8,
            POS_RICE: 1 + (rice_bits + 7) // 8,
            POS_RAW: 4 * k,
        }
        if min(sizes.values()) > k:  # varint costs >= k bytes: only when it may win
            sizes[POS_VARINT] = varint_size(_gaps(idx) if gaps is None else gaps)
        coding = min(sizes, key=sizes.__getitem__)
    if coding == POS_ALL:
        if k != n:
            raise ValueError(f"position coding 'all' needs k == n, got k={k}, n={n}")
        return POS_ALL, b""
    if coding == POS_BITMAP:
        bits = np.zeros(n, dtype=np.uint8)
        bits[idx] = 1
        return POS_BITMAP, np.packbits(bits).tobytes()
    if coding == POS_VARINT:
        return POS_VARINT, varint_encode(_gaps(idx) if gaps is None else gaps)
    if coding == POS_RICE:
        if compiled is not None:
            fast = kernels.rice_encode(idx, compiled[0], compiled[1])
            if fast is not None:
                return POS_RICE, bytes([compiled[0]]) + fast
        g1 = (_gaps(idx) if gaps is None else gaps) - 1
        r = best_rice_parameter(g1) if rice_r is None else rice_r
        return POS_RICE, bytes([r]) + rice_encode(g1, r)
    if coding == POS_RAW:
        return POS_RAW, idx.astype("<u4").tobytes()
    raise ValueError(f"position coding={coding!r} is unknown; allowed: {sorted(POS_CODING_NAMES)}")


def decode_positions(coding: int, block: bytes, k: int, n: int) -> np.ndarray:
    """Decode a position block into ``k`` sorted unique indices in ``[0, n)`` (validated)."""
    if coding == POS_ALL:
        if block or k != n:
            raise ValueError(f"position coding 'all' needs an empty block and k == n (k={k}, n={n})")
        return np.arange(n, dtype=np.int64)
    if coding == POS_BITMAP:
        if len(block) != (n + 7) // 8:
            raise ValueError(f"bitmap has {len(block)} bytes, a tensor of {n} elements needs {(n + 7) // 8}")
        b = np.frombuffer(block, dtype=np.uint8)
        nonzero = np.flatnonzero(b)  # only bytes with a set bit are expanded
        rows, cols = np.nonzero(np.unpackbits(b[nonzero][:, None], axis=1))
        idx = nonzero[rows].astype(np.int64) * 8 + cols
        if idx.size != k:
            raise ValueError(f"bitmap marks {idx.size} positions, header says k={k}")
        if k and idx[-1] >= n:
            raise ValueError("bitmap has bits set beyond the tensor size (index out of range)")
        return idx
    if coding == POS_VARINT:
        gaps = varint_decode(block, k)
        if k and gaps.min() < 1:
            raise ValueError("varint gaps must be >= 1 (indices not strictly increasing)")
        idx = np.cumsum(gaps) - 1
    elif coding == POS_RICE:
        if not len(block):
            raise ValueError("rice block is empty (no parameter byte)")
        r = block[0]
        if r > 31:
            raise ValueError(f"rice parameter r={r} > 31")
        if k > 8 * (len(block) - 1):
            raise ValueError(f"rice block of {len(block) - 1} bytes cannot hold {k} codes")
        fast = kernels.rice_positions(block[1:], k, r, n)
        idx = fast if fast is not None else np.cumsum(rice_decode(block[1:], k, r) + 1) - 1
    elif coding == POS_RAW:
        if len(block) != 4 * k:
            raise ValueError(f"raw position block has {len(block)} bytes, k={k} needs {4 * k}")
        idx = np.frombuffer(block, dtype="<u4").astype(np.int64)
        if k > 1 and np.any(np.diff(idx) <= 0):
            raise ValueError("raw indices are unsorted or repeated (must be strictly increasing)")
    else:
        raise ValueError(f"position coding {coding} is unknown; allowed: {sorted(POS_CODING_NAMES)}")
    if k and (idx[0] < 0 or idx[-1] >= n):
        raise ValueError(f"index {int(idx[-1])} out of range for a tensor of {n} elements")
    return idx


# -------------------------------------------------------------------------- trits
def pack_trits(t: np.ndarray) -> bytes:
    """Pack values in {-1, 0, 1} five per byte (base 3, digit = t + 1)."""
    d = np.asarray(t, dtype=np.int8).reshape(-1).view(np.uint8) + np.uint8(1)  # -1 -> 0, 0 -> 1, 1 -> 2
    pad = (-d.size) % 5
    if pad:
        d = np.concatenate([d, np.ones(pad, dtype=np.uint8)])  # pad with t = 0
    d5 = d.reshape(-1, 5)
    out = d5[:, 4] * np.uint8(3)
    for j in (3, 2, 1):  # Horner: ((d4 * 3 + d3) * 3 + d2) * 3 + ...; stays < 243 in uint8
        out += d5[:, j]
        out *= np.uint8(3)
    out += d5[:, 0]
    return out.tobytes()


def unpack_trits(data: bytes | memoryview, n: int) -> np.ndarray:
    """Unpack ``n`` trits packed by :func:`pack_trits` (bytes must be < 243)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size != (n + 4) // 5:
        raise ValueError(f"trit block has {b.size} bytes, {n} trits need {(n + 4) // 5}")
    if b.size and b.max() >= 243:
        raise ValueError(f"trit byte {int(b.max())} >= 243 is not 5 base-3 digits")
    return _TRIT_TABLE[b].reshape(-1)[:n]


def pack_2bit(t: np.ndarray) -> bytes:
    """Pack values in {-1, 0, 1} four per byte (code t + 1 in 2 bits; code 3 is invalid)."""
    d = np.asarray(t, dtype=np.int8).reshape(-1).view(np.uint8) + np.uint8(1)
    pad = (-d.size) % 4
    if pad:
        d = np.concatenate([d, np.ones(pad, dtype=np.uint8)])
    d4 = d.reshape(-1, 4)
    return (d4[:, 0] | (d4[:, 1] << 2) | (d4[:, 2] << 4) | (d4[:, 3] << 6)).astype(np.uint8).tobytes()


def unpack_2bit(data: bytes | memoryview, n: int) -> np.ndarray:
    """Unpack ``n`` 2-bit trits packed by :func:`pack_2bit`."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size != (n + 3) // 4:
        raise ValueError(f"2-bit block has {b.size} bytes, {n} trits need {(n + 3) // 4}")
    t = _2BIT_TABLE[b].reshape(-1)
    if np.any(t == 2):
        raise ValueError("2-bit code 3 is not a trit")
    return t[:n]


def pack_signs(negative: np.ndarray) -> bytes:
    """One bit per value: 1 = negative."""
    return np.packbits(np.asarray(negative, dtype=np.uint8)).tobytes()


def unpack_signs(data: bytes | memoryview, k: int) -> np.ndarray:
    """``k`` signs (+1 / -1 as int8) from :func:`pack_signs`."""
    if len(data) != (k + 7) // 8:
        raise ValueError(f"sign block has {len(data)} bytes, {k} signs need {(k + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:k]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def position_entropy_bits(n: int, k: int) -> float:
    """:math:`\\log_2 \\binom{n}{k}`: the information limit of a set of k positions out of n."""
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def read_position_block(reader: Any, coding: int, plen: int, k: int, n: int) -> np.ndarray | None:
    """The positions of a body from ``reader`` (a :class:`bouquet.codecs.wire.Reader` whose rest
    was already checked to hold ``plen`` position bytes): ``None`` for coding 'all'."""
    if coding == POS_ALL:
        if k != n or plen:
            raise ValueError(f"position coding 'all' needs an empty block and k == n (k={k}, n={n})")
        return None
    return decode_positions(coding, reader.take(plen, "position block"), k, n)
