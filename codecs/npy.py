"""Flower's dense ``Array`` bytes (the ``.npy`` format), read and written without
surprises.

Flower serialises a dense array as the bytes of ``np.save`` (stype ``numpy.ndarray``),
and ``Array.numpy()`` reads them with ``np.load``, which allocates the *declared* shape
before it reads a single element: 30 hostile bytes can claim terabytes. :func:`read_npy`
parses the header itself, checks dtype, shape and the exact body length against what the
caller expects, and returns a zero-copy, read-only view of the bytes. :func:`npy_bytes`
builds the bytes of an array in place (header, then the elements), so an aggregate can
be written straight into the ``bytes`` that becomes the reply's ``Array.data``.
"""

from __future__ import annotations

import ast
import ctypes
import io
import math
import mmap
import sys

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
MAX_HEADER = (
    10_000  # numpy's own limit (np.load refuses longer headers): one reader, one limit
)
# far beyond any model; keeps element counts inside int64 arithmetic
MAX_ELEMENTS = 1 << 40


def element_count(shape: tuple[int, ...]) -> int:
    """Exact element count of ``shape`` (Python ints: no int64 overflow), bounded."""
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"shape {tuple(shape)} has a negative dimension")
    n = math.prod(int(s) for s in shape)
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"shape {tuple(shape)} declares {n} elements (more than {MAX_ELEMENTS})"
        )
    return n


def _parse_header(
    data: bytes | memoryview,
) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, body offset) of ``.npy`` bytes; ``ValueError`` if
    malformed."""
    if len(data) < 10 or bytes(data[:6]) != NPY_MAGIC:
        raise ValueError(f"not .npy bytes ({len(data)} bytes, bad magic)")
    major = data[6]
    if major == 1:
        hlen, start = int.from_bytes(bytes(data[8:10]), "little"), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise ValueError(".npy header truncated")
        hlen, start = int.from_bytes(bytes(data[8:12]), "little"), 12
    else:
        raise ValueError(f".npy version {major} is not supported")
    if hlen > MAX_HEADER or start + hlen > len(data):
        raise ValueError(
            f".npy header length {hlen} exceeds the {len(data)} bytes received"
        )
    try:
        header = ast.literal_eval(bytes(data[start : start + hlen]).decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f".npy header is not a literal: {exc}") from exc
    if not isinstance(header, dict) or set(header) != {
        "descr",
        "fortran_order",
        "shape",
    }:
        raise ValueError(".npy header must hold exactly descr, fortran_order and shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if (
        not isinstance(descr, str)
        or not isinstance(fortran, bool)
        or not isinstance(shape, tuple)
    ):
        raise ValueError(".npy header fields have the wrong types")
    if not all(isinstance(s, int) and s >= 0 for s in shape) or len(shape) > 32:
        raise ValueError(f".npy shape {shape!r} is not a tuple of non-negative ints")
    try:
        dtype = np.dtype(descr)
    except TypeError as exc:
        raise ValueError(f".npy dtype {descr!r} is not a numpy dtype") from exc
    if (
        dtype.hasobject
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.kind not in "biufc"
    ):
        raise ValueError(f".npy dtype {descr!r} is not a plain numeric dtype")
    return dtype, tuple(shape), fortran, start + hlen


def read_npy(
    data: bytes,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: str | np.dtype | None = None,
) -> np.ndarray:
    """A read-only view of the array in ``.npy`` bytes, validated before anything is
    allocated.

    ``shape`` / ``dtype`` (when given) must equal the header's; the body must hold
    exactly the declared elements. Raises ``ValueError`` saying what is wrong.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"array data is {type(data).__name__}, not bytes")
    got_dtype, got_shape, fortran, offset = _parse_header(data)
    if shape is not None and got_shape != tuple(shape):
        raise ValueError(
            f".npy shape {got_shape} differs from the declared shape {tuple(shape)}"
        )
    if dtype is not None and got_dtype != np.dtype(dtype):
        raise ValueError(
            f".npy dtype {got_dtype} differs from the declared dtype {np.dtype(dtype)}"
        )
    n = element_count(got_shape)
    if len(data) - offset != n * got_dtype.itemsize:
        raise ValueError(
            f".npy body has {len(data) - offset} bytes, {got_shape} {got_dtype} "
            f"needs {n * got_dtype.itemsize}"
        )
    flat = np.frombuffer(data, dtype=got_dtype, count=n, offset=offset)
    return flat.reshape(got_shape, order="F" if fortran else "C")


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header that ``np.save`` writes for a C-order array."""
    fields = np.lib.format.header_data_from_array_1_0(np.empty((0,), dtype=dtype))
    fields["shape"] = tuple(int(s) for s in shape)
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, fields)
    return out.getvalue()


def npy_bytes(
    dtype: np.dtype, shape: tuple[int, ...]
) -> tuple[bytes, np.ndarray] | None:
    """A new ``bytes`` object holding a ``.npy`` header and room for the elements, and a
    writable flat view of those elements; once they are written, the bytes are exactly
    what ``np.save`` writes. ``None`` where this cannot be done (then build the bytes by
    copying).

    This is the C API's way of building a ``bytes`` object in place
    (``PyBytes_FromStringAndSize(NULL, n)`` returns it uninitialised, to be filled
    before anyone else sees it), reached through ``ctypes`` on CPython. The view must
    not be written after the bytes are handed on. Why: a reply-sized ``bytes`` built by
    copying costs a second model-sized buffer and 4 KiB page faults on every round (26
    ms for 47 MB on this machine, 5 ms when the pages are advised as huge pages, which
    numpy does for its own arrays and this does too on Linux).
    """
    dtype = np.dtype(dtype)
    header = npy_header(dtype, shape)
    n = element_count(shape)
    size = len(header) + n * dtype.itemsize
    made = _fresh_bytes(size)
    if made is None:
        return None
    data, raw = made
    raw[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    return data, raw[len(header) :].view(dtype)


# bytes from which fresh buffers are advised as huge pages (numpy's rule)
_HUGE_FROM = 4 << 20


def _fresh_bytes(size: int) -> tuple[bytes, np.ndarray] | None:
    """An unshared, uninitialised ``bytes`` of ``size`` and a writable ``uint8`` view of
    it
    that keeps it alive (``None`` off CPython)."""
    # b"" and 1-byte bytes are shared singletons
    if sys.implementation.name != "cpython" or size <= 1:
        return None
    try:
        make = ctypes.pythonapi.PyBytes_FromStringAndSize
    except (AttributeError, OSError):
        return None
    make.restype, make.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_ssize_t]
    data = make(None, size)
    if not isinstance(data, bytes) or len(data) != size:
        return None
    addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    if addr is None:
        return None
    if size >= _HUGE_FROM:
        _advise_huge(addr, size)
    cells = (ctypes.c_uint8 * size).from_address(addr)
    cells._owner = data  # type: ignore[attr-defined]  # the view keeps the bytes alive
    return data, np.ctypeslib.as_array(cells)


def _advise_huge(addr: int, size: int) -> None:
    """``madvise(MADV_HUGEPAGE)`` on the whole pages of ``[addr, addr + size)`` (Linux;
    a hint:
    failures are ignored)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (AttributeError, OSError):
        return
    madvise.restype, madvise.argtypes = (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int],
    )
    page = mmap.PAGESIZE
    start, end = -(-addr // page) * page, (addr + size) // page * page
    if end > start:
        madvise(start, end - start, 14)  # MADV_HUGEPAGE
