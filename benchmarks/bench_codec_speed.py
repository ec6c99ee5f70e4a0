"""Codec throughput and aggregation cost, as ratios measured in the same run.

1. Encode / decode an 11.7M-element float32 update (ResNet-18 size) with top-k 1% (float32 and
   float16 values), STC 1% and TernGrad ternary, against a plain ``np.copy`` of the same array
   (median of repeats; ratio = codec time / copy time).
2. Aggregate 100 compressed (top-k 1%, STC 1%) updates with ``Compressed(FedAvg)`` (sparse fast
   path) against Flower's dense ``FedAvg.aggregate_train`` of the same updates sent as dense
   weights: time ratio and peak memory (``tracemalloc``, above what the replies already hold).
   Default size per update 1.17M elements (100 dense replies of 11.7M would need 4.7 GB here);
   ``--agg-size 11700000`` for the full size.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_codec_speed.py``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from benchmarks._results import markdown_table, write_section  # noqa: E402
from bouquet.codecs import STCCompressor, TernaryCompressor, TopKCompressor, decode  # noqa: E402
from bouquet.strategies import Compressed  # noqa: E402


def set_task_identity() -> None:
    """Let Messages be built outside a running ServerApp (as the unit tests do)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def codec_rows(n: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=n).astype(np.float32)
    copy_s = timed(lambda: np.copy(x), repeats * 3)
    rows = [{"operation": "np.copy (reference)", "ms": round(1e3 * copy_s, 2), "x copy": 1.0, "payload MB": round(x.nbytes / 1e6, 2)}]
    comps = {
        "topk 1% float32": TopKCompressor(alpha=0.01, residual_decay=0.0),
        "topk 1% float16": TopKCompressor(alpha=0.01, value_dtype="float16", residual_decay=0.0),
        "STC 1%": STCCompressor(alpha=0.01, residual_decay=0.0),
        "ternary (TernGrad)": TernaryCompressor(),
        "topk 1% + EF": TopKCompressor(alpha=0.01),
    }
    residual = [rng.normal(size=n).astype(np.float32) * 0.01]
    for name, comp in comps.items():
        res = residual if comp.residual_decay > 0 else None
        enc_s = timed(lambda comp=comp, res=res: comp.compress([x], res, rng=rng), repeats)
        (enc,), _ = comp.compress([x], res, rng=rng)
        dec_s = timed(lambda enc=enc: decode(enc.stype, enc.dtype, enc.shape, enc.data), repeats)
        dense_s = timed(lambda enc=enc: decode(enc.stype, enc.dtype, enc.shape, enc.data).to_dense(), repeats)
        mb = round(len(enc.data) / 1e6, 3)
        rows.append({"operation": f"encode {name}", "ms": round(1e3 * enc_s, 1), "x copy": round(enc_s / copy_s, 1), "payload MB": mb})
        rows.append({"operation": f"decode {name}", "ms": round(1e3 * dec_s, 1), "x copy": round(dec_s / copy_s, 1), "payload MB": mb})
        rows.append({"operation": f"decode + densify {name}", "ms": round(1e3 * dense_s, 1), "x copy": round(dense_s / copy_s, 1),
                     "payload MB": mb})
    return rows


def _reply(node: int, record: ArrayRecord, n_ex: int) -> Message:
    content = RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": n_ex})})
    return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return list(range(1, 101))


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 1e6


def aggregation_rows(n: int, clients: int, codec: str) -> list[dict]:
    set_task_identity()
    rng = np.random.default_rng(1)
    global_w = rng.normal(size=n).astype(np.float32)
    init = ArrayRecord({"w": Array(global_w)})
    comp = TopKCompressor(alpha=0.01, residual_decay=0.0) if codec == "topk" else STCCompressor(alpha=0.01, residual_decay=0.0)
    compressed, payload = [], 0
    for i in range(clients):
        (enc,), _ = comp.compress([rng.normal(size=n).astype(np.float32)], None, rng=rng)
        payload += len(enc.data)
        compressed.append(_reply(i + 1, ArrayRecord({"w": Array(dtype=enc.dtype, shape=enc.shape, stype=enc.stype, data=enc.data)}), 10 + i))
    wrapped = Compressed(FedAvg(fraction_evaluate=0.0, min_available_nodes=clients))

    def run_compressed() -> None:
        list(wrapped.configure_train(1, init, ConfigRecord(), _Grid()))
        wrapped.aggregate_train(1, compressed)

    c_s, c_mb = _measure(run_compressed)
    # the same updates as dense weights, aggregated by Flower's own FedAvg
    dense = []
    for msg in compressed:
        arr = msg.content["arrays"]["w"]
        upd = decode(arr.stype, arr.dtype, arr.shape, arr.data).to_dense()
        dense.append(_reply(msg.metadata.dst_node_id, ArrayRecord({"w": Array(global_w + upd)}), 10))
    fedavg = FedAvg(fraction_evaluate=0.0)
    d_s, d_mb = _measure(lambda: fedavg.aggregate_train(1, dense))
    model_mb = global_w.nbytes / 1e6
    return [
        {"aggregation": f"Compressed(FedAvg), {clients} x {codec} 1%", "elements": n, "s": round(c_s, 3),
         "x dense": round(c_s / d_s, 3), "peak MB": round(c_mb, 1), "peak / model": round(c_mb / model_mb, 2),
         "input MB": round(payload / 1e6, 1)},
        {"aggregation": f"Flower FedAvg (dense), {clients} replies", "elements": n, "s": round(d_s, 3), "x dense": 1.0,
         "peak MB": round(d_mb, 1), "peak / model": round(d_mb / model_mb, 2), "input MB": round(clients * model_mb, 1)},
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=11_700_000)
    p.add_argument("--agg-size", type=int, default=1_170_000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.disable(logging.WARNING)
    codec = codec_rows(args.size, args.repeats)
    agg = aggregation_rows(args.agg_size, args.clients, "topk") + aggregation_rows(args.agg_size, args.clients, "stc")
    codec_cols = ["operation", "ms", "x copy", "payload MB"]
    agg_cols = ["aggregation", "elements", "s", "x dense", "peak MB", "peak / model", "input MB"]
    body = (
        f"Encode / decode of one {args.size:,}-element float32 update (median of {args.repeats}); `x copy` = time / "
        "`np.copy` of the same array in the same run. Encode includes the top-k selection (`np.argpartition`) or "
        "the stochastic rounding; decode validates everything and returns the sparse form, `decode + densify` also "
        "builds the dense tensor.\n\n" + markdown_table(codec, codec_cols)
        + f"\nAggregation of {args.clients} updates of {args.agg_size:,} elements: bouquet's sparse weighted-mean path "
        "(`configure_train` + `aggregate_train`, which decodes every payload) against Flower's dense "
        "`FedAvg.aggregate_train` on the same updates as dense weights. Peak memory by `tracemalloc` during the call "
        "(the replies themselves are not counted); `peak / model` in units of one dense model.\n\n"
        + markdown_table(agg, agg_cols)
    )
    if args.agg_size < 11_700_000:
        body += ("\nReduced aggregation size (100 dense replies of 11.7M float32 would take 4.7 GB on this shared "
                 "machine); full size: `nice -n 10 .venv/bin/python benchmarks/bench_codec_speed.py --agg-size 11700000`.\n")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    body += (f"\nLoad average at the end of the run: {load} on {os.cpu_count()} cores (shared by several engineers): "
             "absolute times are inflated and noisy; compare the ratios.\n")
    write_section("codec_speed", "Codec throughput and sparse aggregation cost", body)
    print(markdown_table(codec, codec_cols))
    print(markdown_table(agg, agg_cols))


if __name__ == "__main__":
    main()
