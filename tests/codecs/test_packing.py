"""Property tests of position, trit and sign packing (bouquet.codecs.packing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bouquet.codecs import packing


@st.composite
def position_sets(draw):
    n = draw(st.integers(1, 3000))
    k = draw(st.integers(0, n))
    seed = draw(st.integers(0, 2**32 - 1))
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(
        np.int64
    )
    return n, idx


@settings(max_examples=80, deadline=None)
@given(
    position_sets(),
    st.sampled_from(
        [
            None,
            packing.POS_BITMAP,
            packing.POS_VARINT,
            packing.POS_RICE,
            packing.POS_RAW,
        ]
    ),
)
def test_positions_round_trip(case, coding):
    n, idx = case
    used, block = packing.encode_positions(idx, n, coding)
    assert np.array_equal(packing.decode_positions(used, block, idx.size, n), idx)


@settings(max_examples=60, deadline=None)
@given(position_sets())
def test_auto_coding_is_the_smallest(case):
    n, idx = case
    used, block = packing.encode_positions(idx, n)
    for coding in (
        packing.POS_BITMAP,
        packing.POS_VARINT,
        packing.POS_RICE,
        packing.POS_RAW,
    ):
        assert len(block) <= len(packing.encode_positions(idx, n, coding)[1])
    if idx.size == n:
        assert used == packing.POS_ALL and block == b""


def test_rice_near_entropy_for_random_positions():
    rng = np.random.default_rng(0)
    n, k = 1_000_000, 10_000
    idx = np.sort(rng.choice(n, k, replace=False))
    coding, block = packing.encode_positions(idx, n)
    assert coding == packing.POS_RICE
    assert 8 * len(block) <= 1.05 * packing.position_entropy_bits(n, k)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**35 - 1), max_size=200))
def test_varint_round_trip(values):
    v = np.array(values, dtype=np.int64)
    assert np.array_equal(packing.varint_decode(packing.varint_encode(v), v.size), v)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 1), max_size=300))
def test_trits_and_2bit_round_trip(values):
    t = np.array(values, dtype=np.int8)
    assert np.array_equal(packing.unpack_trits(packing.pack_trits(t), t.size), t)
    assert np.array_equal(packing.unpack_2bit(packing.pack_2bit(t), t.size), t)
    assert len(packing.pack_trits(t)) == (t.size + 4) // 5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), max_size=100))
def test_signs_round_trip(neg):
    signs = packing.unpack_signs(
        packing.pack_signs(np.array(neg, dtype=bool)), len(neg)
    )
    assert np.array_equal(signs, np.where(np.array(neg, dtype=bool), -1, 1))


def test_malformed_position_blocks_raise():
    idx = np.array([3, 7, 9])
    _, raw = packing.encode_positions(idx, 10, packing.POS_RAW)
    with pytest.raises(ValueError, match="out of range"):
        packing.decode_positions(packing.POS_RAW, raw, 3, 9)
    unsorted = np.array([7, 3, 9], dtype="<u4").tobytes()
    with pytest.raises(ValueError, match="unsorted"):
        packing.decode_positions(packing.POS_RAW, unsorted, 3, 10)
    _, bitmap = packing.encode_positions(idx, 10, packing.POS_BITMAP)
    with pytest.raises(ValueError, match="marks 3 positions"):
        packing.decode_positions(packing.POS_BITMAP, bitmap, 4, 10)
    with pytest.raises(ValueError, match="beyond the tensor size"):
        packing.decode_positions(packing.POS_BITMAP, bytes([0, 0b01000000]), 1, 9)
    with pytest.raises(ValueError, match="varint"):
        packing.decode_positions(packing.POS_VARINT, bytes([0x80, 0x80]), 1, 10)
    with pytest.raises(ValueError, match="strictly increasing"):
        packing.decode_positions(packing.POS_VARINT, bytes([1, 0]), 2, 10)
    with pytest.raises(ValueError, match="rice block ends"):
        packing.decode_positions(packing.POS_RICE, bytes([0, 0xFF]), 3, 10)
    with pytest.raises(ValueError, match="unknown"):
        packing.decode_positions(9, b"", 0, 10)
    with pytest.raises(ValueError, match="243"):
        packing.unpack_trits(bytes([250]), 5)
    with pytest.raises(ValueError, match="code 3"):
        packing.unpack_2bit(bytes([0xFF]), 4)
