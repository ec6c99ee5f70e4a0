"""The compiled loops (bouquet.codecs.kernels) against the numpy code they replace for
big tensors.

Each test forces the compiled path on small inputs (``MIN_CODES = 0``) and compares it
with the numpy path (``BOUQUET_KERNELS=0``): byte-identical position blocks, identical
decoded positions, bit-identical sums, and the same verdict (a result or ``ValueError``)
on mutated client bytes.
"""

from __future__ import annotations

import contextlib

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
from bouquet.codecs import kernels
from bouquet.codecs.packing import POS_RICE
from bouquet.codecs.packing import decode_positions
from bouquet.codecs.packing import encode_positions

pytest.importorskip(
    "numba", reason="numba is a declared dependency: `make setup` installs it"
)


@contextlib.contextmanager
def compiled(on: bool):
    """Every size through the compiled loops (``on``) or none of them."""
    old = kernels.MIN_CODES
    kernels.MIN_CODES = 0 if on else 1 << 62
    try:
        yield
    finally:
        kernels.MIN_CODES = old


def both(fn):
    """``fn()`` with the compiled loops and with numpy: (result or the ValueError, for
    each)."""
    out = []
    for on in (True, False):
        with compiled(on):
            try:
                out.append(fn())
            except ValueError as exc:
                out.append(exc)
    return out


def _indices(rng, n, k, clustered=False):
    if clustered:  # long runs and huge gaps: large unary parts and r near its maximum
        starts = np.sort(rng.choice(n, max(1, k // 8), replace=False))
        idx = np.unique(np.clip(starts[:, None] + np.arange(8), 0, n - 1).reshape(-1))[
            :k
        ]
    else:
        idx = np.sort(rng.choice(n, k, replace=False))
    return idx.astype(np.int64)


@pytest.mark.parametrize(
    "n,k,clustered",
    [
        (10, 1, False),
        (1000, 37, False),
        (100_000, 1000, False),
        (100_000, 90_000, False),
        (2**31, 50, False),
        (3_000_000, 4000, True),
    ],
)
def test_rice_blocks_are_byte_identical_and_decode_identically(n, k, clustered):
    rng = np.random.default_rng(k)
    idx = _indices(rng, n, k, clustered)
    with_kernels, with_numpy = both(lambda: encode_positions(idx, n, POS_RICE))
    assert with_kernels == with_numpy
    coding, block = with_numpy
    auto_k, auto_n = both(lambda: encode_positions(idx, n))
    assert auto_k == auto_n
    decoded = both(lambda: decode_positions(coding, block, idx.size, n))
    for d in decoded:
        np.testing.assert_array_equal(d, idx)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 5000),
    st.floats(0.001, 0.9),
    st.integers(0, 2**16),
    st.sampled_from(
        ["truncate", "extend", "flip", "flip_r", "k_up", "k_down", "n_down"]
    ),
    st.integers(0, 2**31),
)
def test_mutated_rice_blocks_get_the_same_verdict(n, density, seed, how, pos):
    rng = np.random.default_rng(seed)
    k = max(1, int(density * n))
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int64)
    _, block = encode_positions(idx, n, POS_RICE)
    raw = bytearray(block)
    if how == "truncate":
        raw = raw[: max(1, pos % len(raw))]
    elif how == "extend":
        raw += bytes([pos % 256]) * (1 + pos % 3)
    elif how == "flip":
        i = 1 + pos % max(1, len(raw) - 1)
        if i < len(raw):
            raw[i] ^= 1 << (pos % 8)
    elif how == "flip_r":
        raw[0] = pos % 40
    elif how == "k_up":
        k += 1 + pos % 50
    elif how == "k_down":
        k = max(0, k - 1 - pos % 50)
    elif how == "n_down":
        n = max(1, n - 1 - pos % 50)
    with address_space_limit(2 << 30):
        got_k, got_n = both(lambda: decode_positions(POS_RICE, bytes(raw), k, n))
    if isinstance(got_n, ValueError):
        assert isinstance(got_k, ValueError), (
            f"numpy refused ({got_n}), the kernel accepted"
        )
    else:
        assert not isinstance(got_k, ValueError), (
            f"the kernel refused ({got_k}), numpy accepted"
        )
        np.testing.assert_array_equal(got_k, got_n)


@pytest.mark.parametrize("acc_dtype", ["float32", "float64"])
@pytest.mark.parametrize("values_dtype", ["float32", "float16", "float64", "int8"])
def test_scatter_add_is_bit_identical_to_numpy(acc_dtype, values_dtype):
    rng = np.random.default_rng(3)
    acc = rng.normal(size=50_000).astype(acc_dtype)
    idx = np.sort(rng.choice(acc.size, 7000, replace=False)).astype(np.int64)
    values = (
        rng.integers(-1, 2, idx.size)
        if values_dtype == "int8"
        else rng.normal(size=idx.size)
    ).astype(values_dtype)
    ref = acc.copy()
    ref[idx] += 0.3141 * values.astype(acc.dtype)
    with compiled(True):
        assert kernels.scatter_add(acc, idx, values, 0.3141)
    np.testing.assert_array_equal(acc, ref)


def test_scatter_add_refuses_an_index_outside_before_writing():
    acc = np.zeros(100, np.float32)
    with compiled(True), pytest.raises(ValueError, match="out of range"):
        kernels.scatter_add(
            acc, np.array([3, 5, 100], np.int64), np.ones(3, np.float32), 1.0
        )
    assert not acc.any()
    with compiled(True), pytest.raises(ValueError, match="differ in number"):
        kernels.scatter_add(
            acc, np.array([3, 5], np.int64), np.ones(1, np.float32), 1.0
        )


@pytest.mark.parametrize(
    "comp",
    [
        TopKCompressor(alpha=0.05, residual_decay=0.0),
        TopKCompressor(alpha=0.05, value_dtype="float16", residual_decay=0.0),
        STCCompressor(alpha=0.05, residual_decay=0.0),
        TernaryCompressor(),
    ],
    ids=["topk", "topk-f16", "stc", "ternary"],
)
def test_payloads_and_accumulated_updates_match_with_and_without_kernels(comp):
    x = np.random.default_rng(5).normal(size=(300, 400)).astype(np.float32)
    encoded = both(lambda: comp.compress([x], None, rng=np.random.default_rng(9))[0][0])
    assert encoded[0] == encoded[1]
    enc = encoded[1]

    def summed():
        acc = np.ones(x.size, np.float32)
        decode(enc.stype, enc.dtype, enc.shape, enc.data).add_to(acc, 0.25)
        return acc

    a, b = both(summed)
    np.testing.assert_array_equal(a, b)


def test_small_tensors_never_import_numba():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from bouquet.codecs import TopKCompressor, decode; "
        "x = np.random.default_rng(0).normal(size=60_000).astype(np.float32); "
        "(e,), _ = TopKCompressor(alpha=0.01).compress([x], [np.zeros_like(x)]); "
        "decode(e.stype, e.dtype, e.shape, e.data).add_to(np.zeros(x.size, "
        "np.float32), 1.0); "
        "print('numba' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("clip_c", [None, 2.5])
def test_ternary_draws_are_identical_with_and_without_kernels(clip_c):
    from bouquet.codecs.ternary import ternarize_sparse

    x = np.random.default_rng(8).normal(size=200_003).astype(np.float32)
    x[17] = 0.0
    # the largest element: q = 256, byte 255 ties with fraction 1
    x[99] = -np.abs(x).max()
    a, b = both(
        lambda: ternarize_sparse(x, clip_c=clip_c, rng=np.random.default_rng(4))
    )
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2] and 0 < a[0].size < x.size and 99 in a[0]


def test_ternary_selection_grows_its_buffers_when_most_elements_are_kept(monkeypatch):
    """Magnitudes near the maximum keep nearly every element: more than the quarter the
    compiled selection starts with (blocks made small so it must grow several times)."""
    from bouquet.codecs.ternary import ternarize_sparse

    monkeypatch.setattr(kernels, "TERNARY_BLOCK", 1000)
    rng = np.random.default_rng(2)
    x = (rng.choice([-1.0, 1.0], 20_011) * rng.uniform(0.97, 1.0, 20_011)).astype(
        np.float32
    )
    a, b = both(lambda: ternarize_sparse(x, rng=np.random.default_rng(6)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].size > 0.9 * x.size and np.array_equal(a[1], x[a[0]] < 0)


def test_drop_entries_compacts_in_place_or_refuses():
    a, b = np.arange(10, dtype=np.int64), np.arange(10) % 3 == 0
    with compiled(True):
        got_a, got_b = kernels.drop_entries(a, b, np.array([0, 4, 9]))
        assert got_a.tolist() == [1, 2, 3, 5, 6, 7, 8] and got_b.tolist() == [
            v % 3 == 0 for v in [1, 2, 3, 5, 6, 7, 8]
        ]
        for bad in ([3, 3], [5, 2], [10], [-1]):
            with pytest.raises(ValueError, match="strictly increasing"):
                kernels.drop_entries(
                    np.arange(10, dtype=np.int64), np.zeros(10, bool), np.array(bad)
                )


def _sparse_updates(rng, n, dtype):
    """(idx, values, factor) updates of several densities and value dtypes (int8: STC
    signs)."""
    out = []
    for k, vdt in [
        (n // 40, "float32"),
        (n // 100, "float16"),
        (n // 20, "int8"),
        (1, "float32"),
        (n // 17, dtype),
    ]:
        idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int64)
        values = (
            rng.integers(-1, 2, k) if vdt == "int8" else rng.normal(size=k)
        ).astype(vdt)
        out.append((idx, values, float(rng.uniform(0.01, 2.0))))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("capacity", [None, 6000], ids=["one-pass", "several-passes"])
def test_staged_sums_are_bit_identical_to_adding_update_after_update(dtype, capacity):
    rng = np.random.default_rng(11)
    n = 100_003  # not a multiple of the tile
    src = rng.normal(size=n).astype(dtype)
    updates = _sparse_updates(rng, n, dtype)
    want = src.copy()
    for idx, values, factor in updates:
        want[idx] += want.dtype.type(factor) * values.astype(want.dtype)
    acc = np.full(n, np.nan, dtype=dtype)  # every element must be set from src
    with compiled(True):
        staged = kernels.SparseSum(n, np.dtype(dtype), capacity)
        first, applied = True, 0
        for idx, values, factor in updates:
            if not staged.take(idx, values, factor):
                # full: apply and stage afresh
                assert staged.pending and capacity is not None
                staged.apply(acc, src if first else None)
                first, applied = False, applied + 1
                assert staged.take(idx, values, factor)
        staged.apply(acc, src if first else None)
    assert applied == (0 if capacity is None else 2) and not staged.pending
    np.testing.assert_array_equal(acc, want)


@pytest.mark.parametrize(
    "idx,match",
    [
        ([3, 5, 5], "strictly increasing"),
        ([7, 5, 9], "strictly increasing"),
        ([-1, 5, 9], "out of range"),
        ([3, 5, 100], "out of range"),
    ],
)
def test_staging_refuses_bad_positions_and_keeps_what_was_staged(idx, match):
    acc = np.zeros(100, np.float32)
    with compiled(True):
        staged = kernels.SparseSum(100, np.dtype(np.float32))
        assert staged.take(np.array([1, 2], np.int64), np.ones(2, np.float32), 1.0)
        with pytest.raises(ValueError, match=match):
            staged.take(np.array(idx, np.int64), np.ones(3, np.float32), 1.0)
        with pytest.raises(ValueError, match="differ in number"):
            staged.take(np.array([4, 6], np.int64), np.ones(3, np.float32), 1.0)
        staged.apply(acc)
    assert acc.tolist() == [0, 1, 1] + [0] * 97  # only the good update landed


def test_dense_updates_are_not_staged():
    with compiled(True):
        staged = kernels.SparseSum(1000, np.dtype(np.float32))
        assert not staged.take(
            np.arange(0, 1000, 10, dtype=np.int64), np.ones(100, np.float32), 1.0
        )
        assert staged.take(
            np.arange(0, 1000, 20, dtype=np.int64), np.ones(50, np.float32), 1.0
        )
    with compiled(False):
        assert kernels.SparseSum.create(1000, np.dtype(np.float32)) is None
    with compiled(True):
        assert kernels.SparseSum.create(1000, np.dtype(np.float16)) is None
        assert kernels.SparseSum.create(1000, np.dtype(np.float32)) is not None
