"""The ``Compressed`` strategy wrapper and the compression client mod."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import RecordDict
from flwr.serverapp.strategy import FedAdam
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy import FedMedian
from flwr.serverapp.strategy import FedProx
from flwr.serverapp.strategy import Krum

from bouquet import keys
from bouquet.clients import compression_mod
from bouquet.clients.compressed import encoded_arrayrecord
from bouquet.codecs import DenseCompressor
from bouquet.codecs import TopKCompressor
from bouquet.codecs import decode
from bouquet.codecs import encode_dense
from bouquet.codecs import encode_stc
from bouquet.codecs import encode_topk
from bouquet.strategies import Compressed
from bouquet.strategies import ReplyGuard

GLOBAL = {
    "a": np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32),
    "b": np.zeros((2, 2), dtype=np.float32),
}


class FakeGrid:
    """Duck-typed Grid: nodes 1..N run ``client(node, arrays, round) -> new weights``
    in-process."""

    def __init__(self, num_nodes: int, encode) -> None:
        self.nodes = list(range(1, num_nodes + 1))
        self.encode = encode  # (node, received dict, returned dict) -> ArrayRecord

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            received = {k: v.numpy() for k, v in msg.content["arrays"].items()}
            rnd = int(msg.content["config"][keys.SERVER_ROUND])
            target = {
                k: np.full_like(v, float(node**2) * (1 + 0.1 * rnd))
                for k, v in received.items()
            }
            returned = {
                k: (
                    v
                    + 0.3 * (target[k] - v)
                    + 0.01 * np.sin(np.arange(v.size).reshape(v.shape) + node)
                ).astype(v.dtype)
                for k, v in received.items()
            }
            replies.append(
                make_reply(
                    None,
                    10 * node,
                    {"train-loss": float(node)},
                    node_id=node,
                    array_record=self.encode(node, received, returned),
                )
            )
        return replies


def dense_record(node, received, returned):
    return ArrayRecord({k: Array(v) for k, v in returned.items()})


def topk_full_record(node, received, returned):
    names = list(received)
    enc, _ = TopKCompressor(alpha=1.0, residual_decay=0.0).compress(
        [returned[n] - received[n] for n in names], None
    )
    return encoded_arrayrecord(names, enc)


def initial():
    return ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})


def run(strategy, encode, rounds=4, nodes=3):
    result = strategy.start(
        grid=FakeGrid(nodes, encode),
        initial_arrays=initial(),
        num_rounds=rounds,
        timeout=10,
    )
    return {k: v.numpy() for k, v in result.arrays.items()}


def fedavg():
    return FedAvg(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)


@pytest.mark.parametrize("fast_path", [True, False])
def test_density_one_equals_flower_fedavg_over_rounds(fast_path):
    reference = run(fedavg(), dense_record)
    wrapped = Compressed(fedavg(), fast_path=fast_path)
    got = run(wrapped, topk_full_record)
    assert wrapped.last_path == ("fast" if fast_path else "dense")
    for k in reference:
        np.testing.assert_allclose(got[k], reference[k], rtol=1e-6, atol=1e-6)
        assert not np.allclose(reference[k], GLOBAL[k])  # training moved the model


def configure(strategy, arrays=None):
    # nodes 1..8 asked
    list(
        strategy.configure_train(
            1, arrays or initial(), ConfigRecord(), FakeGrid(8, dense_record)
        )
    )


def reply(node, n, encoded: dict, metrics=None):
    return make_reply(
        None,
        n,
        metrics,
        node_id=node,
        array_record=encoded_arrayrecord(list(encoded), list(encoded.values())),
    )


def hand_replies():
    # node 1 (n=1): top-2 of a: +2 at 0, -4 at 3; b dense zeros
    u1 = np.array([2.0, 0.1, 0.0, -4.0], dtype=np.float32)
    r1 = reply(
        1,
        1,
        {
            "a": encode_topk(u1, np.array([0, 3]))[0],
            "b": encode_dense(np.zeros((2, 2), np.float32)),
        },
        {"train-loss": 1.0},
    )
    # node 2 (n=3): STC of a at 1, 2 -> mu = (1 + 3) / 2 = 2, signs (+, -); b top-1: 8
    # at (1, 1)
    u2 = np.array([0.0, 1.0, -3.0, 0.0], dtype=np.float32)
    b2 = np.array([[0.0, 0.0], [0.0, 8.0]], dtype=np.float32)
    r2 = reply(
        2,
        3,
        {
            "a": encode_stc(u2, np.array([1, 2]))[0],
            "b": encode_topk(b2, np.array([3]))[0],
        },
        {"train-loss": 2.0},
    )
    return r1, r2


@pytest.mark.parametrize(
    "inner",
    [
        fedavg,
        lambda: FedProx(proximal_mu=0.1, fraction_evaluate=0.0),
        lambda: ReplyGuard(fedavg()),
    ],
)
@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_decode_and_aggregate_by_hand(inner, server_lr):
    strategy = Compressed(inner(), server_lr=server_lr)
    configure(strategy)
    arrays, metrics = strategy.aggregate_train(1, list(hand_replies()))
    assert strategy.last_path == "fast"
    # mean update of a: (1 * [2, 0, 0, -4] + 3 * [0, 2, -2, 0]) / 4 = [0.5, 1.5, -1.5,
    # -1.0]
    np.testing.assert_allclose(
        arrays["a"].numpy(),
        GLOBAL["a"] + server_lr * np.array([0.5, 1.5, -1.5, -1.0]),
        rtol=1e-6,
    )
    # b: 3 * 8 / 4 = 6 at (1, 1)
    np.testing.assert_allclose(
        arrays["b"].numpy(), server_lr * np.array([[0, 0], [0, 6.0]]), rtol=1e-6
    )
    assert metrics["train-loss"] == pytest.approx((1 * 1.0 + 3 * 2.0) / 4)
    assert strategy.round_report().get("clients_dropped", 0) == 0


def bad_replies():
    good = encode_dense(np.ones(4, np.float32))
    bdense = encode_dense(np.zeros((2, 2), np.float32))
    trunc = encode_topk(np.ones(4, np.float32), np.array([0]))[0]
    return [
        reply(
            3,
            5,
            {
                "a": type(trunc)(
                    trunc.stype, trunc.dtype, trunc.shape, trunc.data[:-2]
                ),
                "b": bdense,
            },
        ),
        reply(
            4,
            5,
            {
                "a": type(good)("bouquet.topk/7", good.dtype, good.shape, good.data),
                "b": bdense,
            },
        ),
        reply(
            5,
            5,
            {"a": type(good)(good.stype, good.dtype, (2, 2), good.data), "b": bdense},
        ),
        reply(6, 5, {"a": good}),  # missing array b
        reply(7, 0, {"a": good, "b": bdense}),  # weight 0
        make_reply(None, 5, node_id=8, error="client crashed"),
    ]


@pytest.mark.parametrize("inner", [fedavg, lambda: FedMedian(fraction_evaluate=0.0)])
def test_bad_replies_are_dropped_and_counted(inner, caplog):
    strategy = Compressed(inner())
    configure(strategy)
    with caplog.at_level("WARNING"):
        arrays, _ = strategy.aggregate_train(1, [*hand_replies(), *bad_replies()])
    report = strategy.round_report()
    # FedMedian itself ignores weights
    expected_drops = 5 if strategy.last_path == "fast" else 4
    assert report["clients_dropped"] >= expected_drops
    assert any("node 3" in r and "truncated" in r for r in report["drop_reasons"])
    assert any("node 4" in r and "version" in r for r in report["drop_reasons"])
    assert any("node 5" in r and "shape" in r for r in report["drop_reasons"])
    assert any("node 6" in r and "missing" in r for r in report["drop_reasons"])
    assert "node 3" in caplog.text
    a = arrays["a"].numpy()
    assert np.all(np.isfinite(a))
    if strategy.last_path == "fast":  # the two good replies aggregate as if alone
        np.testing.assert_allclose(
            a, GLOBAL["a"] + np.array([0.5, 1.5, -1.5, -1.0]), rtol=1e-6
        )


def test_all_replies_bad_gives_no_update():
    strategy = Compressed(fedavg())
    configure(strategy)
    arrays, metrics = strategy.aggregate_train(1, bad_replies()[:4])
    assert arrays is None and metrics is None
    assert strategy.round_report()["clients_dropped"] == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedMedian(fraction_evaluate=0.0, min_available_nodes=3),
        lambda: Krum(
            num_malicious_nodes=0, fraction_evaluate=0.0, min_available_nodes=3
        ),
        lambda: FedAdam(fraction_evaluate=0.0, min_available_nodes=3, eta=0.1),
    ],
)
def test_composes_with_other_flower_strategies(make):
    # 4 nodes: no ties in Krum's scores
    reference = run(make(), dense_record, rounds=3, nodes=4)
    wrapped = Compressed(make())
    got = run(wrapped, topk_full_record, rounds=3, nodes=4)
    assert wrapped.last_path == "dense"
    for k in reference:
        np.testing.assert_allclose(got[k], reference[k], rtol=1e-5, atol=1e-6)


def test_round_report_merges_inner():
    class Inner(FedAvg):
        def round_report(self):
            return {"clients_dropped": 2, "extra": 1}

    strategy = Compressed(Inner(fraction_evaluate=0.0), fast_path=False)
    configure(strategy)
    strategy.aggregate_train(1, [*hand_replies(), bad_replies()[0]])
    report = strategy.round_report()
    assert report["clients_dropped"] == 3 and report["extra"] == 1


def test_server_lr_validation():
    with pytest.raises(ValueError, match="server_lr"):
        Compressed(fedavg(), server_lr=0.0)


def _train_message(arrays: dict, server_round: int) -> Message:
    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, dst_node_id=4, message_type=MessageType.TRAIN)


def test_compression_mod_compresses_any_clientapp_reply_with_feedback():
    ctx = Context(
        run_id=1, node_id=4, node_config={}, state=RecordDict(), run_config={}
    )
    received = {"w": np.zeros(100, dtype=np.float32)}
    local = {"w": np.linspace(-1, 1, 100).astype(np.float32)}

    def app(msg, context):
        return make_reply(local, 7, node_id=4)

    mod = compression_mod("topk", alpha=0.05)
    out = mod(_train_message(received, 1), ctx, app)
    arr = out.content[keys.ARRAYS]["w"]
    assert arr.stype == "bouquet.topk/1"
    sent = decode(arr.stype, arr.dtype, arr.shape, arr.data).to_dense()
    assert np.count_nonzero(sent) == 5
    residual = ctx.state[keys.EF_RESIDUAL]["w"].numpy()
    np.testing.assert_allclose(sent + residual, local["w"], atol=1e-7)
    # round 2: the residual is added before selecting, so round 2 sends what round 1
    # left out
    out2 = mod(_train_message(received, 2), ctx, app)
    arr2 = out2.content[keys.ARRAYS]["w"]
    sent2 = decode(arr2.stype, arr2.dtype, arr2.shape, arr2.data).to_dense()
    np.testing.assert_allclose(
        sent2 + ctx.state[keys.EF_RESIDUAL]["w"].numpy(),
        local["w"] + residual,
        atol=1e-6,
    )
    assert out2.content[keys.METRICS][keys.NUM_EXAMPLES] == 7


def test_compression_mod_passes_evaluate_and_errors():
    ctx = Context(
        run_id=1, node_id=4, node_config={}, state=RecordDict(), run_config={}
    )
    mod = compression_mod(DenseCompressor())
    err = make_reply(None, 1, node_id=4, error="boom")
    assert mod(
        _train_message({"w": np.zeros(3, np.float32)}, 1), ctx, lambda m, c: err
    ).has_error()
    msg = Message(
        content=RecordDict(), dst_node_id=4, message_type=MessageType.EVALUATE
    )
    sentinel = make_reply(None, 1, node_id=4)
    assert mod(msg, ctx, lambda m, c: sentinel) is sentinel


def test_wrap_compression_follows_the_client_config():
    from bouquet.simulations.methods.compression import wrap_compression
    from bouquet.strategies.async_fedavg import AsyncFedAvg
    from bouquet.strategies.decoding import decode_update

    plain = {"client": {"_target_": "bouquet.clients.TorchClient"}}
    topk = {
        "client": {"_target_": "bouquet.clients.TopKClient"},
        "compression": {"server_lr": 0.5},
    }
    inner = ReplyGuard(fedavg())
    assert wrap_compression(plain, None, inner) is inner
    wrapped = wrap_compression(topk, None, inner)
    assert (
        isinstance(wrapped, Compressed)
        and wrapped.server_lr == 0.5
        and wrapped.strategy is inner
    )
    # an asynchronous strategy keeps its own loop and gets the decoder instead
    guarded_async = ReplyGuard(AsyncFedAvg())
    assert wrap_compression(topk, None, guarded_async) is guarded_async
    assert guarded_async.strategy.decoder is decode_update


def test_decode_update_for_async_decoder():
    from bouquet.strategies.decoding import decode_update

    enc = encode_topk(np.array([0.0, 5.0, 0.0, -1.0], np.float32), np.array([1]))[0]
    record = encoded_arrayrecord(["a"], [enc])
    out = decode_update(record, {"a": GLOBAL["a"]})
    np.testing.assert_array_equal(out["a"], [0, 5, 0, 0])
    with pytest.raises(ValueError, match="missing"):
        decode_update(record, GLOBAL)


def test_declared_weighted_mean_with_own_weights_takes_the_fast_path():
    class EqualWeights(FedAvg):
        weighted_mean_aggregation = True

        def reply_weights(self, replies):
            return [1.0 for _ in replies]

    strategy = Compressed(EqualWeights(fraction_evaluate=0.0))
    configure(strategy)
    arrays, _ = strategy.aggregate_train(1, list(hand_replies()))
    assert strategy.last_path == "fast"
    # equal weights: ([2, 0, 0, -4] + [0, 2, -2, 0]) / 2
    np.testing.assert_allclose(
        arrays["a"].numpy(), GLOBAL["a"] + np.array([1.0, 1.0, -1.0, -2.0]), rtol=1e-6
    )


def test_dense_form_payloads_in_the_fast_path():
    from bouquet.codecs import encode_ternary

    t = np.array([1, 0, -1, 1], dtype=np.int8)
    # dense form: decoded again when summed
    tern = encode_ternary(t, 0.5, packing_form="trit")[0]
    r1 = reply(1, 1, {"a": tern, "b": encode_dense(np.ones((2, 2), np.float32))})
    r2 = reply(
        2,
        3,
        {
            "a": encode_dense(np.array([4.0, 0, 0, 0], np.float32)),
            "b": encode_dense(np.zeros((2, 2), np.float32)),
        },
    )
    strategy = Compressed(fedavg())
    configure(strategy)
    arrays, _ = strategy.aggregate_train(1, [r1, r2])
    assert strategy.last_path == "fast"
    # a: (1 * 0.5 * [1, 0, -1, 1] + 3 * [4, 0, 0, 0]) / 4; b: 1 * ones / 4
    np.testing.assert_allclose(
        arrays["a"].numpy(), GLOBAL["a"] + np.array([12.5, 0, -0.5, 0.5]) / 4, rtol=1e-6
    )
    np.testing.assert_allclose(arrays["b"].numpy(), np.full((2, 2), 0.25), rtol=1e-6)
