"""Compiled hot loops for big tensors: Rice position coding and sparse accumulation.

The codecs' numpy code is exact but makes several passes over the data (Rice codes
expanded to bit arrays, fancy-index ``+=`` as a gather and a scatter). For tensors with
at least :data:`MIN_CODES` kept elements, the same operations run as single compiled
loops (``bouquet.codecs._numba_kernels``, numba, compiled on first use and cached on
disk), with byte-identical payloads and bit-identical sums (tested against the numpy
code). Smaller tensors, and every tensor when numba is missing or ``BOUQUET_KERNELS=0``
is set, take the numpy code: a small model's ClientApp never imports numba.

The kernels check their own bounds (numba does not) and report a status that the callers
turn into the numpy code's ``ValueError``; no validation is skipped.
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
    reasons = {
        1: "the unary stream ends before all codes",
        2: "the bit count does not match the codes",
        3: "a position is out of range for the tensor",
        4: "values and positions differ in number",
        5: "positions are not strictly increasing",
    }
    return ValueError(f"{what}: {reasons.get(status, f'status {status}')}")


def rice_positions(
    block: bytes | memoryview, count: int, r: int, n: int
) -> np.ndarray | None:
    """Sorted positions from a Rice block (``None``: use the numpy decoder);
    ``ValueError`` when the block is invalid. ``count <= 8 * len(block)`` must have been
    checked by the caller."""
    k = enabled(count)
    if k is None:
        return None
    out = np.empty(count + k.SLACK, dtype=np.int64)
    status = k.rice_positions(np.frombuffer(block, dtype=np.uint8), count, r, n, out)
    if status:
        raise status_error(int(status), "rice position block")
    return out[:count]


def rice_best(idx: np.ndarray, r_window: range) -> tuple[int, int] | None:
    """``(r, bits)``: the parameter in ``r_window`` giving the shortest Rice code of the
    gaps ``idx[i] - idx[i-1] - 1`` of sorted positions (the first on a tie) and its
    length (``None``: use the numpy code)."""
    k = enabled(idx.size)
    if k is None:
        return None
    sizes = k.rice_sizes(
        np.ascontiguousarray(idx, dtype=np.int64), r_window.start, r_window.stop - 1
    )
    best = int(np.argmin(sizes))
    return r_window.start + best, int(sizes[best])


def rice_encode(idx: np.ndarray, r: int, bits: int) -> bytes | None:
    """The Rice code of the gaps of sorted positions ``idx`` with parameter ``r`` and
    length
    ``bits`` (from :func:`rice_best`); ``None``: use the numpy encoder."""
    k = enabled(idx.size)
    if k is None:
        return None
    out = np.empty((bits + 7) // 8, dtype=np.uint8)
    written = k.rice_encode(np.ascontiguousarray(idx, dtype=np.int64), r, out)
    if written != bits:  # a bug, not client input
        raise RuntimeError(f"rice encoder wrote {written} bits, sized {bits}")
    return out.tobytes()


def scatter_add(
    acc: np.ndarray, idx: np.ndarray, values: np.ndarray, factor: float
) -> bool:
    """``acc[idx] += factor * values`` (unique ``idx``) in one compiled pass; ``False``:
    not done
    (use numpy). ``ValueError`` if an index is outside ``acc``."""
    k = enabled(idx.size)
    if k is None or acc.dtype not in (np.float32, np.float64) or idx.dtype != np.int64:
        return False
    vals = np.ascontiguousarray(values).astype(acc.dtype, copy=False)
    status = k.scatter_add(acc, idx, vals, acc.dtype.type(factor))
    if status:
        raise status_error(int(status), "sparse update")
    return True


# accumulator elements per tile of :class:`SparseSum` (256 KiB of float32: stays in L2)
TILE = 1 << 16
SPARSE_FROM = (
    16  # :class:`SparseSum` stages updates keeping at most 1 element in this many
)


class SparseSum:
    """Sparse additions ``acc[idx] += factor * values`` of many updates, staged and then
    applied
    in one tiled compiled pass.

    One update at a time, every addition lands on its own cache line of a model-sized
    accumulator (20 updates of 1% of 11.7M elements: 2.3M cache misses, 19 ms here).
    Staged, the pass walks the accumulator tile by tile and adds every update's entries
    in that tile while it sits in cache, optionally setting the tile from the global
    model first (the copy comes free). Each element still gets its additions in the
    order they were staged, so the sums are bit-identical to numpy's ``acc[idx] +=
    factor * values`` applied update after update.

    Staging copies positions (checked: strictly increasing, inside the tensor; int32
    when the tensor allows) and the values times their factor, in the accumulator's
    dtype. At most ``capacity`` entries are staged (default a quarter of the tensor: 2
    bytes per element of a float32 tensor under 2^31 elements); :meth:`take` returns
    ``False`` when an update does not fit, and the caller then applies what is staged
    and adds that update itself. Denser updates (more than 1 element in
    :data:`SPARSE_FROM`) are not staged: their additions already walk the accumulator
    nearly in order.
    """

    def __init__(self, size: int, dtype: np.dtype, capacity: int | None = None) -> None:
        self.size, self.dtype = int(size), np.dtype(dtype)
        self.capacity = (
            max(MIN_CODES, self.size // 4) if capacity is None else int(capacity)
        )
        self._idx: np.ndarray | None = None
        self._val: np.ndarray | None = None
        self._starts = [0]

    @classmethod
    def create(cls, size: int, dtype: np.dtype) -> SparseSum | None:
        """A stager for an accumulator of ``size`` elements of ``dtype``, or ``None``
        when the compiled loops are off or cannot handle it (then add update by
        update)."""
        if (
            np.dtype(dtype) not in (np.float32, np.float64)
            or enabled(max(size, 0)) is None
        ):
            return None
        return cls(size, dtype)

    @property
    def pending(self) -> bool:
        return len(self._starts) > 1

    def take(self, idx: np.ndarray, values: np.ndarray, factor: float) -> bool:
        """Stage ``factor * values`` at ``idx`` (``False``: not staged, add it
        yourself);
        ``ValueError`` if the positions are not strictly increasing inside the
        tensor."""
        k = enabled(idx.size)
        off = self._starts[-1]
        if (
            k is None
            or idx.dtype != np.int64
            or off + idx.size > self.capacity
            or idx.size * SPARSE_FROM > self.size
        ):
            return False
        if values.size != idx.size:
            raise status_error(4, "sparse update")
        if self._idx is None or self._val is None:
            self._idx = np.empty(
                self.capacity, dtype=np.int32 if self.size <= 1 << 31 else np.int64
            )
            self._val = np.empty(self.capacity, dtype=self.dtype)
        end = off + idx.size
        status = k.stage_positions(idx, self.size, self._idx[off:end])
        if status:
            raise status_error(int(status), "sparse update")
        np.multiply(
            values,
            self.dtype.type(factor),
            out=self._val[off:end],
            dtype=self.dtype,
            casting="unsafe",
        )
        self._starts.append(end)
        return True

    def apply(self, acc: np.ndarray, src: np.ndarray | None = None) -> None:
        """Add everything staged to the flat ``acc`` (first set from ``src`` when given)
        and
        empty the stage."""
        k = _kernels()
        if k is None or self._idx is None or self._val is None:
            raise RuntimeError("SparseSum.apply without staged updates")
        if acc.dtype != self.dtype or acc.size != self.size:
            raise RuntimeError(
                f"SparseSum of {self.size} {self.dtype} applied to {acc.size} "
                f"{acc.dtype}"
            )
        if src is not None and src.dtype != acc.dtype:
            np.copyto(acc, src, casting="unsafe")
            src = None
        empty = np.empty(0, dtype=acc.dtype)
        status = k.sparse_sum(
            acc,
            empty if src is None else src.reshape(-1),
            self._idx,
            self._val,
            np.asarray(self._starts, dtype=np.int64),
            TILE,
        )
        if status:  # staged data is checked: a bug, not client input
            raise RuntimeError(
                f"sparse_sum failed: {status_error(int(status), 'staged updates')}"
            )
        self._starts = [0]


def drop_entries(
    a: np.ndarray, b: np.ndarray, drop: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """``a`` and ``b`` without the entries at the strictly increasing positions
    ``drop``,
    compacted in place (``None``: use numpy)."""
    k = enabled(a.size)
    if k is None:
        return None
    m = int(k.drop_entries(a, b, np.ascontiguousarray(drop, dtype=np.int64)))
    if m < 0:
        raise ValueError(
            "drop_entries: positions are not strictly increasing inside the arrays"
        )
    return a[:m], b[:m]


TERNARY_BLOCK = 1 << 20  # elements per call of the compiled ternary selection


def ternary_candidates(
    g: np.ndarray, u: np.ndarray, bound: float | None, factor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Candidates of TernGrad's byte-draw ternarisation of a flat float32 ``g`` (``u``:
    one random byte per element), compiled: positions, tie flags and sign flags, in
    order (``None``: use numpy). Written block by block straight into the output
    buffers, which start at a quarter of ``g`` and double when a gradient keeps more."""
    k = enabled(g.size) if g.dtype == np.float32 else None
    if k is None:
        return None
    if u.size < g.size:
        raise ValueError(f"{u.size} random bytes for {g.size} elements")
    cap = max(TERNARY_BLOCK, g.size // 4)
    bufs = (
        np.empty(cap, dtype=np.int64),
        np.empty(cap, dtype=np.bool_),
        np.empty(cap, dtype=np.bool_),
    )
    m = 0
    bound_arg = -1.0 if bound is None else float(bound)
    for start in range(0, g.size, TERNARY_BLOCK):
        part = g[start : start + TERNARY_BLOCK]
        if cap - m < part.size:  # a block can keep all its elements
            cap = max(2 * cap, m + part.size)
            grown = (
                np.empty(cap, dtype=np.int64),
                np.empty(cap, dtype=np.bool_),
                np.empty(cap, dtype=np.bool_),
            )
            for old, new in zip(bufs, grown, strict=True):
                new[:m] = old[:m]
            bufs = grown
        got = k.ternary_candidates(
            part,
            u[start : start + part.size],
            bound_arg,
            float(factor),
            start,
            *(b[m:] for b in bufs),
        )
        if got < 0:
            raise RuntimeError("ternary selection buffers are shorter than the block")
        m += int(got)
    return bufs[0][:m], bufs[1][:m], bufs[2][:m]
