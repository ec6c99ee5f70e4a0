"""Decode any bouquet payload: dispatch on the ``stype`` and validate against dtype and shape.

:func:`decode` is the one entry point a receiver needs: given the four fields of a Flower
``Array`` it checks the stype (codec and version), the header (against the Array's dtype and
shape), the codec's body, and that nothing trails it. See ``wire.py`` for the format.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bouquet.codecs.stc import decode_stc_body
from bouquet.codecs.ternary import decode_ternary_body
from bouquet.codecs.topk import decode_topk_body
from bouquet.codecs.wire import (
    Decoded,
    Encoded,
    Reader,
    decode_dense_body,
    numpy_dtype,
    parse_stype,
    read_header,
)

BodyDecoder = Callable[[Reader, np.dtype, int], Decoded]
BODY_DECODERS: dict[str, BodyDecoder] = {
    "dense": decode_dense_body,
    "topk": decode_topk_body,
    "ternary": decode_ternary_body,
    "stc": decode_stc_body,
}


def decode(stype: str, dtype: str, shape: tuple[int, ...] | list[int], data: bytes) -> Decoded:
    """Decode one tensor; raises ``ValueError`` saying what is wrong with a bad payload."""
    codec, _ = parse_stype(stype)
    np_dtype = numpy_dtype(str(dtype))
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape {shape} has a negative dimension")
    reader = Reader(data)
    read_header(reader, codec, str(dtype), shape)
    n = int(np.prod(shape, dtype=np.int64))
    decoded = BODY_DECODERS[codec](reader, np_dtype, n)
    reader.finish()
    decoded.shape = shape
    return decoded


def decode_encoded(enc: Encoded) -> Decoded:
    """:func:`decode` of an :class:`~bouquet.codecs.wire.Encoded`."""
    return decode(enc.stype, enc.dtype, enc.shape, enc.data)
