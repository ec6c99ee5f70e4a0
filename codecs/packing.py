"""Bit packing for compressed updates: positions, trits and signs.

Positions of the non-zeros of a tensor with ``n`` elements, ``k`` of them kept (sorted,
unique), are coded with whichever of these is smallest for that tensor:

* ``all``: nothing (``k == n``);
* ``bitmap``: one bit per element, :math:`\\lceil n/8 \\rceil` bytes;
* ``varint``: gaps :math:`d_0 = i_0 + 1,\\ d_j = i_j - i_{j-1} \\ge 1` as LEB128
  varints;
* ``rice``: Golomb-Rice code of :math:`d_j - 1` with the best parameter :math:`r`
  (Golomb 1966; Rice 1979; used for the positions of Sparse Ternary Compression, Sattler
  et al. 2019, arXiv:1903.02891);
* ``raw``: 4-byte little-endian indices (smallest only for a few indices in a huge
  tensor).

The varint and Rice codes themselves are in :mod:`bouquet.codecs.gap_codes` (imported
here, so ``packing.varint_encode``, ``packing.rice_decode``, ... keep working).

The information limit of a position set is :math:`\\log_2 \\binom{n}{k}` bits; ``rice``
with the best :math:`r` stays within a few percent of it for random positions (see
``benchmarks/bench_packing.py``).

Ternary digits :math:`t \\in \\{-1, 0, 1\\}` are packed 5 per byte
(:math:`3^5 = 243 \\le 256`, 1.6 bits each) or 4 per byte (2 bits each). Every decoder
validates what it reads and raises ``ValueError`` naming what is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bouquet.codecs import kernels
from bouquet.codecs.gap_codes import best_rice_parameter
from bouquet.codecs.gap_codes import rice_decode
from bouquet.codecs.gap_codes import rice_encode
from bouquet.codecs.gap_codes import rice_size_bits
from bouquet.codecs.gap_codes import rice_window
from bouquet.codecs.gap_codes import varint_decode
from bouquet.codecs.gap_codes import varint_encode
from bouquet.codecs.gap_codes import varint_size

POS_ALL, POS_BITMAP, POS_VARINT, POS_RICE, POS_RAW = 0, 1, 2, 3, 4
POS_CODING_NAMES = {
    POS_ALL: "all",
    POS_BITMAP: "bitmap",
    POS_VARINT: "varint",
    POS_RICE: "rice",
    POS_RAW: "raw",
}
_MAX_U32 = 2**32 - 1
_TRIT_POW = np.array([1, 3, 9, 27, 81], dtype=np.uint16)
# byte -> its 5 trits (bytes >= 243 are invalid) and byte -> its 4 two-bit trits (code 3
# invalid)
_TRIT_TABLE = (
    (np.arange(243, dtype=np.int16)[:, None] // _TRIT_POW.astype(np.int16)) % 3 - 1
).astype(np.int8)
_2BIT_TABLE = (((np.arange(256)[:, None] >> np.array([0, 2, 4, 6])) & 3) - 1).astype(
    np.int8
)


# ------------------------------------------------------------------------ positions
def _gaps(indices: np.ndarray) -> np.ndarray:
    return np.diff(indices, prepend=-1)


def encode_positions(
    indices: np.ndarray, n: int, coding: int | None = None
) -> tuple[int, bytes]:
    """Code sorted unique ``indices`` in ``[0, n)``; the smallest coding unless
    ``coding`` is given.

    Returns
    -------
    (int, bytes)
        The coding id (``POS_*``) and the block bytes (``rice`` starts with one byte
        ``r``).
    """
    idx = np.asarray(indices, dtype=np.int64)
    k = idx.size
    if coding is None and k == n:
        return POS_ALL, b""
    # big position sets: the compiled loops read the gaps straight off idx (no gap
    # arrays)
    compiled = (
        kernels.rice_best(idx, rice_window(int(idx[-1]) + 1 - k, k))
        if k and coding in (None, POS_RICE)
        else None
    )
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
    raise ValueError(
        f"position coding={coding!r} is unknown; allowed: {sorted(POS_CODING_NAMES)}"
    )


def decode_positions(coding: int, block: bytes, k: int, n: int) -> np.ndarray:
    """Decode a position block into ``k`` sorted unique indices in ``[0, n)``
    (validated)."""
    if coding == POS_ALL:
        if block or k != n:
            raise ValueError(
                f"position coding 'all' needs an empty block and k == n (k={k}, n={n})"
            )
        return np.arange(n, dtype=np.int64)
    if coding == POS_BITMAP:
        if len(block) != (n + 7) // 8:
            raise ValueError(
                f"bitmap has {len(block)} bytes, a tensor of {n} elements needs "
                f"{(n + 7) // 8}"
            )
        b = np.frombuffer(block, dtype=np.uint8)
        nonzero = np.flatnonzero(b)  # only bytes with a set bit are expanded
        rows, cols = np.nonzero(np.unpackbits(b[nonzero][:, None], axis=1))
        idx = nonzero[rows].astype(np.int64) * 8 + cols
        if idx.size != k:
            raise ValueError(f"bitmap marks {idx.size} positions, header says k={k}")
        if k and idx[-1] >= n:
            raise ValueError(
                "bitmap has bits set beyond the tensor size (index out of range)"
            )
        return idx
    if coding == POS_VARINT:
        gaps = varint_decode(block, k)
        if k and gaps.min() < 1:
            raise ValueError(
                "varint gaps must be >= 1 (indices not strictly increasing)"
            )
        idx = np.cumsum(gaps) - 1
    elif coding == POS_RICE:
        if not len(block):
            raise ValueError("rice block is empty (no parameter byte)")
        r = block[0]
        if r > 31:
            raise ValueError(f"rice parameter r={r} > 31")
        if k > 8 * (len(block) - 1):
            raise ValueError(
                f"rice block of {len(block) - 1} bytes cannot hold {k} codes"
            )
        fast = kernels.rice_positions(block[1:], k, r, n)
        idx = (
            fast
            if fast is not None
            else np.cumsum(rice_decode(block[1:], k, r) + 1) - 1
        )
    elif coding == POS_RAW:
        if len(block) != 4 * k:
            raise ValueError(
                f"raw position block has {len(block)} bytes, k={k} needs {4 * k}"
            )
        idx = np.frombuffer(block, dtype="<u4").astype(np.int64)
        if k > 1 and np.any(np.diff(idx) <= 0):
            raise ValueError(
                "raw indices are unsorted or repeated (must be strictly increasing)"
            )
    else:
        raise ValueError(
            f"position coding {coding} is unknown; allowed: {sorted(POS_CODING_NAMES)}"
        )
    if k and (idx[0] < 0 or idx[-1] >= n):
        raise ValueError(
            f"index {int(idx[-1])} out of range for a tensor of {n} elements"
        )
    return idx


# -------------------------------------------------------------------------- trits
def pack_trits(t: np.ndarray) -> bytes:
    """Pack values in {-1, 0, 1} five per byte (base 3, digit = t + 1)."""
    # -1 -> 0, 0 -> 1, 1 -> 2
    d = np.asarray(t, dtype=np.int8).reshape(-1).view(np.uint8) + np.uint8(1)
    pad = (-d.size) % 5
    if pad:
        d = np.concatenate([d, np.ones(pad, dtype=np.uint8)])  # pad with t = 0
    d5 = d.reshape(-1, 5)
    out = d5[:, 4] * np.uint8(3)
    # Horner: ((d4 * 3 + d3) * 3 + d2) * 3 + ...; stays < 243 in uint8
    for j in (3, 2, 1):
        out += d5[:, j]
        out *= np.uint8(3)
    out += d5[:, 0]
    return out.tobytes()


def unpack_trits(data: bytes | memoryview, n: int) -> np.ndarray:
    """Unpack ``n`` trits packed by :func:`pack_trits` (bytes must be < 243)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size != (n + 4) // 5:
        raise ValueError(
            f"trit block has {b.size} bytes, {n} trits need {(n + 4) // 5}"
        )
    if b.size and b.max() >= 243:
        raise ValueError(f"trit byte {int(b.max())} >= 243 is not 5 base-3 digits")
    return _TRIT_TABLE[b].reshape(-1)[:n]


def pack_2bit(t: np.ndarray) -> bytes:
    """Pack values in {-1, 0, 1} four per byte (code t + 1 in 2 bits; code 3 is
    invalid)."""
    d = np.asarray(t, dtype=np.int8).reshape(-1).view(np.uint8) + np.uint8(1)
    pad = (-d.size) % 4
    if pad:
        d = np.concatenate([d, np.ones(pad, dtype=np.uint8)])
    d4 = d.reshape(-1, 4)
    return (
        (d4[:, 0] | (d4[:, 1] << 2) | (d4[:, 2] << 4) | (d4[:, 3] << 6))
        .astype(np.uint8)
        .tobytes()
    )


def unpack_2bit(data: bytes | memoryview, n: int) -> np.ndarray:
    """Unpack ``n`` 2-bit trits packed by :func:`pack_2bit`."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size != (n + 3) // 4:
        raise ValueError(
            f"2-bit block has {b.size} bytes, {n} trits need {(n + 3) // 4}"
        )
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
        raise ValueError(
            f"sign block has {len(data)} bytes, {k} signs need {(k + 7) // 8}"
        )
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:k]
    return (1 - 2 * bits.astype(np.int8)).astype(np.int8)


def position_entropy_bits(n: int, k: int) -> float:
    """:math:`\\log_2 \\binom{n}{k}`: the information limit of a set of k positions out
    of n."""
    return (
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    ) / math.log(2)


def read_position_block(
    reader: Any, coding: int, plen: int, k: int, n: int
) -> np.ndarray | None:
    """The positions of a body from ``reader`` (a :class:`bouquet.codecs.wire.Reader`
    whose rest was already checked to hold ``plen`` position bytes): ``None`` for coding
    'all'."""
    if coding == POS_ALL:
        if k != n or plen:
            raise ValueError(
                f"position coding 'all' needs an empty block and k == n (k={k}, n={n})"
            )
        return None
    return decode_positions(coding, reader.take(plen, "position block"), k, n)
