"""Property tests of the top-k, ternary, STC codecs and error feedback
(bouquet.codecs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes
from hypothesis.extra.numpy import arrays

from bouquet.codecs import STCCompressor
from bouquet.codecs import TernaryCompressor
from bouquet.codecs import TopKCompressor
from bouquet.codecs import decode_encoded
from bouquet.codecs import encode_stc
from bouquet.codecs import encode_ternary
from bouquet.codecs import encode_topk
from bouquet.codecs import select_topk
from bouquet.codecs import select_topk_model
from bouquet.codecs import ternarize
from bouquet.codecs import topk_count

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
tensors = arrays(
    np.float32, array_shapes(min_dims=1, max_dims=3, max_side=12), elements=finite
)


@settings(max_examples=60, deadline=None)
@given(tensors, st.floats(0.01, 1.0), st.sampled_from(["float32", "float16"]))
def test_topk_round_trip_keeps_exactly_m(x, alpha, value_dtype):
    m = topk_count(x.size, alpha)
    idx = select_topk(x.reshape(-1), m)
    enc, sent = encode_topk(x, idx, value_dtype=value_dtype)
    dec = decode_encoded(enc)
    dense = dec.to_dense()
    assert dense.shape == x.shape and dense.dtype == x.dtype
    assert np.array_equal(dense, sent.to_dense())
    if m < x.size:
        assert dec.indices.size == m
        assert np.array_equal(dec.indices, idx)
    else:  # everything kept: sent as dense values without positions
        assert dec.indices is None and dec.values.size == x.size
    assert np.count_nonzero(dense) <= m
    if value_dtype == "float32" and np.all(x != 0):
        assert np.count_nonzero(dense) == m  # exactly m non-zeros
    flat = x.reshape(-1)
    if value_dtype == "float32":
        assert np.array_equal(dense.reshape(-1)[idx], flat[idx])
    # the kept magnitudes dominate the dropped ones
    dropped = np.setdiff1d(np.arange(x.size), idx)
    if dropped.size and idx.size:
        assert np.abs(flat[idx]).min() >= np.abs(flat[dropped]).max()


def test_topk_count_schedule():
    assert topk_count(1000, 0.01) == 10
    assert topk_count(1000, 0.01, rho=0.5, round_index=2) == 3  # ceil(2.5)
    assert topk_count(1000, 0.01, rho=0.5, round_index=10, min_k=4) == 4
    assert topk_count(3, 0.01, min_k=5) == 3
    with pytest.raises(ValueError, match="alpha"):
        topk_count(10, 0.0)
    with pytest.raises(ValueError, match="rho"):
        topk_count(10, 0.1, rho=1.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(tensors, min_size=1, max_size=4), st.integers(0, 50))
def test_model_scope_selects_global_top_m(ts, m):
    total = sum(t.size for t in ts)
    m = min(m, total)
    parts = select_topk_model(ts, m)
    assert sum(p.size for p in parts) == m
    kept = np.concatenate(
        [np.abs(t.reshape(-1))[p] for t, p in zip(ts, parts, strict=True)]
    )
    dropped = np.concatenate(
        [np.delete(np.abs(t.reshape(-1)), p) for t, p in zip(ts, parts, strict=True)]
    )
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()


@settings(max_examples=60, deadline=None)
@given(
    tensors,
    st.booleans(),
    st.sampled_from([None, 2.5]),
    st.sampled_from(["auto", "trit", "2bit", "sparse"]),
    st.integers(0, 99),
)
def test_ternary_values_in_minus_s_0_s(x, stochastic, clip_c, form, seed):
    t, s = ternarize(
        x, stochastic=stochastic, clip_c=clip_c, rng=np.random.default_rng(seed)
    )
    assert set(np.unique(t)) <= {-1, 0, 1}
    enc, sent = encode_ternary(t, s, packing_form=form)
    dense = decode_encoded(enc).to_dense()
    assert np.array_equal(dense, sent.to_dense())
    s32 = np.float32(s)
    assert set(np.unique(dense).tolist()) <= {-s32, 0.0, s32}
    assert np.all(dense * x >= 0)  # never the wrong sign
    if form == "trit":
        assert len(enc.data) <= 40 + math.ceil(x.size / 5)


def test_stochastic_ternary_is_unbiased():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200).astype(np.float32)
    mean = np.zeros_like(x, dtype=np.float64)
    draws = 4000
    for _ in range(draws):
        t, s = ternarize(x, rng=rng)
        mean += s * t
    mean /= draws
    s_max = float(np.abs(x).max())
    # per element the variance is <= s * |x|, so the standard error is <= sqrt(s * |x| /
    # draws)
    assert np.all(np.abs(mean - x) <= 5 * np.sqrt(s_max * np.abs(x) / draws) + 1e-6)


def test_deterministic_ternary_threshold():
    x = np.array([0.1, -2.0, 3.0, 0.05], dtype=np.float32)
    t, s = ternarize(x, stochastic=False)
    assert t.tolist() == [0, -1, 1, 0]
    assert s == pytest.approx(2.5)


@settings(max_examples=60, deadline=None)
@given(tensors, st.floats(0.01, 1.0))
def test_stc_round_trip(x, alpha):
    idx = select_topk(x.reshape(-1), topk_count(x.size, alpha))
    enc, sent = encode_stc(x, idx)
    dec = decode_encoded(enc)
    dense = dec.to_dense()
    assert np.array_equal(dense, sent.to_dense())
    nz = dense[dense != 0]
    if nz.size:
        mu = np.float32(np.abs(x.reshape(-1)[idx]).mean())
        assert np.all(np.abs(nz) == mu)
        assert np.count_nonzero(dense) <= idx.size


@settings(max_examples=40, deadline=None)
@given(
    st.lists(tensors, min_size=1, max_size=3),
    st.sampled_from(["topk", "topk16", "stc", "ternary"]),
    st.integers(0, 9),
)
def test_error_feedback_invariant(ts, kind, seed):
    rng = np.random.default_rng(seed)
    comp = {
        "topk": TopKCompressor(alpha=0.1),
        "topk16": TopKCompressor(alpha=0.3, value_dtype="float16"),
        "stc": STCCompressor(alpha=0.1),
        "ternary": TernaryCompressor(residual_decay=1.0),
    }[kind]
    old = [rng.normal(size=t.shape).astype(np.float32) for t in ts]
    enc, new = comp.compress(ts, old, server_round=2, rng=rng)
    for t, o, e, r in zip(ts, old, enc, new, strict=True):
        sent = decode_encoded(e).to_dense()
        np.testing.assert_allclose(sent + r, t + o, rtol=1e-5, atol=1e-3)


def test_residual_decay_zero_keeps_no_residual():
    x = [np.arange(10, dtype=np.float32)]
    _, res = TopKCompressor(alpha=0.1, residual_decay=0.0).compress(x, None)
    assert res is None
    with pytest.raises(ValueError, match="residual_decay"):
        TopKCompressor(alpha=0.1, residual_decay=1.5)


def test_non_float_tensors_go_dense():
    enc, _ = TopKCompressor(alpha=0.1).compress([np.arange(5, dtype=np.int64)], None)
    assert enc[0].stype == "bouquet.dense/1"
    assert np.array_equal(decode_encoded(enc[0]).to_dense(), np.arange(5))


@pytest.mark.parametrize("kind", ["gaussian", "sorted", "ties", "spiky"])
def test_sampled_threshold_selection_is_exact_top_m(kind):
    rng = np.random.default_rng(3)
    n, m = 200_000, 1_000
    x = {
        "gaussian": rng.normal(size=n),
        "sorted": np.sort(rng.normal(size=n)),  # a strided sample sees a biased picture
        "ties": rng.integers(-3, 4, size=n).astype(float),
        "spiky": np.where(np.arange(n) % 997 == 0, 100.0, 0.0)
        + 1e-3 * rng.normal(size=n),
    }[kind].astype(np.float32)
    idx = select_topk(x, m)
    assert idx.size == m and np.all(np.diff(idx) > 0)
    kth = np.sort(np.abs(x))[n - m]
    assert np.abs(x[idx]).min() >= kth
    assert np.count_nonzero(np.abs(x) > kth) <= m
