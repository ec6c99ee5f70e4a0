"""The wire format of bouquet's compressed tensors: versioned, self-describing,
validated.

Every compressed tensor travels as one Flower ``Array(dtype, shape, stype, data)``:
``dtype`` and ``shape`` are those of the *decoded* tensor, ``stype`` names codec and
version (``bouquet.<codec>/<version>``, e.g. ``bouquet.topk/1``) and ``data`` is::

    header  = magic "BQ" | version u8 | codec u8 | dtype u8 | ndim u8 | shape u32[ndim]
    body    = codec specific (see ``topk``, ``ternary``, ``stc``;
              ``dense`` = raw little-endian elements)

All integers are little-endian. The decoder checks that the ``stype`` and the header
agree (codec, version), that the header's dtype and shape equal the ``Array``'s, that
the body has exactly the announced length (no truncation, no trailing bytes), and every
codec checks its own fields (index range and order, finite values and scales). Anything
wrong raises ``ValueError`` saying what was wrong.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bouquet.codecs import kernels

MAGIC = b"BQ"
VERSION = 1
STYPE_PREFIX = "bouquet."
# the uncompressed codec (``bouquet.dense/1``); the others live in their modules
DENSE = "dense"
DENSE_WIRE_ID = 0
DTYPE_CODES: dict[str, int] = {
    "float32": 0,
    "float16": 1,
    "float64": 2,
    "int64": 3,
    "int32": 4,
    "int16": 5,
    "int8": 6,
    "uint8": 7,
    "bool": 8,
}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
MAX_NDIM = 8


def stype_string(codec: str) -> str:
    """``bouquet.<codec>/<version>`` (no check that ``codec`` exists: see
    :func:`bouquet.codecs.catalog.stype_for`)."""
    return f"{STYPE_PREFIX}{codec}/{VERSION}"


def is_bouquet_stype(stype: str) -> bool:
    """Whether ``stype`` claims to be one of bouquet's encodings."""
    return stype.startswith(STYPE_PREFIX)


def split_stype(stype: str, known: Iterable[str]) -> tuple[str, int]:
    """Split ``bouquet.<codec>/<version>`` into ``(codec, version)``: the codec one of
    ``known``,
    the version this decoder's."""
    if not is_bouquet_stype(stype) or "/" not in stype:
        raise ValueError(
            f"stype {stype!r} is not of the form 'bouquet.<codec>/<version>'"
        )
    codec, _, version = stype[len(STYPE_PREFIX) :].partition("/")
    if codec not in known:
        raise ValueError(
            f"stype {stype!r}: codec {codec!r} is unknown; allowed: {sorted(known)}"
        )
    if version != str(VERSION):
        raise ValueError(
            f"stype {stype!r}: version {version!r} is not supported (this decoder "
            f"reads {VERSION})"
        )
    return codec, VERSION


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor: the four fields of a Flower ``Array``."""

    stype: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


_CHUNK = 1 << 18  # elements per block when a dense tensor is added to an accumulator


def sum_squares(values: np.ndarray) -> float:
    """Sum of squares of ``values`` in float64, in blocks of ``_CHUNK`` elements.

    Not ``np.dot``: float64 ``dot`` goes to the BLAS, whose threads made it 30-50x
    slower (7.5 ms for 117,000 elements) on this 2-core machine whenever another process
    was busy.
    """
    flat = values.reshape(-1)
    buf = np.empty(min(_CHUNK, flat.size), dtype=np.float64)
    total = 0.0
    for start in range(0, flat.size, _CHUNK):
        part = buf[: min(_CHUNK, flat.size - start)]
        np.square(flat[start : start + part.size], out=part, dtype=np.float64)
        total += float(part.sum())
    return total


@dataclass
class Decoded:
    """A decoded tensor: ``values`` at flat ``indices`` (``indices is None``: dense, all
    elements).

    With ``scale`` set, ``values`` are int8 trits or signs in {-1, 0, 1} and the tensor
    is ``scale * values`` (ternary and STC payloads stay 1 byte per element until they
    are added).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    indices: np.ndarray | None
    values: np.ndarray
    scale: float | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def real_values(self) -> np.ndarray:
        """The values as the tensor's dtype (``scale * values`` when scaled)."""
        if self.scale is None:
            return self.values.astype(self.dtype, copy=False)
        return (self.dtype.type(self.scale) * self.values).astype(
            self.dtype, copy=False
        )

    def to_dense(self) -> np.ndarray:
        """The dense tensor (zeros where nothing was sent)."""
        if self.indices is None:
            return self.real_values().reshape(self.shape)
        out = np.zeros(self.size, dtype=self.dtype)
        out[self.indices] = self.real_values()
        return out.reshape(self.shape)

    def factor(self, weight: float) -> float:
        """What ``values`` are multiplied by when the tensor is added with
        ``weight``."""
        return weight if self.scale is None else weight * float(self.scale)

    def add_to(self, acc: np.ndarray, weight: float) -> None:
        """``acc += weight * tensor`` on a flat accumulator: O(k) for sparse tensors,
        dense ones
        block by block (no temporary of the tensor's size)."""
        factor = self.factor(weight)
        # indices are unique and sorted (validated): fancy += is exact
        if self.indices is not None:
            if not kernels.scatter_add(acc, self.indices, self.values, factor):
                acc[self.indices] += factor * self.values.astype(acc.dtype, copy=False)
            return
        flat = self.values.reshape(-1)
        tmp = np.empty(min(_CHUNK, flat.size), dtype=acc.dtype)
        for start in range(0, flat.size, _CHUNK):
            part = tmp[: min(_CHUNK, flat.size - start)]
            np.multiply(
                flat[start : start + part.size], factor, out=part, casting="unsafe"
            )
            acc[start : start + part.size] += part

    def subtract_from(self, target: np.ndarray) -> None:
        """``target -= tensor`` on a flat array (the error-feedback residual), O(k) when
        sparse."""
        self.add_to(target, -1.0)

    def sq_norm(self) -> float:
        """Squared L2 norm of the tensor (float64)."""
        return sum_squares(self.values) * (
            1.0 if self.scale is None else float(self.scale) ** 2
        )


class Reader:
    """Sequential reader over a payload that raises ``ValueError`` on truncation;
    ``take``
    returns zero-copy views."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise ValueError(
                f"payload truncated: {what} needs {n} bytes at offset {self.offset}, "
                f"{self.remaining} left"
            )
        out = self.data[self.offset : self.offset + n]
        self.offset += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def expect_remaining(self, n: int, what: str) -> None:
        """The rest of the payload must be exactly ``n`` bytes (checked before any
        allocation)."""
        if self.remaining < n:
            raise ValueError(
                f"payload truncated: {what} need {n} bytes at offset {self.offset}, "
                f"{self.remaining} left"
            )
        if self.remaining > n:
            raise ValueError(
                f"payload has {self.remaining - n} trailing bytes after {what}"
            )

    def finish(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise ValueError(f"payload has {left} trailing bytes after the body")


def finite_or_raise(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` unchanged if all finite, else ``ValueError`` (NaN, inf or overflow of
    the dtype)."""
    if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
        raise ValueError(
            f"{what} contain NaN or inf (or overflow the tensor dtype {values.dtype})"
        )
    return values


def checked_scale(scale: float, dtype: np.dtype) -> float:
    """The float32 wire scale as the tensor's dtype; ``ValueError`` if it overflows that
    dtype."""
    typed = dtype.type(np.float32(scale))
    if not np.isfinite(typed):
        raise ValueError(f"scale {scale} overflows the tensor dtype {dtype}")
    return float(typed)


def numpy_dtype(name: str) -> np.dtype:
    if name not in DTYPE_CODES:
        raise ValueError(
            f"dtype {name!r} is not supported; allowed: {sorted(DTYPE_CODES)}"
        )
    return np.dtype(name)


def write_header(codec_id: int, dtype: str, shape: tuple[int, ...]) -> bytes:
    """Header bytes for a tensor of ``dtype`` and ``shape`` coded with the codec of wire
    id ``codec_id``."""
    if len(shape) > MAX_NDIM:
        raise ValueError(f"shape {shape} has more than {MAX_NDIM} dimensions")
    code = DTYPE_CODES.get(str(dtype))
    if code is None:
        raise ValueError(
            f"dtype {dtype!r} is not supported; allowed: {sorted(DTYPE_CODES)}"
        )
    return MAGIC + struct.pack(
        f"<BBBB{len(shape)}I", VERSION, codec_id, code, len(shape), *shape
    )


def read_header(
    reader: Reader, codec: str, codec_id: int, dtype: str, shape: tuple[int, ...]
) -> None:
    """Read and check a header against the ``Array``'s stype codec (wire id
    ``codec_id``), dtype and shape."""
    magic = reader.take(2, "magic")
    if magic != MAGIC:
        raise ValueError(f"bad magic {magic!r}, expected {MAGIC!r}")
    version, header_id, dtype_code, ndim = reader.unpack("BBBB", "header")
    if version != VERSION:
        raise ValueError(
            f"header version {version} is not supported (this decoder reads {VERSION})"
        )
    if header_id != codec_id:
        raise ValueError(
            f"header codec id {header_id} does not match stype codec {codec!r} "
            f"({codec_id})"
        )
    if DTYPE_NAMES.get(dtype_code) != str(dtype):
        raise ValueError(
            f"header dtype code {dtype_code} ({DTYPE_NAMES.get(dtype_code)}) does "
            f"not match Array dtype {dtype!r}"
        )
    if ndim > MAX_NDIM:
        raise ValueError(f"header ndim {ndim} > {MAX_NDIM}")
    header_shape = reader.unpack(f"{ndim}I", "shape") if ndim else ()
    if tuple(header_shape) != tuple(shape):
        raise ValueError(
            f"header shape {tuple(header_shape)} does not match Array shape "
            f"{tuple(shape)}"
        )


def encode_dense(x: np.ndarray) -> Encoded:
    """Uncompressed tensor in the bouquet wire format (``bouquet.dense/1``)."""
    x = np.asarray(x)
    dtype = str(x.dtype)
    body = x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
    return Encoded(
        stype_string(DENSE),
        dtype,
        tuple(x.shape),
        write_header(DENSE_WIRE_ID, dtype, tuple(x.shape)) + body,
    )


def decode_dense_body(reader: Reader, dtype: np.dtype, n: int) -> Decoded:
    reader.expect_remaining(n * dtype.itemsize, "dense values")
    values = np.frombuffer(
        reader.take(n * dtype.itemsize, "dense values"), dtype=dtype.newbyteorder("<")
    )
    if values.dtype != dtype:  # big-endian hosts only
        values = values.astype(dtype)
    return Decoded((), dtype, None, finite_or_raise(values, "dense values"))
