"""DGC's remedies on the client: the momentum lives in ``context.state`` next to the
error-feedback residual, the warm-up density reaches the reply's bytes, the options
reach the codec from the client's constructor and from the client mod."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import client_factory
from conftest import make_train_message
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict

from bouquet import keys
from bouquet.clients import STCClient
from bouquet.clients import TopKClient
from bouquet.clients import compression_mod
from bouquet.clients import numpyclient_app
from bouquet.clients.compressed import compress_update
from bouquet.codecs import TopKCompressor
from bouquet.codecs import decode
from bouquet.models import build_model
from bouquet.models import get_weights


def _dense(arr: Array) -> np.ndarray:
    return decode(arr.stype, arr.dtype, tuple(arr.shape), arr.data).to_dense()


def _state(context_state: RecordDict, key: str) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in context_state[key].items()}


def test_momentum_and_residual_kept_in_context_state_by_hand_over_3_rounds():
    """The numbers of tests/codecs/test_dgc.py, through the client path: received zeros,
    returned
    = the round's update, the state carries u_t and e_t from round to round."""
    comp = TopKCompressor(alpha=0.25, momentum_correction=0.5)
    state = RecordDict()
    received = [np.zeros(4, np.float32), np.array(7, np.int64)]
    deltas = [[1.0, -3.0, 2.0, 0.5], [0.5, 1.0, -1.5, 0.0], [0.0, -2.0, 1.0, 1.0]]
    expected = [
        ([0, -3, 0, 0], [1, 0, 2, 0.5], [1, 0, 2, 0.5]),
        ([2, 0, 0, 0], [0, 1, 1.5, 0.75], [0, 1, -0.5, 0.25]),
        ([0, 0, 2.25, 0], [0, -0.5, 0, 1.875], [0, -1.5, 0, 1.125]),
    ]
    for rnd, (delta, (sent, e, u)) in enumerate(
        zip(deltas, expected, strict=True), start=1
    ):
        returned = [np.array(delta, np.float32), np.array(7 + rnd, np.int64)]
        out = compress_update(
            comp,
            ["w", "count"],
            received,
            returned,
            state=state,
            server_round=rnd,
            rng=np.random.default_rng(rnd),
        )
        np.testing.assert_array_equal(_dense(out["w"]), sent)
        assert _dense(out["count"]) == rnd  # integers travel exactly, no momentum
        np.testing.assert_array_equal(_state(state, keys.EF_RESIDUAL)["w"], e)
        np.testing.assert_array_equal(_state(state, keys.DGC_MOMENTUM)["w"], u)
        assert _state(state, keys.DGC_MOMENTUM)["count"] == 0


def test_no_momentum_state_without_momentum_correction():
    state = RecordDict()
    compress_update(
        TopKCompressor(alpha=0.5),
        ["w"],
        [np.zeros(4, np.float32)],
        [np.ones(4, np.float32)],
        state=state,
        server_round=1,
        rng=np.random.default_rng(0),
    )
    assert (
        keys.EF_RESIDUAL in state.array_records
        and keys.DGC_MOMENTUM not in state.array_records
    )


def test_a_non_finite_momentum_in_state_is_refused_and_the_state_left_unchanged():
    comp = TopKCompressor(alpha=0.5, momentum_correction=0.9)
    state = RecordDict()
    state[keys.DGC_MOMENTUM] = ArrayRecord(
        {"w": Array(np.array([np.inf, 0, 0, 0], np.float32))}
    )
    state[keys.EF_RESIDUAL] = ArrayRecord(
        {"w": Array(np.array([0.5, 0, 0, 0], np.float32))}
    )
    with pytest.raises(ValueError, match="NaN or inf"):
        compress_update(
            comp,
            ["w"],
            [np.zeros(4, np.float32)],
            [np.ones(4, np.float32)],
            state=state,
            server_round=2,
            rng=np.random.default_rng(0),
        )
    assert _state(state, keys.DGC_MOMENTUM)["w"][0] == np.inf
    np.testing.assert_array_equal(_state(state, keys.EF_RESIDUAL)["w"], [0.5, 0, 0, 0])


def test_warmup_bytes_per_round_follow_the_schedule():
    """What the reply carries (Array.data) in round r is the top-d_r payload, d_r from
    the warm-up."""
    x = np.random.default_rng(2).normal(size=(30, 40)).astype(np.float32)
    comp = TopKCompressor(alpha=0.01, warmup_rounds=2)
    nbytes = []
    for rnd in range(1, 5):
        out = compress_update(
            comp,
            ["w"],
            [np.zeros_like(x)],
            [x],
            state=RecordDict(),
            server_round=rnd,
            rng=np.random.default_rng(0),
        )
        k = int(np.count_nonzero(_dense(out["w"])))
        assert k == int(np.ceil(x.size * comp.density(rnd - 1)))
        plain = compress_update(
            TopKCompressor(alpha=comp.density(rnd - 1)),
            ["w"],
            [np.zeros_like(x)],
            [x],
            state=RecordDict(),
            server_round=1,
            rng=np.random.default_rng(0),
        )
        assert out["w"].data == plain["w"].data
        nbytes.append(len(out["w"].data))
    assert [round(comp.density(j), 4) for j in range(4)] == [0.2154, 0.0464, 0.01, 0.01]
    assert nbytes[0] > nbytes[1] > nbytes[2] == nbytes[3]


@pytest.mark.parametrize("cls", [TopKClient, STCClient])
def test_client_options_reach_the_codec_and_the_node_state(cls):
    opts = {
        "alpha": 0.05,
        "momentum_correction": 0.9,
        "clip_norm": 0.01,
        "warmup_rounds": 3,
    }
    client = client_factory(cls, **opts)(None)
    for name, value in opts.items():
        assert getattr(client.compressor, name) == value
    weights = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    app = numpyclient_app(client_factory(cls, **opts))
    context = Context(
        run_id=1,
        node_id=5,
        node_config={keys.PARTITION_ID: 0},
        state=RecordDict(),
        run_config={},
    )
    reply = app(make_train_message(weights, 1), context)
    assert not reply.has_error(), reply.error
    sent = {k: _dense(a) for k, a in reply.content[keys.ARRAYS].items()}
    total = np.sqrt(
        sum(float(np.sum(v.astype(np.float64) ** 2)) for v in sent.values())
    )
    # nothing sent beyond the clipped update (no residual yet)
    assert total <= 0.01 * (1 + 1e-5)
    momentum = _state(context.state, keys.DGC_MOMENTUM)
    assert list(momentum) == list(weights)
    for name, v in sent.items():
        assert np.all(momentum[name].reshape(-1)[np.flatnonzero(v)] == 0)
    with pytest.raises(ValueError, match="residual_decay"):
        client_factory(cls, alpha=0.05, momentum_correction=0.9, residual_decay=0.0)(
            None
        )


def test_compression_mod_keeps_the_momentum_under_its_key():
    mod = compression_mod(
        "stc", alpha=0.25, momentum_correction=0.5, momentum_key="my-momentum"
    )
    received = {"w": np.zeros(4, np.float32)}
    msg = make_train_message(received, 1, node_id=3)
    ctx = Context(
        run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={}
    )

    def app(m: Message, c: Context) -> Message:
        return Message(
            RecordDict(
                {
                    keys.ARRAYS: ArrayRecord(
                        {"w": Array(np.array([1.0, -3.0, 2.0, 0.5], np.float32))}
                    ),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 4}),
                }
            ),
            reply_to=m,
        )

    reply = mod(msg, ctx, app)
    assert reply.content[keys.ARRAYS]["w"].stype == "bouquet.stc/1"
    np.testing.assert_array_equal(_state(ctx.state, "my-momentum")["w"], [1, 0, 2, 0.5])
    assert keys.DGC_MOMENTUM not in ctx.state.array_records
