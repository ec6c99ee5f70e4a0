"""Issue 13: nothing a client sends can crash, stall or poison the server.

Each test reproduces one observation of the issue (they failed before the fix).
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict

import numpy as np
import pytest
from conftest import address_space_limit
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import RecordDict
from flwr.serverapp.strategy import FedAvg

from bouquet.clients.compressed import compress_update
from bouquet.codecs import TopKCompressor
from bouquet.codecs import decode
from bouquet.codecs import encode_topk
from bouquet.codecs.packing import POS_ALL
from bouquet.codecs.topk import WIRE_ID as TOPK_ID
from bouquet.codecs.wire import write_header
from bouquet.strategies import Compressed
from bouquet.strategies import ReplyGuard

GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


class _Grid:
    def get_node_ids(self):
        return list(range(1, 10))


def _compressed(strategy=None, global_arrays=None):
    comp = Compressed(
        strategy
        or FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)
    )
    arrays = ArrayRecord({k: Array(v) for k, v in (global_arrays or GLOBAL).items()})
    list(comp.configure_train(1, arrays, ConfigRecord(), _Grid()))
    return comp


def _good(node: int, value: float = 1.0, n: int = 10):
    return make_reply(
        {k: np.full_like(v, value) for k, v in GLOBAL.items()}, n, node_id=node
    )


def _with(node: int, n: int, **arrays: Array):
    record = {k: Array(np.asarray(v)) for k, v in GLOBAL.items()}
    record.update(arrays)
    return make_reply(None, n, node_id=node, array_record=ArrayRecord(record))


def _topk_all_payload(shape: tuple[int, ...]) -> bytes:
    """A 24-byte-ish top-k payload claiming ``shape`` with position coding 'all' and no
    values."""
    n = int(np.prod(shape, dtype=object))
    return write_header(TOPK_ID, "float32", shape) + struct.pack(
        "<IBBI", min(n, 2**32 - 1), 0, POS_ALL, 0
    )


def test_1_tiny_payload_huge_shape_is_refused_without_allocating():
    data = _topk_all_payload((65536, 65535))
    assert len(data) <= 30
    huge = Array(
        dtype="float32", shape=(65536, 65535), stype="bouquet.topk/1", data=data
    )
    comp = _compressed()
    t0 = time.perf_counter()
    with address_space_limit(1 << 30):  # 1 GiB more than now; the claim is ~32 GiB
        arrays, _ = comp.aggregate_train(1, [_with(1, 10, w=huge), _good(2)])
        with pytest.raises(ValueError):  # the codec alone, shape taken at face value
            decode("bouquet.topk/1", "float32", (65536, 65535), data)
        with pytest.raises(ValueError):  # 2**27 elements claimed by 30 bytes
            decode("bouquet.topk/1", "float32", (2**27,), _topk_all_payload((2**27,)))
    assert time.perf_counter() - t0 < 2.0
    report = comp.round_report()
    assert report["clients_dropped"] == 1 and "shape" in report["drop_reasons"][0]
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)  # the good reply alone


def test_1b_dense_npy_claiming_a_huge_shape_is_refused_without_allocating():
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\x00" * 16
    bad = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=data)
    comp = _compressed()
    guard = ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1))
    list(
        guard.configure_train(
            1,
            ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
            ConfigRecord(),
            _Grid(),
        )
    )
    with address_space_limit(1 << 30):
        comp.aggregate_train(1, [_with(1, 10, w=bad), _good(2)])
        guard.aggregate_train(1, [_with(1, 10, w=bad), _good(2)])
    assert comp.round_report()["clients_dropped"] == 1
    assert guard.round_report()["clients_dropped"] == 1


def test_2_finite_values_do_not_overflow_the_fast_path():
    big = np.full(12, 3e37, np.float32)
    enc, _ = encode_topk(big, np.arange(12))
    record = {
        "w": Array(
            dtype=enc.dtype,
            shape=(4, 3),
            stype=enc.stype,
            data=encode_topk(big.reshape(4, 3), np.arange(12))[0].data,
        )
    }
    record["b"] = Array(np.zeros(3, np.float32))
    comp = _compressed()
    replies = [
        make_reply(None, 100, node_id=1, array_record=ArrayRecord(record)),
        _good(2, 1.0, n=100),
        _good(3, 2.0, n=100),
    ]
    arrays, _ = comp.aggregate_train(1, replies)
    dense = [
        make_reply(
            {"w": big.reshape(4, 3), "b": np.zeros(3, np.float32)}, 100, node_id=1
        ),
        _good(2, 1.0, 100),
        _good(3, 2.0, 100),
    ]
    flower, _ = FedAvg().aggregate_train(1, dense)
    assert np.all(np.isfinite(flower["w"].numpy()))
    assert np.all(np.isfinite(arrays["w"].numpy()))
    np.testing.assert_allclose(arrays["w"].numpy(), flower["w"].numpy(), rtol=1e-6)


def test_3_empty_dense_payload_is_a_dropped_reply():
    empty = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=b"")
    for strategy in (
        _compressed(),
        _compressed(FedAvg(fraction_evaluate=0.0)).__class__(
            ReplyGuard(FedAvg(min_available_nodes=1, min_train_nodes=1)),
            fast_path=False,
        ),
    ):
        list(
            strategy.configure_train(
                1,
                ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                ConfigRecord(),
                _Grid(),
            )
        )
        arrays, _ = strategy.aggregate_train(1, [_with(1, 10, w=empty), _good(2)])
        assert strategy.round_report()["clients_dropped"] == 1
        np.testing.assert_allclose(arrays["w"].numpy(), 1.0)


def test_4_a_non_finite_local_step_does_not_poison_the_residual():
    comp = TopKCompressor(alpha=0.5)
    state = RecordDict()
    names = ["w"]
    received = [np.zeros(4, np.float32)]
    rng = np.random.default_rng(0)
    compress_update(
        comp,
        names,
        received,
        [np.array([1.0, -2.0, 0.5, 0.1], np.float32)],
        state=state,
        server_round=1,
        rng=rng,
    )
    before = state.array_records[
        "ef-residual"
        if "ef-residual" in state.array_records
        else next(iter(state.array_records))
    ]
    before = {k: v.numpy().copy() for k, v in before.items()}
    with pytest.raises(ValueError, match="NaN or inf"):
        compress_update(
            comp,
            names,
            received,
            [np.array([np.nan, 1.0, 0.0, 0.0], np.float32)],
            state=state,
            server_round=2,
            rng=rng,
        )
    after = {k: v.numpy() for k, v in next(iter(state.array_records.values())).items()}
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
        assert np.all(np.isfinite(after[k]))
    out = compress_update(
        comp,
        names,
        received,
        [np.array([0.0, 1.0, 0.0, 3.0], np.float32)],
        state=state,
        server_round=3,
        rng=rng,
    )
    dec = decode(out["w"].stype, out["w"].dtype, tuple(out["w"].shape), out["w"].data)
    assert np.all(np.isfinite(dec.to_dense()))


def test_5_float16_overflow_integer_codecs_and_int64_wrap_are_refused():
    glob16 = {"w": np.zeros(4, np.float16)}
    comp = _compressed(global_arrays=glob16)
    enc, _ = encode_topk(np.array([1e6, 0, 0, 0], np.float32), np.array([0]))
    as16 = Array(
        dtype="float16",
        shape=(4,),
        stype="bouquet.topk/1",
        data=write_header(TOPK_ID, "float16", (4,))
        + enc.data[len(write_header(TOPK_ID, "float32", (4,))) :],
    )
    ok = make_reply({"w": np.ones(4, np.float16)}, 10, node_id=2)
    arrays, _ = comp.aggregate_train(
        1, [make_reply(None, 10, node_id=1, array_record=ArrayRecord({"w": as16})), ok]
    )
    report = comp.round_report()
    assert report["clients_dropped"] == 1 and "NaN or inf" in report["drop_reasons"][0]
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)
    # a lossy codec for an integer tensor: refused, not wrapped around
    with pytest.raises(ValueError, match="floating-point tensors only"):
        enc64 = encode_topk(np.array([1e30, 0], np.float32), np.array([0]))[0]
        decode(
            "bouquet.topk/1",
            "int64",
            (2,),
            write_header(TOPK_ID, "int64", (2,))
            + enc64.data[len(write_header(TOPK_ID, "float32", (2,))) :],
        )
    # an element count beyond int64: refused by name, never decoded as empty
    with pytest.raises(ValueError, match="elements"):
        decode("bouquet.topk/1", "float32", (2**32 - 1,) * 3, b"")


def test_6_guard_outside_compressed_is_refused_with_the_right_order():
    with pytest.raises(ValueError, match=r"Compressed\(ReplyGuard\(strategy\)\)"):
        ReplyGuard(Compressed(FedAvg()))
    with pytest.raises(ValueError, match="once"):
        Compressed(Compressed(FedAvg()))


def test_update_norm_bounds_drop_and_report():
    comp = _compressed(
        ReplyGuard(
            FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1),
            max_norm_ratio=3.0,
        )
    )
    replies = [_good(1, 1.0), _good(2, 1.1), _good(3, 0.9), _good(4, 50.0)]
    arrays, _ = comp.aggregate_train(1, replies)
    report = comp.round_report()
    assert (
        report["clients_dropped"] == 1
        and "norm" in report["drop_reasons"][0]
        and "node 4" in report["drop_reasons"][0]
    )
    # mean of 1.0, 1.1, 0.9
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0, rtol=1e-6)
    dense_guard = ReplyGuard(
        FedAvg(min_available_nodes=1, min_train_nodes=1), max_update_norm=10.0
    )
    list(
        dense_guard.configure_train(
            1,
            ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
            ConfigRecord(),
            _Grid(),
        )
    )
    arrays, _ = dense_guard.aggregate_train(1, replies)
    assert dense_guard.round_report()["clients_dropped"] == 1
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0, rtol=1e-6)


def test_unexpected_exception_in_one_reply_is_a_drop(monkeypatch):
    import bouquet.strategies.decoding as mod

    real = mod.dense_update

    def flaky(full, ref, work=None):
        if np.all(full == 1.0):
            raise MemoryError("simulated")
        return real(full, ref, work)

    monkeypatch.setattr(mod, "dense_update", flaky)
    comp = _compressed()
    arrays, _ = comp.aggregate_train(1, [_good(1, 1.0, n=7), _good(2, 3.0)])
    assert comp.round_report()["drop_reasons"][0].startswith("node 1: MemoryError")
    np.testing.assert_allclose(arrays["w"].numpy(), 3.0)


def test_ordered_record_names_do_not_matter():
    comp = _compressed()
    record = ArrayRecord(
        OrderedDict(
            [
                ("b", Array(np.ones(3, np.float32))),
                ("w", Array(np.ones((4, 3), np.float32))),
            ]
        )
    )
    arrays, _ = comp.aggregate_train(
        1, [make_reply(None, 10, node_id=1, array_record=record)]
    )
    np.testing.assert_allclose(arrays["b"].numpy(), 1.0)
