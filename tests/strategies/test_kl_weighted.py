"""Tests of KL-divergence-weighted FedAvg (strategies/kl_weighted.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reply
from flwr.serverapp.strategy import FedAvg

from bouquet import keys
from bouquet.strategies.guard import ReplyGuard
from bouquet.strategies.kl_math import histogram_problem
from bouquet.strategies.kl_math import kl_divergence
from bouquet.strategies.kl_math import kl_divergences
from bouquet.strategies.kl_math import kl_weights
from bouquet.strategies.kl_math import smooth_distribution
from bouquet.strategies.kl_weighted import KLWeightedFedAvg

H = keys.LABEL_HISTOGRAM
ROOT = Path(__file__).resolve().parents[2]


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }


def _reply(node: int, n: int, hist, seed: int | None = None, **metrics):
    m = {keys.TRAIN_LOSS: 0.5 + node, **metrics}
    if hist is not None:
        m[H] = hist
    return make_reply(_arrays(node if seed is None else seed), n, m, node_id=node)


def _agg(strategy, replies):
    arrays, metrics = strategy.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in arrays.items()}, metrics


def _manual(weights, nodes):
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return {
        k: sum(
            wi * _arrays(n)[k].astype(np.float64)
            for wi, n in zip(w, nodes, strict=True)
        )
        for k in ("w", "b")
    }


# ------------------------------------------------------------------ pure functions
def test_smoothing_and_kl_by_hand():
    p = smooth_distribution([3, 1], 0.0)
    np.testing.assert_allclose(p, [0.75, 0.25])
    np.testing.assert_allclose(smooth_distribution([1, 0], 0.2), [0.9, 0.1])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_divergence(p, np.array([0.5, 0.5])) == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == math.inf
    d = kl_divergences([[1, 0], [1, 1]], [1, 1], smoothing=0.2)
    assert d[0] == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert d[1] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="smoothing"):
        smooth_distribution([1, 1], 1.0)
    with pytest.raises(ValueError, match="counts"):
        smooth_distribution([0, 0], 0.1)


def test_exp_weights_by_hand():
    n, d = [10, 30], [0.5, 0.1]
    w = kl_weights(n, d, mode="exp", tau=0.5, a=1.0)
    # shifted by min(d)=0.1: 10*exp(-0.4/0.5), 30*exp(0)
    np.testing.assert_allclose(w, [10 * math.exp(-0.8), 30.0])
    w0 = kl_weights(n, d, mode="exp", tau=0.5, a=0.0)
    np.testing.assert_allclose(w0, [math.exp(-0.8), 1.0])
    far = kl_weights(n, d, mode="exp", tau=0.5, a=1.0, direction="farther")
    np.testing.assert_allclose(far, [10.0, 30 * math.exp(-0.8)])


def test_disco_weights_by_hand():
    n, d = [10, 30], [0.5, 0.1]
    w = kl_weights(n, d, mode="disco", a=0.5, b=0.1)
    np.testing.assert_allclose(w, [0.25 - 0.25 + 0.1, 0.75 - 0.05 + 0.1])
    relu = kl_weights(n, d, mode="disco", a=1.0, b=0.0)  # 0.25 - 0.5 < 0 -> 0
    np.testing.assert_allclose(relu, [0.0, 0.65])
    far = kl_weights(n, d, mode="disco", a=0.5, b=0.0, direction="farther")
    np.testing.assert_allclose(far, [0.25 + 0.25, 0.75 + 0.05])
    all_zero = kl_weights(n, [5.0, 5.0], mode="disco", a=1.0, b=0.0)
    np.testing.assert_array_equal(all_zero, [10.0, 30.0])  # documented fallback to n_i


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        (3, "not a list"),
        ([1, 2], "length"),
        ([1, -1, 2], "negative"),
        ([1, float("nan"), 2], "non-finite"),
        ([0, 0, 0], "all zero"),
        ([1, 2, 3], None),
    ],
)
def test_histogram_problem(value, reason):
    got = histogram_problem(value, 3)
    assert got is None if reason is None else reason in got


def test_bad_arguments_raise():
    for kwargs, key in [
        ({"mode": "x"}, "mode"),
        ({"tau": 0.0}, "tau"),
        ({"reference": "x"}, "reference"),
        ({"direction": "x"}, "direction"),
        ({"bad_histogram": "x"}, "bad_histogram"),
        ({"reference": "server"}, "reference_distribution"),
        ({"smoothing": 1.5}, "smoothing"),
    ]:
        with pytest.raises(ValueError, match=key):
            KLWeightedFedAvg(**kwargs)


# ------------------------------------------------------------------ strategy
def test_identical_histograms_give_exactly_fedavg():
    hist = [5, 3, 2]
    replies = [_reply(i, n, hist) for i, n in [(1, 10), (2, 25), (3, 7)]]
    ref, ref_m = _agg(
        FedAvg(), [_reply(i, n, hist) for i, n in [(1, 10), (2, 25), (3, 7)]]
    )
    got, got_m = _agg(KLWeightedFedAvg(mode="exp", a=1.0), replies)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    assert got_m[keys.TRAIN_LOSS] == ref_m[keys.TRAIN_LOSS]
    disco, _ = _agg(
        KLWeightedFedAvg(mode="disco", a=1.0, b=0.0),
        [_reply(i, n, hist) for i, n in [(1, 10), (2, 25), (3, 7)]],
    )
    for k in ref:
        np.testing.assert_allclose(disco[k], ref[k], rtol=1e-6, atol=1e-7)


def test_aggregate_matches_hand_weights_and_report():
    hists = {1: [8, 2], 2: [5, 5], 3: [1, 9]}
    nums = {1: 10, 2: 10, 3: 20}
    strategy = KLWeightedFedAvg(mode="exp", tau=0.3, a=1.0, smoothing=0.01)
    # arrival order != node order
    replies = [_reply(i, nums[i], hists[i]) for i in (3, 1, 2)]
    got, _ = _agg(strategy, replies)
    pooled = np.sum([hists[i] for i in (1, 2, 3)], axis=0)
    d = kl_divergences([hists[i] for i in (1, 2, 3)], pooled, 0.01)
    w = np.array([nums[i] for i in (1, 2, 3)]) * np.exp(-(d - d.min()) / 0.3)
    want = _manual(w, [1, 2, 3])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    report = strategy.round_report()
    assert report["kl_node_ids"] == [1, 2, 3]
    np.testing.assert_allclose(report["kl_weights"], w / w.sum())
    np.testing.assert_allclose(report["kl_div"], d)
    np.testing.assert_allclose(report["kl_reference"], pooled / pooled.sum())
    assert report["clients_dropped"] == 0 and report["kl_bad_histograms"] == 0
    assert strategy.round_report() == {}  # consumed once per round


def test_server_reference_is_used():
    q = [1, 1]
    strategy = KLWeightedFedAvg(
        mode="exp", tau=1.0, reference="server", reference_distribution=q, smoothing=0.0
    )
    _agg(strategy, [_reply(1, 10, [9, 1]), _reply(2, 10, [5, 5])])
    report = strategy.round_report()
    assert report["kl_reference"] == [0.5, 0.5]
    assert report["kl_div"][1] == pytest.approx(0.0, abs=1e-15)
    assert report["kl_weights"][1] > report["kl_weights"][0]


@pytest.mark.parametrize("bad", [None, [1, 2], [4, -1, 2], [1.0, float("inf"), 2.0]])
def test_bad_histogram_fallback_keeps_fedavg_share(bad):
    good = {1: ([6, 2, 2], 10), 2: ([1, 1, 8], 30)}
    strategy = KLWeightedFedAvg(mode="exp", tau=0.5, bad_histogram="fallback")
    replies = [_reply(i, n, h) for i, (h, n) in good.items()] + [_reply(3, 20, bad)]
    got, metrics = _agg(strategy, replies)
    report = strategy.round_report()
    assert report["kl_bad_histograms"] == 1 and report["clients_dropped"] == 0
    assert report["kl_node_ids"] == [1, 2, 3] and report["kl_div"][2] is None
    w = np.array(report["kl_weights"])
    assert w[2] == pytest.approx(20 / 60)  # its FedAvg share
    d = kl_divergences(
        [good[1][0], good[2][0]], np.sum([good[1][0], good[2][0]], axis=0), 1e-3
    )
    raw = np.array([10, 30]) * np.exp(-(d - d.min()) / 0.5)
    np.testing.assert_allclose(w[:2], raw / raw.sum() * 40 / 60)
    want = _manual(w, [1, 2, 3])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert keys.TRAIN_LOSS in metrics


def test_bad_histogram_drop_rule_counts_and_excludes():
    strategy = KLWeightedFedAvg(mode="exp", bad_histogram="drop")
    replies = [
        _reply(1, 10, [3, 7]),
        _reply(2, 10, [7, 3]),
        _reply(3, 50, [float("nan"), 1.0]),
        _reply(4, 5, None),
    ]
    got, _ = _agg(strategy, replies)
    report = strategy.round_report()
    assert report["clients_dropped"] == 2 and report["kl_bad_histograms"] == 2
    assert report["kl_node_ids"] == [1, 2]
    want = _manual([1, 1], [1, 2])  # symmetric histograms, equal n -> equal weights
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_unusable_replies_never_stop_the_round():
    strategy = KLWeightedFedAvg()
    bad_weight = make_reply(_arrays(5), 0, {H: [1, 1]}, node_id=5)
    other_arrays = make_reply(
        {"x": np.zeros(2, np.float32)}, 10, {H: [1, 1]}, node_id=6
    )
    error = make_reply(None, 1, node_id=7, error="boom")
    got, _ = _agg(
        strategy,
        [_reply(1, 10, [1, 1]), _reply(2, 10, [1, 1]), bad_weight, other_arrays, error],
    )
    assert strategy.round_report()["clients_dropped"] == 2
    want = _manual([1, 1], [1, 2])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    all_bad, _ = strategy.aggregate_train(2, [bad_weight, error])
    assert all_bad is None


def test_disco_all_zero_is_reported_and_is_fedavg():
    strategy = KLWeightedFedAvg(mode="disco", a=2.0, b=0.0)
    # d ~ log 2: 0.75 - 2 * 0.69 < 0
    replies = [_reply(1, 10, [10, 0]), _reply(2, 30, [0, 10])]
    got, _ = _agg(strategy, replies)
    report = strategy.round_report()
    assert report["kl_disco_all_zero"] is True
    np.testing.assert_allclose(report["kl_weights"], [0.25, 0.75])
    want = _manual([10, 30], [1, 2])
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
    positive = KLWeightedFedAvg(mode="disco", a=0.05, b=0.1)
    positive.aggregate_train(1, [_reply(1, 10, [10, 0]), _reply(2, 30, [0, 10])])
    assert positive.round_report()["kl_disco_all_zero"] is False


def test_works_behind_reply_guard():
    guarded = ReplyGuard(KLWeightedFedAvg(mode="disco", a=0.5, b=0.05))
    # node 3: no histogram key
    replies = [_reply(1, 10, [3, 7]), _reply(2, 20, [7, 3]), _reply(3, 20, None)]
    arrays, _ = guarded.aggregate_train(1, replies)
    assert arrays is not None
    report = guarded.round_report()
    assert report["kl_bad_histograms"] == 1 and report["kl_node_ids"] == [1, 2, 3]


def test_runtime_kwargs_give_the_server_reference():
    from functools import partial

    from bouquet.simulations.methods.experiment import Experiment
    from bouquet.simulations.run.serverapp import strategy_runtime_kwargs

    cfg = {
        "seed": 0,
        "dataset": {"name": "digits", "root": None},
        "simulation": {"num_clients": 2},
    }
    exp = Experiment(cfg)
    kwargs = strategy_runtime_kwargs(
        cfg, exp, partial(KLWeightedFedAvg, reference="server")
    )
    assert (
        kwargs["reference_distribution"]
        == np.bincount(exp.dataset.y_test, minlength=10).tolist()
    )
    assert "reference_distribution" not in strategy_runtime_kwargs(
        cfg, exp, partial(KLWeightedFedAvg, reference="pooled")
    )


# ------------------------------------------------------------------ end to end
# ---------------------------------------------------------- composition with Compressed
class _Grid:
    """The two Grid calls FedAvg.configure_train makes."""

    def get_node_ids(self):
        return [1, 2, 3]


def _topk_reply(node: int, n: int, hist, global_arrays: dict[str, np.ndarray], k: int):
    """A reply whose arrays are the top-k of (local - global), encoded as
    bouquet.topk/1."""
    from flwr.app import Array
    from flwr.app import ArrayRecord

    from bouquet.codecs import encode_topk
    from bouquet.codecs import select_topk

    record, dense = {}, {}
    for name, ref in global_arrays.items():
        update = _arrays(node)[name] - ref
        enc, sent = encode_topk(update, select_topk(update.reshape(-1), k))
        record[name] = Array(
            dtype=enc.dtype, shape=tuple(enc.shape), stype=enc.stype, data=enc.data
        )
        dense[name] = ref + sent.to_dense()
    reply = make_reply(
        None,
        n,
        {H: hist, keys.TRAIN_LOSS: 1.0},
        node_id=node,
        array_record=ArrayRecord(record),
    )
    return reply, dense


def test_inside_compressed_equals_kl_on_decoded_updates():
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord

    from bouquet.strategies.compressed import Compressed

    global_arrays = {k: np.zeros_like(v) for k, v in _arrays(0).items()}
    hists = {1: [9, 1], 2: [5, 5], 3: [2, 8]}
    nums = {1: 10, 2: 30, 3: 20}
    made = [_topk_reply(i, nums[i], hists[i], global_arrays, k=2) for i in (1, 2, 3)]
    comp = Compressed(KLWeightedFedAvg(mode="exp", tau=0.5))
    comp.configure_train(
        1,
        ArrayRecord({k: Array(v) for k, v in global_arrays.items()}),
        ConfigRecord(),
        _Grid(),
    )
    bad = make_reply(
        None,
        5,
        {H: [1, 1]},
        node_id=4,
        array_record=ArrayRecord(
            {
                "w": Array(
                    dtype="float32", shape=(3, 4), stype="bouquet.topk/1", data=b"xx"
                )
            }
        ),
    )
    arrays, _ = comp.aggregate_train(1, [m for m, _ in made] + [bad])
    # KL weighting declares a weighted mean with its own reply_weights
    assert comp.last_path == "fast"
    report = comp.round_report()
    assert report["clients_dropped"] == 1 and report["kl_node_ids"] == [1, 2, 3]
    dense_replies = [
        make_reply(d, nums[i], {H: hists[i], keys.TRAIN_LOSS: 1.0}, node_id=i)
        for i, (_, d) in zip((1, 2, 3), made, strict=True)
    ]
    ref, _ = KLWeightedFedAvg(mode="exp", tau=0.5).aggregate_train(1, dense_replies)
    for k, v in ref.items():
        np.testing.assert_allclose(arrays[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-7)
        # only the uploaded top-k moved
        assert np.count_nonzero(arrays[k].numpy()) <= 3 * 2
