"""One record per codec (issue 37): the codec tables derive from
``bouquet.codecs.catalog.CODECS``."""

from __future__ import annotations

import numpy as np
import pytest

from bouquet.codecs import (
    CODECS,
    COMPRESSORS,
    decode,
    make_compressor,
    parse_stype,
    stype_for,
)
from bouquet.codecs.catalog import (
    CODEC_IDS,
    DOWNLINK_CODECS,
    LOSSY_CODECS,
    PER_CLIENT_POSITIONS,
)
from bouquet.simulations.config.schema import CODEC_ARGS, CODEC_REQUIRED, DOWNLINK

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
    assert (
        enc.data[3] == CODECS[name].wire_id
    )  # the header's codec byte (after "BQ" and the version)
    assert decode(enc.stype, enc.dtype, enc.shape, enc.data).to_dense().size == 12
    with pytest.raises(ValueError, match="unknown"):
        stype_for("zip")
