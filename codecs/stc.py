"""Sparse Ternary Compression (STC) of model updates.

Sattler et al. 2019 (arXiv:1903.02891): keep the top-:math:`m` elements of the
(error-feedback accumulated) update :math:`a`, replace each kept value by its sign times
the mean kept magnitude

.. math::

    \\mu = \\frac{1}{m} \\sum_{i \\in \\mathrm{top}_m} |a_i|, \\qquad
    \\tilde a_i = \\mu \\operatorname{sign}(a_i)\\,[i \\in \\mathrm{top}_m],

and send :math:`\\mu`, the positions (Golomb-Rice or whichever coding is smallest) and
one sign bit per position. :math:`m` follows :func:`bouquet.codecs.topk.topk_count`.

Body of ``bouquet.stc/1`` (after the ``wire`` header)::

    mu f32 | k u32 | position coding u8 | position bytes u32 | positions
    | ceil(k/8) sign bytes
"""

from __future__ import annotations

import numpy as np

from bouquet.codecs.ternary import read_scale
from bouquet.codecs.ternary import read_sparse_ternary
from bouquet.codecs.ternary import sparse_ternary_body
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import Reader
from bouquet.codecs.wire import checked_scale
from bouquet.codecs.wire import stype_string
from bouquet.codecs.wire import write_header

NAME = "stc"  # the codec's name: bouquet.stc/1 (see bouquet.codecs.catalog)
WIRE_ID = 3  # its id in the header (wire.py)


def encode_stc(
    x: np.ndarray, indices: np.ndarray, *, pos_coding: int | None = None
) -> tuple[Encoded, Decoded]:
    """Encode ``x`` at sorted unique flat ``indices`` as :math:`\\pm\\mu` (an exact zero
    among the kept values is not sent). Returns the payload and what the receiver
    decodes (sparse)."""
    x = np.asarray(x)
    flat = x.reshape(-1)
    idx = np.asarray(indices, dtype=np.int64)
    kept = flat[idx]
    mu = np.float32(np.abs(kept).mean()) if idx.size else np.float32(0.0)
    nonzero = kept != 0
    if mu == 0:  # all kept values are zero: send nothing
        nonzero[:] = False
    if not nonzero.all():
        idx, kept = idx[nonzero], kept[nonzero]
    shape, dtype = tuple(x.shape), str(x.dtype)
    data = (
        write_header(WIRE_ID, dtype, shape)
        + mu.astype("<f4").tobytes()
        + sparse_ternary_body(idx, kept < 0, flat.size, pos_coding)
    )
    signs = np.where(kept < 0, -1, 1).astype(np.int8)
    # all kept: positions coded as 'all'
    full = idx.size == flat.size and pos_coding is None
    sent = Decoded(
        shape, x.dtype, None if full else idx, signs, scale=float(x.dtype.type(mu))
    )
    return Encoded(stype_string(NAME), dtype, shape, data), sent


def decode_stc_body(reader: Reader, dtype: np.dtype, n: int) -> Decoded:
    """Read a ``bouquet.stc/1`` body (header already read); the signs stay int8."""
    mu = checked_scale(read_scale(reader), dtype)
    indices, signs = read_sparse_ternary(reader, n)
    return Decoded((), dtype, indices, signs, scale=mu)
