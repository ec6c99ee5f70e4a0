"""Compiled hot loops for big tensors: Rice position coding and sparse accumulation.

The codecs' numpy code is exact but makes several passes over the data (Rice codes expanded to
bit arrays, fancy-index ``+=`` as a gather and a scatter). For tensors with at least
:data:`MIN_CODES` kept elements, the same operations run as single compiled loops
(``bouquet.codecs._numba_kernels``, numba, compiled on first use and cached on disk), with
byte-identical payloads and bit-identical sums (tested against the numpy code). Smaller tensors,
and every tensor when numba is missing or ``BOUQUET_KERNELS=0`` is set, take the numpy code:
a small model's ClientApp never imports numba (0.4 s).

The kernels check their own bounds (numba does not) and report a status that the callers turn
into the numpy code's ``ValueError``; no validation is skipped.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

MIN_CODES = 1 << 16  # kept elements from which the compiled loops are used
_module: ModuleType | None = None
_failed = False


def _kernels() -> ModuleType | None:
    global _module, _failed
    if _module is None and not _failed:
        try:
            from bouquet.codecs import _numba_kernels

            _module = _numba_kernels
        except ImportError:
            _failed = True
    return _module


def enabled(count: int) -> ModuleType | None:
    """The compiled kernels if they should handle ``count`` elements, else ``None``."""
    if count < MIN_CODES or os.environ.get("BOUQUET_KERNELS", "1") == "0":
        return None
    return _kernels()


def status_error(status: int, what: str) -> ValueError:
    """The ``ValueError`` for a kernel's non-zero ``status``."""
    reasons = {1: "the unary stream ends before all codes", 2: "the bit count does not match the codes",
               3: "a position is out of range for the tensor", 4: "values and positions differ in number"}
    return ValueError(f"{what}: {reasons.get(status, f'status {status}')}")


def rice_positions(block: bytes | memoryview, count: int, r: int, n: int) -> np.ndarray | None:
    """Sorted positions from a Rice block (``None``: use the numpy decoder); ``ValueError`` when
    the block is invalid. ``count <= 8 * len(block)`` must have been checked by the caller."""
    k = enabled(count)
    if k is None:
        return None
    out = np.empty(count, dtype=np.int64)
    status = k.rice_positions(np.frombuffer(block, dtype=np.uint8), count, r, n, out)
    if status:
        raise status_error(int(status), "rice position block")
    return out


def rice_best(idx: np.ndarray, r_window: range) -> tuple[int, int] | None:
    """``(r, bits)``: the parameter in ``r_window`` giving the shortest Rice code of the gaps
    ``idx[i] - idx[i-1] - 1`` of sorted positions (the first on a tie) and its length (``None``:
    use the numpy code)."""
    k = enabled(idx.size)
    if k is None:
        return None
    sizes = k.rice_sizes(np.ascontiguousarray(idx, dtype=np.int64), r_window.start, r_window.stop - 1)
    best = int(np.argmin(sizes))
    return r_window.start + best, int(sizes[best])


def rice_encode(idx: np.ndarray, r: int, bits: int) -> bytes | None:
    """The Rice code of the gaps of sorted positions ``idx`` with parameter ``r`` and length
    ``bits`` (from :func:`rice_best`); ``None``: use the numpy encoder."""
    k = enabled(idx.size)
    if k is None:
        return None
    out = np.empty((bits + 7) // 8, dtype=np.uint8)
    written = k.rice_encode(np.ascontiguousarray(idx, dtype=np.int64), r, out)
    if written != bits:  # a bug, not client input
        raise RuntimeError(f"rice encoder wrote {written} bits, sized {bits}")
    return out.tobytes()


def scatter_add(acc: np.ndarray, idx: np.ndarray, values: np.ndarray, factor: float) -> bool:
    """``acc[idx] += factor * values`` (unique ``idx``) in one compiled pass; ``False``: not done
    (use numpy). ``ValueError`` if an index is outside ``acc``."""
    k = enabled(idx.size)
    if k is None or acc.dtype not in (np.float32, np.float64) or idx.dtype != np.int64:
        return False
    vals = np.ascontiguousarray(values).astype(acc.dtype, copy=False)
    status = k.scatter_add(acc, idx, vals, acc.dtype.type(factor))
    if status:
        raise status_error(int(status), "sparse update")
    return True


def ternary_block(part: np.ndarray, u: np.ndarray, bound: float | None, factor: float, start: int,
                  buffers: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int | None:
    """Candidates of one float32 block of TernGrad's byte-draw ternarisation into ``buffers``
    (positions, tie flags, sign flags; each at least ``part.size`` long); ``None``: use numpy.
    The caller decides by the whole tensor's size (:func:`enabled`); a block may be smaller."""
    k = _kernels() if part.dtype == np.float32 else None
    if k is None:
        return None
    cand, tie, neg = buffers
    if min(cand.size, tie.size, neg.size, u.size) < part.size:
        raise ValueError("ternary_block buffers are shorter than the block")
    return int(k.ternary_candidates(part, u, -1.0 if bound is None else float(bound), float(factor), int(start),
                                    cand, tie, neg))
