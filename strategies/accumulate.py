"""Weighted sums of decoded updates written straight into the bytes of a dense Flower ``Array``.

:class:`Accumulator` holds ``w + sum_i c_i u_i`` for one tensor in a flat buffer (lent from round
to round by its owner) and returns it as a dense ``Array`` in one copy; Flower's dtype rule
applies (floats keep their dtype, the rest becomes float64; float16 is summed in float32).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array

from bouquet.codecs import Decoded
from bouquet.codecs.npy import npy_header
from bouquet.strategies.decoding import DENSE_STYPE, aggregate_dtype, dense_view


class Accumulator:
    """``ref + sum(weight * update)`` summed in a flat buffer (Flower's dtype rule: floats keep
    their dtype, the rest becomes float64; float16 is summed in float32), returned as the
    bytes of a dense ``Array``.

    ``scratch`` (a dict kept by the strategy) lends the buffer from round to round, so a warm
    server pays no page faults for it: one model-sized buffer lives between rounds.
    """

    def __init__(self, name: str, ref: np.ndarray, scratch: dict[str, np.ndarray] | None = None) -> None:
        self.shape = tuple(int(s) for s in ref.shape)
        self.dtype = aggregate_dtype(ref)
        work = self.dtype if self.dtype.itemsize >= 4 else np.dtype(np.float32)
        buf = None if scratch is None else scratch.get(name)
        if buf is None or buf.dtype != work or buf.size != ref.size:
            buf = np.empty(ref.size, dtype=work)
            if scratch is not None:
                scratch[name] = buf
        self.acc = buf
        np.copyto(self.acc, ref.reshape(-1), casting="unsafe")

    def add(self, dec: Decoded, weight: float) -> None:
        dec.add_to(self.acc, weight)

    def array(self) -> Array:
        body = memoryview(np.ascontiguousarray(self.acc.astype(self.dtype, copy=False))).cast("B")  # type: ignore[arg-type]
        data = b"".join((npy_header(self.dtype, self.shape), body))  # one copy into the reply bytes
        return Array(dtype=str(self.dtype), shape=self.shape, stype=DENSE_STYPE, data=data)


def npy_array(ref: np.ndarray, adds: list[tuple[Decoded, float]]) -> Array:
    """``ref + sum(weight * update)`` as a dense ``Array`` (see :class:`Accumulator`)."""
    acc = Accumulator("", ref)
    for dec, weight in adds:
        acc.add(dec, weight)
    return acc.array()


def finite_npy(arr: Array) -> bool:
    view = dense_view(arr)
    return view.dtype.kind != "f" or bool(np.isfinite(view.sum())) or bool(np.all(np.isfinite(view)))
