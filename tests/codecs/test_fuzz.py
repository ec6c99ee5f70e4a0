"""Fuzzing every codec and position coding (issue 13).

Random and mutated payloads (truncation, extension, bit flips, header fields set to
extremes) under an address-space limit either decode to the declared shape or raise
``ValueError``, each within a small time bound; ``decode(encode(x))`` holds for random
shapes, densities and dtypes.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from conftest import address_space_limit
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bouquet.codecs import STCCompressor
from bouquet.codecs import TernaryCompressor
from bouquet.codecs import TopKCompressor
from bouquet.codecs import decode
from bouquet.codecs import encode_dense
from bouquet.codecs.packing import POS_CODING_NAMES
from bouquet.codecs.topk import encode_topk
from bouquet.codecs.topk import select_topk

SHAPES = st.lists(st.integers(1, 40), min_size=0, max_size=3).map(tuple)
FLOAT_DTYPES = st.sampled_from(["float32", "float16", "float64"])
TIME_BOUND_S = 0.5


def _payloads(
    shape: tuple[int, ...], dtype: str, density: float, seed: int
) -> list[tuple[str, str, tuple, bytes]]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3).astype(dtype)
    out = []
    for comp in (
        TopKCompressor(alpha=density, residual_decay=0.0),
        TopKCompressor(alpha=density, value_dtype="float16", residual_decay=0.0),
        STCCompressor(alpha=density, residual_decay=0.0),
        TernaryCompressor(packing="trit"),
        TernaryCompressor(packing="2bit"),
        TernaryCompressor(packing="sparse"),
    ):
        (enc,), _ = comp.compress([x], None, rng=rng)
        out.append((enc.stype, enc.dtype, enc.shape, enc.data))
    flat = x.reshape(-1)
    for coding in POS_CODING_NAMES:
        idx = (
            np.arange(flat.size)
            if coding == 0
            else select_topk(flat, max(1, int(density * flat.size)))
        )
        if coding == 0 or idx.size < flat.size:
            enc, _ = encode_topk(x, idx, pos_coding=coding)
            out.append((enc.stype, enc.dtype, enc.shape, enc.data))
    enc = encode_dense(x)
    out.append((enc.stype, enc.dtype, enc.shape, enc.data))
    return out


def _decode_bounded(stype: str, dtype: str, shape: tuple, data: bytes) -> None:
    """Decode; must give the declared shape or raise ValueError, quickly."""
    t0 = time.perf_counter()
    try:
        dec = decode(stype, dtype, shape, data)
    except ValueError:
        pass
    else:
        assert dec.shape == tuple(shape)
        assert np.all(np.isfinite(dec.real_values()))
        # a valid sparse update of a (possibly huge) declared shape
        if dec.indices is not None:
            assert dec.indices.size == 0 or (
                0 <= dec.indices[0] and dec.indices[-1] < dec.size
            )
            assert np.all(np.diff(dec.indices) > 0)
        else:  # dense forms are backed by the payload's bytes
            assert dec.values.size == dec.size
    assert time.perf_counter() - t0 < TIME_BOUND_S


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SHAPES, FLOAT_DTYPES, st.floats(0.01, 1.0), st.integers(0, 2**16))
def test_round_trip_every_codec(shape, dtype, density, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3).astype(dtype)
    for comp in (
        TopKCompressor(alpha=density, residual_decay=0.0),
        STCCompressor(alpha=density, residual_decay=0.0),
        TernaryCompressor(),
    ):
        (enc,), _ = comp.compress([x], None, rng=np.random.default_rng(seed))
        dec = decode(enc.stype, enc.dtype, enc.shape, enc.data)
        dense = dec.to_dense()
        assert dense.shape == x.shape and dense.dtype == x.dtype
        assert np.all(np.sign(dense) * np.sign(x) >= 0)  # never the wrong sign
    (enc,), _ = TopKCompressor(alpha=1.0, residual_decay=0.0).compress([x], None)
    np.testing.assert_array_equal(
        decode(enc.stype, enc.dtype, enc.shape, enc.data).to_dense(),
        x.astype(np.float32).astype(dtype),
    )


MUTATIONS = st.sampled_from(
    [
        "truncate",
        "extend",
        "flip",
        "header_k",
        "header_plen",
        "header_shape",
        "zero_tail",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    SHAPES,
    FLOAT_DTYPES,
    st.floats(0.01, 0.5),
    st.integers(0, 2**16),
    MUTATIONS,
    st.integers(0, 2**31),
    st.data(),
)
def test_mutated_payloads_decode_or_raise_valueerror_in_bounded_memory_and_time(
    shape, dtype, density, seed, how, pos, data
):
    payloads = _payloads(shape, dtype, density, seed)
    stype, dt, shp, body = data.draw(st.sampled_from(payloads))
    raw = bytearray(body)
    header_len = 6 + 4 * len(shp)
    if how == "truncate":
        raw = raw[: pos % max(1, len(raw))]
    elif how == "extend":
        raw += bytes([pos % 256]) * (1 + pos % 7)
    elif how == "flip" and raw:
        i = pos % len(raw)
        raw[i] ^= 1 << (pos % 8)
    elif how == "header_k" and len(raw) >= header_len + 4:
        raw[header_len : header_len + 4] = struct.pack(
            "<I", data.draw(st.sampled_from([0, 1, 2**31, 2**32 - 1]))
        )
    elif how == "header_plen" and len(raw) >= header_len + 10:
        raw[header_len + 6 : header_len + 10] = struct.pack(
            "<I", data.draw(st.sampled_from([0, 2**31, 2**32 - 1]))
        )
    elif how == "header_shape" and len(shp):
        raw[6:10] = struct.pack("<I", 2**32 - 1)
        shp = (2**32 - 1, *shp[1:])
    elif how == "zero_tail":
        raw = raw[:header_len] + bytes(len(raw) - header_len)
    with address_space_limit(2 << 30):
        _decode_bounded(stype, dt, shp, bytes(raw))


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=200),
    st.sampled_from(
        ["bouquet.topk/1", "bouquet.stc/1", "bouquet.ternary/1", "bouquet.dense/1"]
    ),
    st.sampled_from([(), (3,), (2**20,), (2**31, 2**31), (65536, 65535)]),
    st.sampled_from(["float32", "float16", "int64"]),
)
def test_random_bytes_never_escape_valueerror(data, stype, shape, dtype):
    with address_space_limit(2 << 30):
        _decode_bounded(stype, dtype, shape, data)


def test_fuzz_limit_really_limits():
    """The address-space guard used above does turn a huge allocation into
    MemoryError."""
    with address_space_limit(256 << 20), pytest.raises(MemoryError):
        np.ones(1 << 30, dtype=np.uint8)
