"""The aggregate is written straight into its reply bytes (issue 14): the same bytes as
``np.save`` of the sum computed update after update, with and without the compiled loops
and without the in-place bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array

from bouquet.codecs import Decoded
from bouquet.codecs import kernels
from bouquet.codecs import npy
from bouquet.strategies.accumulate import Accumulator


def _save(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize(
    "dtype,shape",
    [
        ("float32", (3, 4)),
        ("float64", (7,)),
        ("int16", (2, 2, 2)),
        ("float32", ()),
        ("float32", (2_000_000,)),
    ],
)
def test_npy_bytes_are_what_np_save_writes(dtype, shape):
    made = npy.npy_bytes(np.dtype(dtype), shape)
    assert made is not None, "CPython builds the bytes in place"
    data, body = made
    want = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    body[...] = want.reshape(-1)
    assert (
        type(data) is bytes and data == _save(want) and hash(data) == hash(_save(want))
    )
    arr = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    np.testing.assert_array_equal(arr.numpy(), want)
    np.testing.assert_array_equal(
        Array.inflate(arr.deflate(), {k: v for k, v in arr.slice_array()}).numpy(), want
    )


def test_the_body_view_keeps_the_bytes_alive():
    made = npy.npy_bytes(np.dtype(np.float32), (1000,))
    assert made is not None
    body = made[1]
    del made
    body[:] = 2.5  # the bytes are still there (held by the view)
    assert float(body.sum()) == 2500.0


def _updates(rng, n, dtype):
    """Sparse (float32, float16, STC-like int8 signs with a scale) and dense updates."""
    out = []
    for k, vdt, scale in [
        (n // 30, "float32", None),
        (n // 50, "float16", None),
        (n // 20, "int8", 0.37),
        (n, dtype, None),
        (n // 25, "float32", None),
    ]:
        if k == n:
            out.append(
                Decoded((n,), np.dtype(dtype), None, rng.normal(size=n).astype(dtype))
            )
            continue
        idx = np.sort(rng.choice(n, k, replace=False)).astype(np.int64)
        values = (
            rng.integers(-1, 2, k) if vdt == "int8" else rng.normal(size=k)
        ).astype(vdt)
        out.append(Decoded((n,), np.dtype(dtype), idx, values, scale))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32"])
@pytest.mark.parametrize("mode", ["compiled", "numpy", "copied-bytes"])
def test_accumulated_bytes_equal_np_save_of_the_sum_update_after_update(
    dtype, mode, monkeypatch
):
    if mode == "compiled":
        pytest.importorskip(
            "numba", reason="numba is a declared dependency: `make setup` installs it"
        )
    monkeypatch.setattr(kernels, "MIN_CODES", 0 if mode == "compiled" else 1 << 62)
    if mode == "copied-bytes":  # off CPython: built in a buffer and copied
        monkeypatch.setattr(npy, "_fresh_bytes", lambda size: None)
    rng = np.random.default_rng(4)
    n = 70_001
    ref = (rng.normal(size=n) * 10).astype(dtype)
    work = (
        np.float64
        if ref.dtype.kind != "f"
        else (np.float32 if ref.dtype.itemsize < 4 else ref.dtype)
    )
    updates = _updates(rng, n, str(np.dtype(work)))
    weights = rng.uniform(0.05, 1.0, len(updates))
    want = ref.astype(work)
    for dec, w in zip(updates, weights, strict=True):
        dec.add_to(want, float(w))  # numpy, one update at a time
    acc = Accumulator(ref)
    for dec, w in zip(updates, weights, strict=True):
        acc.add(dec, float(w))
    out = acc.array()
    out_dtype = ref.dtype if ref.dtype.kind == "f" else np.dtype(np.float64)
    assert (
        out.data == _save(want.astype(out_dtype))
        and out.dtype == str(out_dtype)
        and out.shape == (n,)
    )


def test_an_accumulator_without_updates_returns_the_reference():
    ref = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert Accumulator(ref).array().data == _save(ref)
