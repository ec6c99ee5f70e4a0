"""Deep Gradient Compression's remedies in the top-k and STC compressors (Lin et al.
2018):
momentum correction with momentum factor masking, local clipping, density warm-up."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bouquet.codecs import STCCompressor
from bouquet.codecs import TernaryCompressor
from bouquet.codecs import TopKCompressor
from bouquet.codecs import decode_encoded
from bouquet.codecs import make_compressor
from bouquet.codecs.compressor import clip_update
from bouquet.codecs.compressor import update_norm


def _dense(enc) -> np.ndarray:
    return decode_encoded(enc).to_dense()


def _indices(enc) -> np.ndarray:
    dec = decode_encoded(enc)
    return np.arange(dec.size) if dec.indices is None else dec.indices


def test_momentum_corrected_residual_by_hand_over_3_rounds():
    """m = 0.5, top-1 of 4, beta = 1: u_t = m u_{t-1} + D_t, a_t = u_t + e_{t-1}, send
    top-1(a_t),
    e_t = a_t - sent, u_t zeroed where sent. Every number below is worked out by
    hand."""
    comp = TopKCompressor(alpha=0.25, momentum_correction=0.5)
    deltas = [
        np.array([1.0, -3.0, 2.0, 0.5], np.float32),
        np.array([0.5, 1.0, -1.5, 0.0], np.float32),
        np.array([0.0, -2.0, 1.0, 1.0], np.float32),
    ]
    expected = [  # (sent, residual e_t, masked momentum u_t)
        ([0, -3, 0, 0], [1, 0, 2, 0.5], [1, 0, 2, 0.5]),
        # u2 = 0.5 [1, 0, 2, .5] + D2 = [1, 1, -.5, .25]; a2 = u2 + e1 = [2, 1, 1.5,
        # .75]
        ([2, 0, 0, 0], [0, 1, 1.5, 0.75], [0, 1, -0.5, 0.25]),
        # u3 = 0.5 [0, 1, -.5, .25] + D3 = [0, -1.5, .75, 1.125]; a3 = u3 + e2 = [0,
        # -.5, 2.25, 1.875]
        ([0, 0, 2.25, 0], [0, -0.5, 0, 1.875], [0, -1.5, 0, 1.125]),
    ]
    residuals = momenta = None
    for rnd, (delta, (sent, e, u)) in enumerate(
        zip(deltas, expected, strict=True), start=1
    ):
        out = comp.compress_stateful(
            [delta.copy()], residuals, momenta, server_round=rnd, inplace=True
        )
        np.testing.assert_array_equal(
            _dense(out.payloads[0]), np.array(sent, np.float32)
        )
        np.testing.assert_array_equal(out.residuals[0], np.array(e, np.float32))
        np.testing.assert_array_equal(out.momenta[0], np.array(u, np.float32))
        residuals, momenta = out.residuals, out.momenta
    # without momentum correction round 2 sends 1.5, not 2 (a2 = D2 + e1 = [1.5, 1, -.5,
    # .5])
    plain = TopKCompressor(alpha=0.25)
    _, e1 = plain.compress([deltas[0].copy()], None)
    enc2, _ = plain.compress([deltas[1].copy()], e1, server_round=2)
    assert _dense(enc2[0]).tolist() == [1.5, 0, 0, 0]


@pytest.mark.parametrize(
    "comp",
    [
        TopKCompressor(alpha=0.05, momentum_correction=0.9),
        TopKCompressor(alpha=0.05, momentum_correction=0.9, scope="model"),
        TopKCompressor(alpha=0.05, momentum_correction=0.9, value_dtype="float16"),
        STCCompressor(alpha=0.05, momentum_correction=0.9),
    ],
    ids=["topk", "topk-model", "topk-f16", "stc"],
)
def test_momentum_is_zeroed_exactly_at_the_sent_positions(comp):
    rng = np.random.default_rng(3)
    shapes = [(20, 30), (50,), (7, 3, 3)]
    prev_u = [rng.normal(size=s).astype(np.float32) for s in shapes]
    prev_e = [rng.normal(size=s).astype(np.float32) * 0.1 for s in shapes]
    deltas = [rng.normal(size=s).astype(np.float32) for s in shapes]
    out = comp.compress_stateful(
        [d.copy() for d in deltas],
        [e.copy() for e in prev_e],
        [u.copy() for u in prev_u],
        server_round=2,
    )
    for enc, d, u_prev, e_prev, u_new, e_new in zip(
        out.payloads, deltas, prev_u, prev_e, out.momenta, out.residuals, strict=True
    ):
        u = np.float32(0.9) * u_prev + d
        sent = _indices(enc)
        assert sent.size > 0
        flat_new, flat_u = u_new.reshape(-1), u.reshape(-1)
        np.testing.assert_array_equal(flat_new[sent], 0)
        rest = np.setdiff1d(np.arange(u.size), sent)
        np.testing.assert_allclose(flat_new[rest], flat_u[rest], rtol=1e-6)
        # error feedback: what was sent plus the new residual is the velocity plus the
        # old residual
        np.testing.assert_allclose(
            _dense(enc) + e_new, u + e_prev, rtol=1e-5, atol=1e-5
        )


def test_momentum_correction_needs_its_state_back_and_error_feedback():
    comp = TopKCompressor(alpha=0.1, momentum_correction=0.9)
    with pytest.raises(ValueError, match="compress_stateful"):
        comp.compress([np.ones(10, np.float32)])
    with pytest.raises(ValueError, match="residual_decay"):
        TopKCompressor(alpha=0.1, momentum_correction=0.9, residual_decay=0.0)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="momentum_correction"):
            STCCompressor(alpha=0.1, momentum_correction=bad)
    # no DGC options
    with pytest.raises(
        ValueError, match="codec 'ternary' takes no option momentum_correction"
    ):
        make_compressor("ternary", momentum_correction=0.9)
    assert TernaryCompressor().momentum_correction == 0.0


def test_non_finite_momentum_is_refused_like_a_non_finite_residual():
    comp = TopKCompressor(alpha=0.5, momentum_correction=0.9)
    bad = np.array([np.nan, 0, 0, 0], np.float32)
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.compress_stateful([np.ones(4, np.float32)], None, [bad])


def test_clipping_bounds_the_update_norm_over_all_tensors():
    rng = np.random.default_rng(1)
    a, b = (
        rng.normal(size=30).astype(np.float32),
        rng.normal(size=(4, 5)).astype(np.float32),
    )
    joint = update_norm([a, b])
    # each tensor alone is within 1.25x; jointly more
    bound = 0.8 * max(np.linalg.norm(a), np.linalg.norm(b))
    comp = TopKCompressor(alpha=1.0, residual_decay=0.0, clip_norm=bound)
    enc, _ = comp.compress([a.copy(), b.copy()])
    sent = [_dense(e) for e in enc]
    assert update_norm(sent) <= bound * (1 + 1e-6)
    assert math.isclose(update_norm(sent), bound, rel_tol=1e-5)
    # the direction is kept: one factor for the whole model
    for s, t in zip(sent, (a, b), strict=True):
        np.testing.assert_allclose(s, t * (bound / joint), rtol=1e-5)
    # within the bound: untouched
    enc, _ = TopKCompressor(
        alpha=1.0, residual_decay=0.0, clip_norm=2 * joint
    ).compress([a.copy(), b.copy()])
    np.testing.assert_array_equal(_dense(enc[0]), a)


def test_clipping_acts_on_the_new_update_not_on_the_residual():
    """DGC clips the gradient before it is added to the accumulation: a large residual
    is kept whole."""
    delta = np.array([3.0, 4.0, 0.0, 0.0], np.float32)  # norm 5
    residual = np.array([0.0, 0.0, 100.0, 0.0], np.float32)
    comp = TopKCompressor(alpha=0.25, clip_norm=1.0)
    (enc,), (e,) = comp.compress([delta.copy()], [residual.copy()])
    np.testing.assert_allclose(_dense(enc) + e, [0.6, 0.8, 100.0, 0.0], rtol=1e-6)
    assert _dense(enc).tolist() == [0, 0, 100.0, 0]


def test_clip_update_refuses_non_finite_and_bad_bounds():
    with pytest.raises(ValueError, match="NaN or inf"):
        clip_update([np.array([np.inf, 1.0], np.float32)], 1.0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="clip_norm"):
            TopKCompressor(alpha=0.1, clip_norm=bad)
    # no float32 overflow
    assert update_norm([np.full(4, 3e38, np.float32)]) == pytest.approx(6e38)


def test_warmup_density_is_dgc_exponential_schedule():
    comp = TopKCompressor(alpha=0.001, warmup_rounds=4)
    got = [comp.density(j) for j in range(6)]
    np.testing.assert_allclose(got[:4], [0.001 ** (r / 5) for r in (1, 2, 3, 4)])
    # DGC: 25%, 6.25%, 1.56%, 0.39%
    assert [round(100 * d, 1) for d in got] == [25.1, 6.3, 1.6, 0.4, 0.1, 0.1]
    # with attenuation the target of the round is alpha * rho**(r-1)
    att = STCCompressor(alpha=0.01, rho=0.5, warmup_rounds=2)
    assert att.density(1) == pytest.approx((0.01 * 0.5) ** (2 / 3))
    assert att.density(2) == pytest.approx(0.01 * 0.25)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="warmup_rounds"):
            TopKCompressor(alpha=0.1, warmup_rounds=bad)


@pytest.mark.parametrize("cls", [TopKCompressor, STCCompressor])
def test_warmup_density_reaches_the_wire(cls):
    """Round r's payload is byte for byte the payload of a compressor whose alpha is
    that round's
    density: the bytes follow the schedule (decreasing during the warm-up, then
    constant)."""
    x = np.random.default_rng(5).normal(size=(40, 50)).astype(np.float32)
    comp = cls(alpha=0.01, warmup_rounds=3, residual_decay=0.0)
    sizes, ks = [], []
    for rnd in range(1, 7):
        (enc,), _ = comp.compress([x.copy()], server_round=rnd)
        d = comp.density(rnd - 1)
        (same,), _ = cls(alpha=d, residual_decay=0.0).compress([x.copy()])
        assert enc.data == same.data
        ks.append(_indices(enc).size)
        sizes.append(len(enc.data))
    assert ks == [math.ceil(x.size * 0.01 ** (r / 4)) for r in (1, 2, 3)] + [20, 20, 20]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] == sizes[4] == sizes[5]
    (plain,), _ = cls(alpha=0.01, residual_decay=0.0).compress(
        [x.copy()], server_round=1
    )
    assert len(plain.data) == sizes[3]
