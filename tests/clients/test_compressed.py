"""Compressing NumPyClients through the bridge: the reply carries encoded updates, the
error-feedback residual stays in ``context.state`` across rounds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import client_factory
from conftest import make_train_message
from flwr.app import Context
from flwr.app import Message
from flwr.app import RecordDict

from bouquet import keys
from bouquet.clients import STCClient
from bouquet.clients import TernaryClient
from bouquet.clients import TopKClient
from bouquet.clients import numpyclient_app
from bouquet.codecs import decode
from bouquet.models import build_model
from bouquet.models import get_weights


def _decoded(reply: Message) -> dict[str, np.ndarray]:
    rec = reply.content[keys.ARRAYS]
    return {
        k: decode(a.stype, a.dtype, a.shape, a.data).to_dense() for k, a in rec.items()
    }


@pytest.mark.parametrize(
    ("cls", "kwargs", "stype"),
    [
        (TopKClient, {"alpha": 0.05}, "bouquet.topk/1"),
        (STCClient, {"alpha": 0.05}, "bouquet.stc/1"),
        (TernaryClient, {}, "bouquet.ternary/1"),
    ],
)
def test_reply_is_the_encoded_update_and_residual_stays_on_the_node(cls, kwargs, stype):
    weights = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    app = numpyclient_app(client_factory(cls, **kwargs))
    context = Context(
        run_id=1,
        node_id=5,
        node_config={keys.PARTITION_ID: 0},
        state=RecordDict(),
        run_config={},
    )
    reply = app(make_train_message(weights, 1), context)
    assert not reply.has_error(), reply.error
    rec = reply.content[keys.ARRAYS]
    assert list(rec.keys()) == list(weights)
    assert all(a.stype == stype for a in rec.values())
    sent = _decoded(reply)
    dense_bytes = sum(v.nbytes for v in weights.values())
    assert sum(len(a.data) for a in rec.values()) < dense_bytes / 8
    assert reply.content[keys.METRICS][keys.NUM_EXAMPLES] == 40
    if cls is TernaryClient:  # no error feedback by default
        assert keys.EF_RESIDUAL not in context.state.array_records
        return
    residual = {k: v.numpy() for k, v in context.state[keys.EF_RESIDUAL].items()}
    # sent + residual = the real update (local - received), for every tensor
    local = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    client = client_factory(cls, **kwargs)(context)
    trained, _, _ = client.fit(list(local.values()), {keys.SERVER_ROUND: 1})
    for (name, w), t in zip(weights.items(), trained, strict=True):
        np.testing.assert_allclose(sent[name] + residual[name], t - w, atol=1e-5)
    # round 2 starts from the stored residual and replaces it
    reply2 = app(make_train_message(weights, 2), context)
    assert not reply2.has_error()
    residual2 = {k: v.numpy() for k, v in context.state[keys.EF_RESIDUAL].items()}
    sent2 = _decoded(reply2)
    trained2, _, _ = client.fit(list(local.values()), {keys.SERVER_ROUND: 2})
    for (name, w), t in zip(weights.items(), trained2, strict=True):
        np.testing.assert_allclose(
            sent2[name] + residual2[name], (t - w) + residual[name], atol=1e-5
        )


def test_bad_codec_settings_raise():
    with pytest.raises(ValueError, match="alpha"):
        client_factory(TopKClient, alpha=0.0)(None)
    with pytest.raises(ValueError, match="value_dtype"):
        client_factory(TopKClient, value_dtype="int8")(None)
    with pytest.raises(ValueError, match="packing"):
        client_factory(TernaryClient, packing="zip")(None)


def test_normalisation_statistics_travel_dense_and_exact():
    """BatchNorm running statistics are never sent through a lossy code (a ternary or
    sign code
    could make a running variance negative); the weights next to them are."""
    import numpy as np
    from flwr.app import RecordDict

    from bouquet.clients.compressed import compress_update
    from bouquet.codecs import STCCompressor
    from bouquet.codecs import decode

    names = [
        "conv.weight",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ]
    received = [
        np.zeros((8, 8), np.float32),
        np.zeros(8, np.float32),
        np.ones(8, np.float32),
        np.array(3, np.int64),
    ]
    rng = np.random.default_rng(0)
    returned = [
        rng.normal(size=(8, 8)).astype(np.float32),
        rng.normal(size=8).astype(np.float32),
        np.full(8, 0.5, np.float32),
        np.array(5, np.int64),
    ]
    out = compress_update(
        STCCompressor(alpha=0.1),
        names,
        received,
        returned,
        state=RecordDict(),
        server_round=1,
        rng=rng,
    )
    assert out["conv.weight"].stype == "bouquet.stc/1"
    for name, g, r in zip(names[1:], received[1:], returned[1:], strict=True):
        arr = out[name]
        assert arr.stype == "bouquet.dense/1" and tuple(arr.shape) == r.shape
        np.testing.assert_array_equal(
            decode(arr.stype, arr.dtype, tuple(arr.shape), arr.data).to_dense(), r - g
        )
