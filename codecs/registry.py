"""Decode any bouquet payload: dispatch on the ``stype`` and validate against dtype and
shape.

:func:`decode` is the one entry point a receiver needs: given the four fields of a
Flower ``Array`` it checks the stype (codec and version), the header (against the
Array's dtype and shape), the codec's body, and that nothing trails it. See ``wire.py``
for the format.

Bounded work: every body decoder checks that the bytes left are exactly what its header
fields declare *before* it allocates, so memory and time are proportional to the
payload's bytes plus the declared tensor size (which a receiver checks against its own
model first). Only floating tensors may use a lossy codec; integer and bool tensors
travel as ``bouquet.dense/1``.
"""

from __future__ import annotations

from bouquet.codecs.catalog import CODECS
from bouquet.codecs.catalog import parse_stype
from bouquet.codecs.npy import element_count
from bouquet.codecs.wire import DENSE
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import Reader
from bouquet.codecs.wire import numpy_dtype
from bouquet.codecs.wire import read_header


def decode(
    stype: str, dtype: str, shape: tuple[int, ...] | list[int], data: bytes
) -> Decoded:
    """Decode one tensor; raises ``ValueError`` saying what is wrong with a bad
    payload."""
    codec, _ = parse_stype(stype)
    np_dtype = numpy_dtype(str(dtype))
    if codec != DENSE and np_dtype.kind != "f":
        raise ValueError(
            f"codec {codec!r} carries floating-point tensors only; a {np_dtype} "
            "tensor must be sent dense"
        )
    shape = tuple(int(s) for s in shape)
    n = element_count(shape)  # exact and bounded: no int64 wrap-around
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"payload is {type(data).__name__}, not bytes")
    reader = Reader(data)
    spec = CODECS[codec]
    read_header(reader, codec, spec.wire_id, str(dtype), shape)
    decoded = spec.decode_body(reader, np_dtype, n)
    reader.finish()
    decoded.shape = shape
    return decoded


def decode_encoded(enc: Encoded) -> Decoded:
    """:func:`decode` of an :class:`~bouquet.codecs.wire.Encoded`."""
    return decode(enc.stype, enc.dtype, enc.shape, enc.data)
