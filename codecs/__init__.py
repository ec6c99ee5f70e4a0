"""bouquet.codecs: wire formats for compressed model updates (numpy only).

Top-k sparsification (``topk``), TernGrad ternarisation (``ternary``), sparse ternary
compression (``stc``), error feedback (``error_feedback``), position/trit packing
(``packing``, its varint and Golomb-Rice gap codes in ``gap_codes``) and the versioned
wire format (``wire``). :func:`decode` reads any of them; ``catalog`` holds one record
per codec.
"""

from bouquet.codecs.catalog import CODECS
from bouquet.codecs.catalog import COMPRESSORS
from bouquet.codecs.catalog import Codec
from bouquet.codecs.catalog import codec_options
from bouquet.codecs.catalog import make_compressor
from bouquet.codecs.catalog import parse_stype
from bouquet.codecs.catalog import stype_for
from bouquet.codecs.compressor import CompressOutput
from bouquet.codecs.compressor import UpdateCompressor
from bouquet.codecs.compressor import is_statistic
from bouquet.codecs.compressors import DenseCompressor
from bouquet.codecs.compressors import STCCompressor
from bouquet.codecs.compressors import TernaryCompressor
from bouquet.codecs.compressors import TopKCompressor
from bouquet.codecs.error_feedback import accumulate
from bouquet.codecs.error_feedback import new_residual
from bouquet.codecs.registry import decode
from bouquet.codecs.registry import decode_encoded
from bouquet.codecs.stc import encode_stc
from bouquet.codecs.ternary import encode_ternary
from bouquet.codecs.ternary import ternarize
from bouquet.codecs.topk import encode_topk
from bouquet.codecs.topk import select_topk
from bouquet.codecs.topk import select_topk_model
from bouquet.codecs.topk import topk_count
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Encoded
from bouquet.codecs.wire import encode_dense
from bouquet.codecs.wire import is_bouquet_stype

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
