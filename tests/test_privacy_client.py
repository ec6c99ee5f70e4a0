"""Client side of DP with compression (issue 34): clip (and noise) before the codec,
refuse the wrong orders."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_train_message
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod
from flwr.clientapp.mod import adaptiveclipping_mod
from flwr.clientapp.mod import fixedclipping_mod

from bouquet.clients import compression_mod
from bouquet.clients.privacy import KEY_CLIPPING_NORM
from bouquet.clients.privacy import PrivateClient
from bouquet.clients.privacy import clip_update
from bouquet.clients.privacy import dp_clip_mod
from bouquet.codecs import decode
from bouquet.codecs import is_bouquet_stype
from bouquet.strategies.client_errors import explain_client_error

SHAPES = {"w": (6, 5), "b": (5,)}
STEP = 3.0  # every element of the local update; norm sqrt(35) * 3 = 17.7


def _received() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _app(mods) -> ClientApp:
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = {
            k: v.numpy() + np.float32(STEP) for k, v in msg.content["arrays"].items()
        }
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                    "metrics": MetricRecord({"num-examples": 3}),
                }
            ),
            reply_to=msg,
        )

    return app


def _ctx() -> Context:
    return Context(
        run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={}
    )


def _update_norm(reply: Message, received: dict[str, np.ndarray]) -> float:
    """L2 norm of what the reply carries, decoded when compressed."""
    total = 0.0
    for name, arr in reply.content["arrays"].items():
        if is_bouquet_stype(arr.stype):
            u = decode(arr.stype, arr.dtype, tuple(arr.shape), arr.data).to_dense()
        else:
            u = arr.numpy().astype(np.float64) - received[name]
        total += float(np.sum(np.square(u, dtype=np.float64)))
    return float(np.sqrt(total))


def test_clip_update_scales_a_long_update_to_the_bound_and_keeps_its_direction():
    rec = _received()
    names = list(rec)
    ret = [rec[n] + np.float32(STEP) for n in names]
    out, norm = clip_update(names, [rec[n] for n in names], ret, 1.0)
    assert norm == pytest.approx(STEP * np.sqrt(35), rel=1e-5)
    u = np.concatenate(
        [
            (o.astype(np.float64) - rec[n]).ravel()
            for o, n in zip(out, names, strict=True)
        ]
    )
    assert np.linalg.norm(u) == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(u, u[0], rtol=1e-4)  # same direction: every element still equal
    assert all(o.dtype == np.float32 for o in out)


def test_clip_update_leaves_a_short_update_alone():
    rec = _received()
    names = list(rec)
    ret = [rec[n] + np.float32(0.01) for n in names]
    out, _ = clip_update(names, [rec[n] for n in names], ret, 1.0)
    for o, r in zip(out, ret, strict=True):
        assert np.allclose(o, r, atol=1e-6)


def test_local_noise_has_std_z_times_c():
    rec = {"w": np.zeros(200_000, np.float32)}
    out, _ = clip_update(
        ["w"],
        [rec["w"]],
        [rec["w"]],
        2.0,
        noise_multiplier=0.5,
        rng=np.random.default_rng(0),
    )
    assert np.std(out[0]) == pytest.approx(1.0, rel=0.02)  # z * C = 0.5 * 2
    with pytest.raises(ValueError, match="needs an rng"):
        clip_update(["w"], [rec["w"]], [rec["w"]], 2.0, noise_multiplier=0.5)


def test_integer_tensors_are_not_sent_and_non_finite_updates_refused():
    g = {"w": np.zeros(3, np.float32), "n": np.array([4], np.int64)}
    out, _ = clip_update(
        ["w", "n"], [g["w"], g["n"]], [g["w"] + 1, np.array([9])], 10.0
    )
    assert out[1].tolist() == [4] and np.allclose(out[0], 1.0)
    with pytest.raises(ValueError, match="not finite"):
        clip_update(["w"], [g["w"]], [np.array([np.inf, 0, 0], np.float32)], 1.0)


@pytest.mark.parametrize(
    "codec,kwargs", [("topk", {"alpha": 0.5}), ("stc", {"alpha": 0.5}), ("dense", {})]
)
def test_right_order_clips_before_compressing(codec, kwargs):
    rec = _received()
    reply = _app([compression_mod(codec, **kwargs), dp_clip_mod(clip_norm=1.0)])(
        make_train_message(rec), _ctx()
    )
    assert not reply.has_error()
    # compressed on the wire
    assert all(is_bouquet_stype(a.stype) for a in reply.content["arrays"].values())
    assert _update_norm(reply, rec) <= 1.0 + 1e-5  # of the clipped update


def test_wrong_order_is_refused_naming_the_right_one():
    rec = _received()
    with pytest.raises(
        ValueError,
        match=r"list dp_clip_mod after compression_mod .*mods=\[compression_mod",
    ):
        _app([dp_clip_mod(clip_norm=1.0), compression_mod("topk", alpha=0.5)])(
            make_train_message(rec), _ctx()
        )


def test_uncalled_mod_and_bad_options_are_refused():
    with pytest.raises(TypeError, match=r"write mods=\[dp_clip_mod\(clip_norm=1.0\)\]"):
        _app([dp_clip_mod])(make_train_message(_received()), _ctx())
    for bad in (
        {"clip_norm": 0.0},
        {"clip_norm": float("nan")},
        {"clip_norm": 1.0, "noise_multiplier": -1.0},
    ):
        with pytest.raises(ValueError, match="must be a finite number"):
            dp_clip_mod(**bad)


def test_clip_norm_comes_from_flowers_client_side_wrapper_and_must_agree():
    rec = _received()
    msg = make_train_message(rec, config={KEY_CLIPPING_NORM: 0.5})
    reply = _app([dp_clip_mod()])(msg, _ctx())
    assert _update_norm(reply, rec) == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="differs from the server's clipping_norm=0.5"):
        _app([dp_clip_mod(clip_norm=1.0)])(
            make_train_message(rec, config={KEY_CLIPPING_NORM: 0.5}), _ctx()
        )
    with pytest.raises(ValueError, match="needs the server's clipping_norm"):
        _app([dp_clip_mod()])(make_train_message(rec), _ctx())


def test_flowers_message_api_mods_work_inside_compression_mod_and_fail_outside_it():
    """Flower 1.42's flwr.clientapp.mod versions speak the Message API: the right order
    works."""
    rec = _received()
    msg = make_train_message(rec, config={KEY_CLIPPING_NORM: 1.0})
    reply = _app([compression_mod("topk", alpha=0.5), fixedclipping_mod])(msg, _ctx())
    assert _update_norm(reply, rec) <= 1.0 + 1e-5
    local = LocalDpMod(clipping_norm=1.0, sensitivity=1.0, epsilon=100.0, delta=1e-5)
    assert not _app([compression_mod("topk", alpha=0.5), local])(
        make_train_message(rec), _ctx()
    ).has_error()
    for mods in (
        [fixedclipping_mod, compression_mod("topk", alpha=0.5)],
        [local, compression_mod("topk", alpha=0.5)],
    ):
        with pytest.raises(TypeError, match="Unsupported serialization type") as err:
            _app(mods)(make_train_message(rec, config={KEY_CLIPPING_NORM: 1.0}), _ctx())
        meaning = explain_client_error(f"<class 'TypeError'>:<'{err.value}'>")
        # the server names bouquet's mod
        assert meaning is not None and "dp_clip_mod" in meaning


def test_flowers_adaptive_clipping_mod_works_inside_compression_mod_not_outside():
    """Client-side adaptive clipping: the clip and the norm bit come before the
    codec."""
    rec = _received()
    reply = _app([compression_mod("stc", alpha=0.5), adaptiveclipping_mod])(
        make_train_message(rec, config={KEY_CLIPPING_NORM: 1.0}), _ctx()
    )
    assert not reply.has_error()
    assert _update_norm(reply, rec) <= 1.0 + 1e-5
    # the update (norm 17.7) was above the bound
    assert reply.content["metrics"]["norm_bit"] == 1
    with pytest.raises(TypeError, match="Unsupported serialization type") as err:
        _app([adaptiveclipping_mod, compression_mod("stc", alpha=0.5)])(
            make_train_message(rec, config={KEY_CLIPPING_NORM: 1.0}), _ctx()
        )
    meaning = explain_client_error(f"<class 'TypeError'>:<'{err.value}'>")
    assert meaning is not None and "dp_clip_mod" in meaning


class _Encoding(NumPyClient):
    """A client with its own encoder (like STCClient): records what it was given."""

    def __init__(self) -> None:
        self.context = None
        self.encoded: list[np.ndarray] | None = None

    def fit(self, parameters, config):
        return [p + np.float32(STEP) for p in parameters], 3, {}

    def encode_train_reply(self, names, received, returned):
        self.encoded = [np.asarray(r) for r in returned]
        return ArrayRecord(
            {n: Array(np.asarray(r)) for n, r in zip(names, returned, strict=True)}
        )


def test_private_client_clips_before_the_clients_own_encoder():
    rec = _received()
    names = list(rec)
    inner = _Encoding()
    client = PrivateClient(inner, 1.0)
    returned, n, _ = client.fit([rec[k] for k in names], {"server-round": 2})
    client.encode_train_reply(names, [rec[k] for k in names], returned)
    assert n == 3 and inner.encoded is not None
    u = np.concatenate(
        [
            (e.astype(np.float64) - rec[k]).ravel()
            for e, k in zip(inner.encoded, names, strict=True)
        ]
    )
    assert np.linalg.norm(u) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="not already wrapped"):
        PrivateClient(client, 1.0)


def test_private_client_keeps_what_the_bridge_reads_of_the_client():
    inner = _Encoding()
    client = PrivateClient(inner, 1.0)
    ctx = Context(
        run_id=1,
        node_id=3,
        node_config={"max-depth": 2},
        state=RecordDict(),
        run_config={},
    )
    client.context = ctx
    assert inner.context is ctx and client.context is ctx
    # the node's max-depth, as the bridge reads it for a client without capacity()
    assert client.capacity() == 2
