"""Weighted sums of decoded updates written straight into the bytes of a dense Flower
``Array``.

:class:`Accumulator` builds ``w + sum_i c_i u_i`` for one tensor directly in the
``bytes`` that become the aggregate's ``Array.data``
(:func:`bouquet.codecs.npy.npy_bytes`): no model-sized buffer besides the output, no
copy at the end. Big sparse updates are staged and added in one tiled pass that also
copies ``w`` (:class:`bouquet.codecs.kernels.SparseSum`). Flower's dtype rule applies
(floats keep their dtype, the rest becomes float64; float16 is summed in float32 and
converted at the end).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array

from bouquet.codecs import Decoded
from bouquet.codecs.kernels import SparseSum
from bouquet.codecs.npy import npy_bytes
from bouquet.codecs.npy import npy_header
from bouquet.strategies.decoding import DENSE_STYPE
from bouquet.strategies.decoding import aggregate_dtype
from bouquet.strategies.decoding import dense_view


class Accumulator:
    """``ref + sum(weight * update)`` for one tensor, returned as a dense ``Array`` of
    ``dtype``
    (default: Flower's aggregate dtype of ``ref``).

    The sum is made in the output bytes themselves when the tensor's aggregate dtype is
    at least 4 bytes wide (else in a float32 buffer converted at the end). Additions
    land in the order they are made, so the result is bit-identical to adding update
    after update with numpy.
    """

    def __init__(self, ref: np.ndarray, dtype: np.dtype | None = None) -> None:
        self.shape = tuple(int(s) for s in ref.shape)
        self.dtype = aggregate_dtype(ref) if dtype is None else np.dtype(dtype)
        self.work = self.dtype if self.dtype.itemsize >= 4 else np.dtype(np.float32)
        self._ref = ref.reshape(-1)
        self._data: bytes | None = (
            None  # the output bytes, when the sum is made in them
        )
        self._acc: np.ndarray | None = None  # flat sum so far (allocated on first need)
        self._staged = SparseSum.create(self._ref.size, self.work)

    def add(self, dec: Decoded, weight: float) -> None:
        staged = self._staged
        if staged is not None and dec.indices is not None:
            if staged.take(dec.indices, dec.values, dec.factor(weight)):
                return
            # the stage is full: apply it and stage this update afresh
            if staged.pending:
                self._apply_staged()
                if staged.take(dec.indices, dec.values, dec.factor(weight)):
                    return
        self._apply_staged()
        dec.add_to(self._sum(), weight)

    def _allocate(self) -> np.ndarray:
        made = npy_bytes(self.dtype, self.shape) if self.work == self.dtype else None
        if made is None:
            self._acc = np.empty(self._ref.size, dtype=self.work)
        else:
            self._data, self._acc = made
        return self._acc

    def _sum(self) -> np.ndarray:
        """The flat sum so far (``ref`` when nothing was added)."""
        acc = self._acc
        if acc is None:
            acc = self._allocate()
            np.copyto(acc, self._ref, casting="unsafe")
        return acc

    def _apply_staged(self) -> None:
        if self._staged is None or not self._staged.pending:
            return
        if self._acc is None:  # the staged pass sets each tile from ref first
            self._staged.apply(self._allocate(), self._ref)
        else:
            self._staged.apply(self._acc)

    def array(self) -> Array:
        """The sum as a dense ``Array``; the accumulator is spent."""
        self._apply_staged()
        acc, data = self._sum(), self._data
        self._acc = self._data = self._staged = None
        if data is None:
            contiguous = np.ascontiguousarray(acc.astype(self.dtype, copy=False))
            body = memoryview(contiguous).cast("B")  # type: ignore[arg-type]
            # one copy into the reply bytes
            data = b"".join((npy_header(self.dtype, self.shape), body))
        return Array(
            dtype=str(self.dtype), shape=self.shape, stype=DENSE_STYPE, data=data
        )


def npy_array(
    ref: np.ndarray, adds: list[tuple[Decoded, float]], dtype: np.dtype | None = None
) -> Array:
    """``ref + sum(weight * update)`` as a dense ``Array`` (see
    :class:`Accumulator`)."""
    acc = Accumulator(ref, dtype)
    for dec, weight in adds:
        acc.add(dec, weight)
    return acc.array()


def finite_npy(arr: Array) -> bool:
    view = dense_view(arr)
    return (
        view.dtype.kind != "f"
        or bool(np.isfinite(view.sum()))
        or bool(np.all(np.isfinite(view)))
    )
