"""One record per codec (issue 37): the codec tables derive from
``bouquet.codecs.catalog.CODECS``."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from bouquet.codecs import CODECS
from bouquet.codecs import COMPRESSORS
from bouquet.codecs import decode
from bouquet.codecs import make_compressor
from bouquet.codecs import parse_stype
from bouquet.codecs import stype_for
from bouquet.codecs.catalog import CODEC_IDS
from bouquet.codecs.catalog import DOWNLINK_CODECS
from bouquet.codecs.catalog import LOSSY_CODECS
from bouquet.codecs.catalog import PER_CLIENT_POSITIONS
from bouquet.codecs.catalog import codec_options
from bouquet.codecs.compressors import SelectionOptions
from bouquet.codecs.compressors import TopKCompressor
from bouquet.codecs.compressors import _TopKSelection
from bouquet.simulations.config.schema_client import CODEC_ARGS
from bouquet.simulations.config.schema_client import CODEC_REQUIRED
from bouquet.simulations.config.schema_client import DOWNLINK

OPTIONS = {"topk": {"alpha": 0.5}, "stc": {"alpha": 0.5}, "ternary": {}, "dense": {}}


def test_every_table_is_the_records():
    assert (
        set(COMPRESSORS)
        == set(CODEC_IDS)
        == set(CODECS)
        == set(CODEC_ARGS)
        == set(OPTIONS)
    )
    assert sorted(CODEC_IDS.values()) == list(range(len(CODECS)))  # unique wire ids
    assert set(DOWNLINK) - {"none"} == set(DOWNLINK_CODECS) and set(
        LOSSY_CODECS
    ) == set(CODECS) - {"dense"}
    assert set(PER_CLIENT_POSITIONS) == {"topk", "stc", "ternary"}
    for name, codec in CODECS.items():
        assert codec.compressor.codec == name and COMPRESSORS[name] is codec.compressor
        assert CODEC_REQUIRED.get(name, ()) == tuple(codec.options()[1])
        assert set(CODEC_ARGS[name]) <= set(codec.options()[0])


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_each_codec_decodes_its_own_encoding_through_its_record(name):
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    enc = make_compressor(name, **OPTIONS[name]).compress([x])[0][0]
    assert parse_stype(enc.stype) == (name, 1) and enc.stype == stype_for(name)
    # the header's codec byte (after "BQ" and the version)
    assert enc.data[3] == CODECS[name].wire_id
    assert decode(enc.stype, enc.dtype, enc.shape, enc.data).to_dense().size == 12
    with pytest.raises(ValueError, match="unknown"):
        stype_for("zip")


def test_selection_options_are_the_selection_constructors_options():
    """``SelectionOptions`` types the ``**options`` that TopKCompressor passes on: the
    same names as the selection's own constructor, and a bad one still fails there."""
    own = [
        p.name
        for p in inspect.signature(_TopKSelection.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert set(SelectionOptions.__annotations__) == set(own) - {"alpha"}
    assert codec_options("topk")[0] == ["alpha", "value_dtype", *own[1:]]
    with pytest.raises(TypeError, match="rhoo"):
        TopKCompressor(alpha=0.1, rhoo=2.0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="scope"):
        TopKCompressor(alpha=0.1, scope="row")
