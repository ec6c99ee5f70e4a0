"""Compressors by codec name, with their options checked against the codec's constructor."""

from __future__ import annotations

import inspect

from bouquet.codecs.compressor import (
    DenseCompressor,
    STCCompressor,
    TernaryCompressor,
    TopKCompressor,
    UpdateCompressor,
)

COMPRESSORS: dict[str, type[UpdateCompressor]] = {
    "dense": DenseCompressor, "topk": TopKCompressor, "ternary": TernaryCompressor, "stc": STCCompressor,
}


def codec_options(codec: str) -> tuple[list[str], list[str]]:
    """(every option, the required ones) of ``codec``'s compressor, from its constructor."""
    params = inspect.signature(COMPRESSORS[codec].__init__).parameters.values()
    names = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return names, [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty]


def make_compressor(codec: str, **kwargs: object) -> UpdateCompressor:
    """Build a compressor by codec name (``dense``, ``topk``, ``ternary``, ``stc``).

    Raises ``ValueError`` naming an unknown codec, an option the codec does not take (with the
    ones it takes) or a required option left out.
    """
    if not isinstance(codec, str) or codec not in COMPRESSORS:
        raise ValueError(f"codec={codec!r} is unknown; allowed: {sorted(COMPRESSORS)}")
    allowed, required = codec_options(codec)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"codec {codec!r} takes no option {', '.join(unknown)}; its options: {', '.join(allowed)}")
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ValueError(f"codec {codec!r} needs {', '.join(missing)} (e.g. {missing[0]}=0.01)")
    return COMPRESSORS[codec](**kwargs)  # type: ignore[arg-type]
