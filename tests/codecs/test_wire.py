"""Malformed payloads: every decoder raises ValueError saying what is wrong."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bouquet.codecs import decode
from bouquet.codecs import encode_dense
from bouquet.codecs import encode_stc
from bouquet.codecs import encode_ternary
from bouquet.codecs import encode_topk
from bouquet.codecs import parse_stype
from bouquet.codecs import select_topk
from bouquet.codecs import ternarize
from bouquet.codecs.wire import MAGIC

X = np.random.default_rng(0).normal(size=(6, 7)).astype(np.float32)
IDX = select_topk(X.reshape(-1), 5)


def payloads():
    t, s = ternarize(X, rng=np.random.default_rng(0))
    return {
        "topk": encode_topk(X, IDX)[0],
        "topk16": encode_topk(X, IDX, value_dtype="float16")[0],
        "stc": encode_stc(X, IDX)[0],
        "ternary": encode_ternary(t, s, packing_form="trit")[0],
        "ternary2": encode_ternary(t, s, packing_form="2bit")[0],
        "dense": encode_dense(X),
    }


@pytest.mark.parametrize("name", list(payloads()))
def test_truncated_and_trailing(name):
    enc = payloads()[name]
    decode(enc.stype, enc.dtype, enc.shape, enc.data)
    for cut in (1, 5, len(enc.data) // 2, len(enc.data) - 1):
        with pytest.raises(ValueError):
            decode(enc.stype, enc.dtype, enc.shape, enc.data[:cut])
    with pytest.raises(ValueError, match="trailing"):
        decode(enc.stype, enc.dtype, enc.shape, enc.data + b"\0")


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(payloads())), st.integers(0, 10_000), st.integers(1, 255))
def test_random_corruption_never_crashes_otherwise(name, pos, xor):
    enc = payloads()[name]
    data = bytearray(enc.data)
    data[pos % len(data)] ^= xor
    try:
        dec = decode(enc.stype, enc.dtype, enc.shape, bytes(data))
    except ValueError:
        return
    # if it decodes, it is a well-formed finite tensor of the right shape
    dense = dec.to_dense()
    assert dense.shape == X.shape and np.all(np.isfinite(dense))


def test_wrong_version_and_stype():
    enc = payloads()["topk"]
    with pytest.raises(ValueError, match="version"):
        decode("bouquet.topk/2", enc.dtype, enc.shape, enc.data)
    bad = bytearray(enc.data)
    bad[2] = 9  # header version byte
    with pytest.raises(ValueError, match="version 9"):
        decode(enc.stype, enc.dtype, enc.shape, bytes(bad))
    with pytest.raises(ValueError, match="unknown"):
        parse_stype("bouquet.zip/1")
    with pytest.raises(ValueError, match="does not match stype codec"):
        decode("bouquet.stc/1", enc.dtype, enc.shape, enc.data)
    with pytest.raises(ValueError, match="magic"):
        decode(enc.stype, enc.dtype, enc.shape, b"XX" + enc.data[2:])


def test_wrong_shape_and_dtype():
    enc = payloads()["stc"]
    with pytest.raises(ValueError, match="shape"):
        decode(enc.stype, enc.dtype, (7, 6), enc.data)
    with pytest.raises(ValueError, match="dtype"):
        decode(enc.stype, "float64", enc.shape, enc.data)


def _topk_payload(
    k: int, coding: int, block: bytes, values: np.ndarray, shape=(10,)
) -> bytes:
    head = MAGIC + struct.pack("<BBBBI", 1, 1, 0, 1, shape[0])
    return (
        head
        + struct.pack("<IBBI", k, 0, coding, len(block))
        + block
        + values.astype("<f4").tobytes()
    )


def test_index_out_of_range_unsorted_and_nan():
    ok = _topk_payload(2, 4, np.array([1, 4], "<u4").tobytes(), np.array([1.0, 2.0]))
    assert decode("bouquet.topk/1", "float32", (10,), ok).to_dense()[4] == 2.0
    with pytest.raises(ValueError, match="out of range"):
        decode(
            "bouquet.topk/1",
            "float32",
            (10,),
            _topk_payload(2, 4, np.array([1, 10], "<u4").tobytes(), np.ones(2)),
        )
    with pytest.raises(ValueError, match="unsorted"):
        decode(
            "bouquet.topk/1",
            "float32",
            (10,),
            _topk_payload(2, 4, np.array([4, 1], "<u4").tobytes(), np.ones(2)),
        )
    with pytest.raises(ValueError, match="NaN"):
        decode(
            "bouquet.topk/1",
            "float32",
            (10,),
            _topk_payload(
                2, 4, np.array([1, 4], "<u4").tobytes(), np.array([1.0, np.nan])
            ),
        )
    with pytest.raises(ValueError, match="k=11"):
        decode(
            "bouquet.topk/1", "float32", (10,), _topk_payload(11, 4, b"", np.ones(0))
        )


def test_nan_scale():
    enc = payloads()["stc"]
    bad = bytearray(enc.data)
    header_len = 2 + 4 + 4 * len(enc.shape)
    bad[header_len : header_len + 4] = struct.pack("<f", float("nan"))
    with pytest.raises(ValueError, match="scale nan"):
        decode(enc.stype, enc.dtype, enc.shape, bytes(bad))
    enc = payloads()["ternary"]
    bad = bytearray(enc.data)
    bad[header_len : header_len + 4] = struct.pack("<f", float("inf"))
    with pytest.raises(ValueError, match="scale inf"):
        decode(enc.stype, enc.dtype, enc.shape, bytes(bad))
