"""One record per codec: every codec table of the package is derived from
:data:`CODECS`.

A :class:`Codec` names the codec, its wire id (the header's codec byte), its compressor
(the client-side encoder with error feedback; its keyword-only constructor arguments are
the codec's options) and its body decoder, and says whether each client keeps its own
positions (secure aggregation cannot sum those) and whether it can compress the server's
broadcast. Adding a codec is one module (body encoder and decoder, ``NAME``,
``WIRE_ID``, a compressor in ``compressor.py``), one record here and its config YAML;
the config schema (``bouquet.simulations.config.schema``) types the options and checks
at import that it covers every codec here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bouquet.codecs import stc
from bouquet.codecs import ternary
from bouquet.codecs import topk
from bouquet.codecs.compressor import UpdateCompressor
from bouquet.codecs.compressors import DenseCompressor
from bouquet.codecs.compressors import STCCompressor
from bouquet.codecs.compressors import TernaryCompressor
from bouquet.codecs.compressors import TopKCompressor
from bouquet.codecs.wire import DENSE
from bouquet.codecs.wire import DENSE_WIRE_ID
from bouquet.codecs.wire import Decoded
from bouquet.codecs.wire import Reader
from bouquet.codecs.wire import decode_dense_body
from bouquet.codecs.wire import split_stype
from bouquet.codecs.wire import stype_string

BodyDecoder = Callable[[Reader, np.dtype, int], Decoded]


@dataclass(frozen=True)
class Codec:
    """Everything the package knows about one codec."""

    name: str
    wire_id: int
    compressor: type[UpdateCompressor]
    decode_body: BodyDecoder
    per_client_positions: (
        bool  # each client sends its own positions: no secure aggregation of them
    )
    downlink: (
        bool  # usable for the server's broadcast (CompressedDownlink, downlink=<name>)
    )

    def options(self) -> tuple[list[str], list[str]]:
        """(every option, the required ones): the compressor's keyword-only constructor
        arguments, and its parents' where a constructor passes ``**options`` on."""
        names: list[str] = []
        required: list[str] = []
        for cls in self.compressor.__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            params = list(inspect.signature(init).parameters.values())
            for p in params:
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
                    if p.default is p.empty:
                        required.append(p.name)
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                break
        return names, required


CODECS: dict[str, Codec] = {
    c.name: c
    for c in (
        Codec(
            DENSE,
            DENSE_WIRE_ID,
            DenseCompressor,
            decode_dense_body,
            per_client_positions=False,
            downlink=False,
        ),
        Codec(
            topk.NAME,
            topk.WIRE_ID,
            TopKCompressor,
            topk.decode_topk_body,
            per_client_positions=True,
            downlink=True,
        ),
        Codec(
            ternary.NAME,
            ternary.WIRE_ID,
            TernaryCompressor,
            ternary.decode_ternary_body,
            per_client_positions=True,
            downlink=True,
        ),
        Codec(
            stc.NAME,
            stc.WIRE_ID,
            STCCompressor,
            stc.decode_stc_body,
            per_client_positions=True,
            downlink=True,
        ),
    )
}
if len({c.wire_id for c in CODECS.values()}) != len(CODECS) or any(
    c.compressor.codec != n for n, c in CODECS.items()
):
    raise ValueError(
        "bouquet.codecs.catalog: wire ids must be unique and each compressor's codec "
        "its record's name"
    )

# The tables, derived.
CODEC_IDS: dict[str, int] = {name: c.wire_id for name, c in CODECS.items()}
COMPRESSORS: dict[str, type[UpdateCompressor]] = {
    name: c.compressor for name, c in CODECS.items()
}
LOSSY_CODECS: tuple[str, ...] = tuple(name for name in CODECS if name != DENSE)
DOWNLINK_CODECS: tuple[str, ...] = tuple(
    name for name, c in CODECS.items() if c.downlink
)
PER_CLIENT_POSITIONS: tuple[str, ...] = tuple(
    name for name, c in CODECS.items() if c.per_client_positions
)


def stype_for(codec: str) -> str:
    """The ``stype`` string of ``codec`` at the current version, e.g.
    ``bouquet.topk/1``."""
    if codec not in CODECS:
        raise ValueError(f"codec={codec!r} is unknown; allowed: {sorted(CODECS)}")
    return stype_string(codec)


def parse_stype(stype: str) -> tuple[str, int]:
    """Split ``bouquet.<codec>/<version>`` into ``(codec, version)``, validating
    both."""
    return split_stype(stype, CODECS)


def codec_options(codec: str) -> tuple[list[str], list[str]]:
    """(every option, the required ones) of ``codec``'s compressor, from its
    constructor."""
    return CODECS[codec].options()


def make_compressor(codec: str, **kwargs: object) -> UpdateCompressor:
    """Build a compressor by codec name (``dense``, ``topk``, ``ternary``, ``stc``).

    Raises ``ValueError`` naming an unknown codec, an option the codec does not take
    (with the ones it takes) or a required option left out.
    """
    if not isinstance(codec, str) or codec not in CODECS:
        raise ValueError(f"codec={codec!r} is unknown; allowed: {sorted(CODECS)}")
    allowed, required = codec_options(codec)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"codec {codec!r} takes no option {', '.join(unknown)}; its options: "
            f"{', '.join(allowed)}"
        )
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ValueError(
            f"codec {codec!r} needs {', '.join(missing)} (e.g. {missing[0]}=0.01)"
        )
    return CODECS[codec].compressor(**kwargs)  # type: ignore[arg-type]
