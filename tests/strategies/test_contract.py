"""Issue 21: every bouquet strategy and wrapper chain is a drop-in for plain FedAvg.

For each chain and each reply set, two consecutive rounds are aggregated by the chain
and by Flower's own ``FedAvg`` on the same replies; shapes, dtypes, values and metric
keys must match. Intended differences, named by the tests that show them: replies with
weight 0 are dropped (``test_zero_weight_is_dropped...``) and ``Compressed`` adds
``bouquet-*`` keys (bytes received, dense-equivalent bytes, drops) to the aggregated
train MetricRecord.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import RecordDict
from flwr.serverapp.strategy import FedAvg

from bouquet import keys
from bouquet.strategies import Compressed
from bouquet.strategies import KLWeightedFedAvg
from bouquet.strategies import ReplyGuard
from bouquet.strategies import ServerAdjusted

NODES = [1, 2, 3]
H = keys.LABEL_HISTOGRAM


class _Grid:
    def __init__(self, nodes=None):
        self.nodes = list(nodes or NODES)

    def get_node_ids(self):
        return list(self.nodes)


def _kw(weight_key: str) -> dict:
    return {
        "fraction_evaluate": 0.0,
        "min_available_nodes": 1,
        "min_train_nodes": 1,
        "weighted_by_key": weight_key,
    }


CHAINS: dict[str, Callable[[str], object]] = {
    "ReplyGuard": lambda wk: ReplyGuard(FedAvg(**_kw(wk))),
    "Compressed": lambda wk: Compressed(FedAvg(**_kw(wk))),
    "Compressed dense path": lambda wk: Compressed(FedAvg(**_kw(wk)), fast_path=False),
    "Compressed(ReplyGuard)": lambda wk: Compressed(ReplyGuard(FedAvg(**_kw(wk)))),
    "ServerAdjusted(identity)": lambda wk: ServerAdjusted(
        FedAvg(**_kw(wk)), lambda arrays, rnd: arrays
    ),
    "ServerAdjusted(Compressed(ReplyGuard))": lambda wk: ServerAdjusted(
        Compressed(ReplyGuard(FedAvg(**_kw(wk)))), lambda arrays, rnd: arrays
    ),
    "KL, equal histograms": lambda wk: KLWeightedFedAvg(mode="exp", tau=0.5, **_kw(wk)),
    "ReplyGuard(KL)": lambda wk: ReplyGuard(
        KLWeightedFedAvg(mode="exp", tau=0.5, **_kw(wk))
    ),
}

# reply set -> (global arrays of round 1, extra metrics per reply, error replies, weight
# key)
F32 = {
    "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "b": np.zeros(4, np.float32),
}
SETS: dict[str, tuple[dict[str, np.ndarray], dict, int, str]] = {
    "float32": (F32, {}, 0, keys.NUM_EXAMPLES),
    "float64": (
        {k: v.astype(np.float64) for k, v in F32.items()},
        {},
        0,
        keys.NUM_EXAMPLES,
    ),
    "0-d": ({**F32, "s": np.array(0.5, np.float32)}, {}, 0, keys.NUM_EXAMPLES),
    "int64 counter": (
        {
            **F32,
            "num_batches_tracked": np.array(3, np.int64),
            "i": np.arange(4, dtype=np.int64),
        },
        {},
        0,
        keys.NUM_EXAMPLES,
    ),
    "float16": (
        {k: v.astype(np.float16) for k, v in F32.items()},
        {},
        0,
        keys.NUM_EXAMPLES,
    ),
    "list and scalar metrics": (
        F32,
        {"train-loss": 1.0, "per-class-acc": [0.5, 0.25, 0.75]},
        0,
        keys.NUM_EXAMPLES,
    ),
    "error replies": (F32, {}, 2, keys.NUM_EXAMPLES),
    "weighted_by_key": (F32, {}, 0, "my-weight"),
}


def _replies(
    global_arrays: dict[str, np.ndarray],
    dtypes: dict[str, np.dtype],
    extra: dict,
    errors: int,
    weight_key: str,
    rnd: int,
) -> list:
    """Replies as clients send them: full local weights in the *model's* dtype (an
    integer
    buffer stays integer even when FedAvg made its global float64)."""
    out = []
    for node in NODES:
        rng = np.random.default_rng([node, rnd])
        local = {}
        for k, g in global_arrays.items():
            step = (
                rng.normal(size=g.shape) * 0.1
                if dtypes[k].kind == "f"
                else rng.integers(0, 5, size=g.shape)
            )
            local[k] = np.asarray(g.astype(np.float64) + step).astype(dtypes[k])
        metrics = (
            {**extra, H: [5.0, 5.0, 5.0], "train-loss": float(node + rnd)}
            if extra
            else {H: [5.0, 5.0, 5.0]}
        )
        if weight_key != keys.NUM_EXAMPLES:
            metrics[weight_key] = float(10 * node)
        msg = make_reply(local, 10 * node + rnd, metrics, node_id=node)
        out.append(msg)
    out += [
        make_reply(None, 1, node_id=100 + i, error="client crashed")
        for i in range(errors)
    ]
    return out


def _round(strategy, rnd: int, arrays: ArrayRecord, replies: list):
    nodes = [int(m.metadata.src_node_id) for m in replies] or NODES
    list(strategy.configure_train(rnd, arrays, ConfigRecord(), _Grid(nodes)))
    return strategy.aggregate_train(rnd, replies)


def _same(got, want, what: str) -> None:
    assert (got is None) == (want is None), what
    if want is None:
        return
    assert set(got.keys()) == set(want.keys()), what
    for k in want:
        g, w = got[k].numpy(), want[k].numpy()
        assert g.shape == w.shape, f"{what}: {k} shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{what}: {k} dtype {g.dtype} != {w.dtype}"
        # float16: one unit in the last place
        tol = 2e-3 if w.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(
            g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol, err_msg=what
        )


def _same_metrics(got, want, what: str) -> None:
    assert (got is None) == (want is None), what
    if want is None:
        return
    # intended difference: Compressed adds its per-round facts under "bouquet-*" keys
    extra = {k for k in got.keys() if k.startswith("bouquet-")}
    assert set(got.keys()) - extra == set(want.keys()), (
        f"{what}: metric keys {sorted(got.keys())} != {sorted(want.keys())}"
    )
    for k in want:
        np.testing.assert_allclose(
            np.asarray(got[k], dtype=float),
            np.asarray(want[k], dtype=float),
            rtol=1e-9,
            err_msg=f"{what}: metric {k}",
        )


@pytest.mark.parametrize("set_name", list(SETS))
@pytest.mark.parametrize("chain", list(CHAINS))
def test_chain_equals_fedavg_over_two_rounds(chain, set_name):
    glob, extra, errors, weight_key = SETS[set_name]
    dtypes = {k: v.dtype for k, v in glob.items()}
    strategy, reference = CHAINS[chain](weight_key), FedAvg(**_kw(weight_key))
    arrays_s = arrays_r = ArrayRecord({k: Array(v) for k, v in glob.items()})
    current = dict(glob)
    for rnd in (1, 2):
        replies = _replies(current, dtypes, extra, errors, weight_key, rnd)
        got, got_m = _round(strategy, rnd, arrays_s, replies)
        want, want_m = _round(
            reference,
            rnd,
            arrays_r,
            _replies(current, dtypes, extra, errors, weight_key, rnd),
        )
        _same(got, want, f"{chain} / {set_name} / round {rnd}")
        _same_metrics(got_m, want_m, f"{chain} / {set_name} / round {rnd}")
        report = getattr(strategy, "round_report", dict)()
        assert report.get("clients_dropped", 0) == 0, report
        arrays_s, arrays_r = got, want
        current = {k: v.numpy() for k, v in want.items()}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_empty_and_all_error_rounds_match_fedavg(chain):
    strategy, reference = (
        CHAINS[chain](keys.NUM_EXAMPLES),
        FedAvg(**_kw(keys.NUM_EXAMPLES)),
    )
    arrays = ArrayRecord({k: Array(v) for k, v in F32.items()})
    for replies in ([], [make_reply(None, 1, node_id=9, error="boom")]):
        got = _round(strategy, 1, arrays, list(replies))
        want = _round(reference, 1, arrays, list(replies))
        assert got == want == (None, None)


def test_zero_weight_is_dropped_by_bouquet_where_fedavg_divides_by_zero():
    """Intended difference: a reply with weight 0 (or all weights 0) is dropped and
    counted by bouquet's chains; Flower's FedAvg averages it in (and with all weights 0
    divides by zero)."""
    arrays = ArrayRecord({k: Array(v) for k, v in F32.items()})
    replies = [
        make_reply({k: v + 1 for k, v in F32.items()}, 0, node_id=1),
        make_reply({k: v + 3 for k, v in F32.items()}, 10, node_id=2),
    ]
    for chain in ("ReplyGuard", "Compressed", "Compressed(ReplyGuard)"):
        strategy = CHAINS[chain](keys.NUM_EXAMPLES)
        got, _ = _round(strategy, 1, arrays, replies)
        assert strategy.round_report()["clients_dropped"] == 1
        np.testing.assert_allclose(got["w"].numpy(), F32["w"] + 3, rtol=1e-6)


def test_guard_min_replies_applies_inside_compressed_on_every_path():
    arrays = ArrayRecord({k: Array(v) for k, v in F32.items()})
    one = [
        make_reply({k: v + 1 for k, v in F32.items()}, 10, node_id=1),
        make_reply(None, 1, node_id=2, error="x"),
    ]
    alone = ReplyGuard(FedAvg(**_kw(keys.NUM_EXAMPLES)), min_replies=2)
    assert _round(alone, 1, arrays, one) == (None, None) and alone.rounds_skipped == 1
    for fast in (True, False):
        guard = ReplyGuard(FedAvg(**_kw(keys.NUM_EXAMPLES)), min_replies=2)
        comp = Compressed(guard, fast_path=fast)
        assert _round(comp, 1, arrays, one) == (None, None)
        assert (
            guard.rounds_skipped == 1
            and comp.round_report().get("round_skipped") is True
        )


def test_attribute_writes_reach_the_inner_strategy():
    inner = FedAvg(fraction_train=1.0)
    guard = ReplyGuard(inner)
    comp = Compressed(guard)
    comp.fraction_train = 0.5
    assert (
        inner.fraction_train == 0.5
        and guard.fraction_train == 0.5
        and comp.fraction_train == 0.5
    )
    assert "fraction_train" not in vars(comp) and "fraction_train" not in vars(guard)
    comp.server_lr = 0.5  # the wrapper's own attribute stays on the wrapper
    assert vars(comp)["server_lr"] == 0.5 and not hasattr(inner, "server_lr")
    guard.min_replies = 3
    assert vars(guard)["min_replies"] == 3


def test_kl_keeps_list_metrics_and_hands_the_users_function_the_replies_own_records():
    seen: list[RecordDict] = []

    def aggr(contents, weight_key):
        seen.extend(contents)
        return FedAvg().train_metrics_aggr_fn(contents, weight_key)

    kl = KLWeightedFedAvg(
        mode="exp",
        tau=0.5,
        train_metrics_aggr_fn=aggr,
        **{k: v for k, v in _kw(keys.NUM_EXAMPLES).items()},
    )
    replies = _replies(
        F32,
        {k: v.dtype for k, v in F32.items()},
        {"per-class-acc": [0.5, 0.5, 0.5]},
        0,
        keys.NUM_EXAMPLES,
        1,
    )
    _, metrics = _round(
        kl, 1, ArrayRecord({k: Array(v) for k, v in F32.items()}), replies
    )
    assert "per-class-acc" in metrics and "train-loss" in metrics
    assert [c for c in seen] == [
        m.content for m in sorted(replies, key=lambda m: m.metadata.src_node_id)
    ]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_equals_flower_fedavg_on_random_compressed_updates(
    seed, compiled, monkeypatch
):
    """Issue 14: the sparse fast path and Flower's dense FedAvg agree to 1e-6 on the
    same updates (top-k with float32 and float16 values, STC, ternary in sparse and trit
    forms), with the compiled loops (staged tiled sums, forced on these small tensors)
    and without."""
    from bouquet.clients.compressed import encoded_arrayrecord
    from bouquet.codecs import STCCompressor
    from bouquet.codecs import TernaryCompressor
    from bouquet.codecs import TopKCompressor
    from bouquet.codecs import decode
    from bouquet.codecs import kernels

    if compiled:
        pytest.importorskip(
            "numba", reason="numba is a declared dependency: `make setup` installs it"
        )
    monkeypatch.setattr(kernels, "MIN_CODES", 0 if compiled else 1 << 62)

    rng = np.random.default_rng(seed)
    glob = {
        "w": rng.normal(size=(64, 50)).astype(np.float32),
        "b": rng.normal(size=50).astype(np.float32),
    }
    comps = [
        TopKCompressor(alpha=0.05, residual_decay=0.0),
        TopKCompressor(alpha=0.1, value_dtype="float16", residual_decay=0.0),
        STCCompressor(alpha=0.02, residual_decay=0.0),
        TernaryCompressor(packing="sparse"),
        TernaryCompressor(packing="trit"),
    ]
    compressed, dense = [], []
    for node, comp in enumerate(comps, 1):
        names = list(glob)
        enc, _ = comp.compress(
            [rng.normal(size=v.shape).astype(np.float32) * 0.1 for v in glob.values()],
            None,
            rng=rng,
        )
        n = int(rng.integers(5, 50))
        compressed.append(
            make_reply(
                None, n, node_id=node, array_record=encoded_arrayrecord(names, enc)
            )
        )
        full = {
            k: glob[k] + decode(e.stype, e.dtype, e.shape, e.data).to_dense()
            for k, e in zip(names, enc, strict=True)
        }
        dense.append(make_reply(full, n, node_id=node))
    for fast in (True, False):
        comp = Compressed(FedAvg(**_kw(keys.NUM_EXAMPLES)), fast_path=fast)
        got, got_m = _round(
            comp, 1, ArrayRecord({k: Array(v) for k, v in glob.items()}), compressed
        )
        want, _ = FedAvg(**_kw(keys.NUM_EXAMPLES)).aggregate_train(1, dense)
        payload = sum(
            len(a.data)
            for m in compressed
            for a in next(iter(m.content.array_records.values())).values()
        )
        assert got_m["bouquet-bytes-up"] == payload, (
            got_m["bouquet-bytes-up"],
            payload,
        )
        assert got_m["bouquet-dense-bytes"] == 5 * 4 * (64 * 50 + 50) > payload
        assert got_m["bouquet-dropped"] == 0
        assert comp.last_path == ("fast" if fast else "dense")
        for k in glob:
            np.testing.assert_allclose(
                got[k].numpy(), want[k].numpy(), rtol=1e-6, atol=1e-6
            )
