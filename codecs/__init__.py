"""bouquet.codecs: wire formats for compressed model updates (numpy only).

Top-k sparsification (``topk``), TernGrad ternarisation (``ternary``), sparse ternary
compression (``stc``), error feedback (``error_feedback``), position/trit packing
(``packing``, its varint and Golomb-Rice gap codes in ``gap_codes``) and the versioned
wire format (``wire``). :func:`decode` reads any of them; ``catalog`` holds one record
per codec.
"""

from bouquet.codecs.catalog import (
    CODECS,
    COMPRESSORS,
    Codec,
    codec_options,
    make_compressor,
    parse_stype,
    stype_for,
)
from bouquet.codecs.compressor import (
    CompressOutput,
    DenseCompressor,
    STCCompressor,
    TernaryCompressor,
    TopKCompressor,
    UpdateCompressor,
    is_statistic,
)
from bouquet.codecs.error_feedback import accumulate, new_residual
from bouquet.codecs.registry import decode, decode_encoded
from bouquet.codecs.stc import encode_stc
from bouquet.codecs.ternary import encode_ternary, ternarize
from bouquet.codecs.topk import encode_topk, select_topk, select_topk_model, topk_count
from bouquet.codecs.wire import Decoded, Encoded, encode_dense, is_bouquet_stype

__all__ = [
    "CODECS",
    "COMPRESSORS",
    "Codec",
    "CompressOutput",
    "Decoded",
    "DenseCompressor",
    "Encoded",
    "STCCompressor",
    "TernaryCompressor",
    "TopKCompressor",
    "UpdateCompressor",
    "accumulate",
    "codec_options",
    "decode",
    "decode_encoded",
    "encode_dense",
    "encode_stc",
    "encode_ternary",
    "encode_topk",
    "is_bouquet_stype",
    "is_statistic",
    "make_compressor",
    "new_residual",
    "parse_stype",
    "select_topk",
    "select_topk_model",
    "stype_for",
    "ternarize",
    "topk_count",
]
