"""Two-way compression: ``CompressedDownlink`` on the server, ``downlink_mod`` on the
client.

Real ClientApps answer through Flower's wire format (``InProcessGrid``); every node
keeps its own ``context.state``, so catch-up, dense fallback and sync are those of a
deployed federation.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import InProcessGrid

from bouquet import keys
from bouquet.clients import compression_mod
from bouquet.clients import downlink_mod
from bouquet.clients.downlink import held_model
from bouquet.codecs.sync import model_digest
from bouquet.simulations.run.metering import MeteredGrid
from bouquet.strategies import Compressed
from bouquet.strategies import CompressedDownlink

SHAPES = {"conv": (4, 3, 3), "fc": (50, 20), "bias": (20,)}


def initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


def make_app(upload: str | None) -> ClientApp:
    """Each node moves every weight towards a node-specific target (a real,
    deterministic update)."""
    mods = [downlink_mod] + ([compression_mod(upload, alpha=0.1)] if upload else [])
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        rnd = int(msg.content["config"][keys.SERVER_ROUND])
        out = {}
        for name, arr in arrays.items():
            w = arr.numpy()
            rng = np.random.default_rng([int(context.node_id), rnd, len(name)])
            out[name] = (w + 0.1 * (rng.normal(size=w.shape) - 0.2 * w)).astype(w.dtype)
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({n: Array(a) for n, a in out.items()}),
                    "metrics": MetricRecord(
                        {keys.NUM_EXAMPLES: 10 + int(context.node_id) % 7}
                    ),
                }
            ),
            reply_to=msg,
        )

    return app


def topk_downlink(alpha: float) -> CompressedDownlink:
    """Top-k (``alpha``) downlink around FedAvg training every node, one at least."""
    inner = FedAvg(
        fraction_train=1.0,
        min_available_nodes=1,
        min_train_nodes=1,
        fraction_evaluate=0.0,
    )
    return CompressedDownlink(inner, "topk", alpha=alpha)


def run(strategy, grid, rounds: int) -> None:
    random.seed(1)
    start = ArrayRecord({n: Array(a) for n, a in initial().items()})
    strategy.start(grid=grid, initial_arrays=start, num_rounds=rounds, timeout=60)


def node_copy(
    grid: InProcessGrid, node: int
) -> tuple[int, dict[str, np.ndarray]] | None:
    return held_model(grid.contexts[node].state)


@pytest.mark.parametrize(
    "codec,options",
    [("topk", {"alpha": 0.05}), ("stc", {"alpha": 0.05}), ("ternary", {})],
)
@pytest.mark.parametrize("upload", [None, "stc"])
def test_every_served_copy_equals_the_server_copy(codec, options, upload):
    grid = InProcessGrid(make_app(upload), 8)
    inner = FedAvg(
        fraction_train=0.5,
        min_available_nodes=8,
        min_train_nodes=1,
        fraction_evaluate=0.0,
    )
    strategy = CompressedDownlink(
        Compressed(inner) if upload else inner, codec, **options
    )
    metered = MeteredGrid(grid)  # type: ignore[arg-type]
    run(strategy, metered, 20)
    assert not grid.errors, grid.errors[:1]
    assert strategy.sync_mismatches == 0
    served = 0
    for node in grid.node_ids:
        copy = node_copy(grid, node)
        if copy is None:
            continue
        version, model = copy
        served += 1
        assert version <= strategy.version
        if version == strategy.version:
            assert model_digest(model) == strategy._held.digest
    assert served == 8
    dense_total = sum(np.prod(s) * 4 for s in SHAPES.values()) * len(
        grid.deliveries("train")
    )
    assert metered.total.bytes_down < dense_total / 3  # the broadcast is compressed


def test_catch_up_after_missed_rounds_equals_the_server_copy():
    """Node 2 is served in round 1, then misses 1, 5 or 50 rounds; its rebuilt copy is
    the server's."""
    app = make_app(None)
    grid = InProcessGrid(app, 2)
    a, b = grid.node_ids
    strategy = topk_downlink(0.01)
    kinds = {}
    arrays = ArrayRecord({n: Array(v) for n, v in initial().items()})
    rnd = 1
    arrays = one_round(strategy, grid, rnd, arrays)  # both nodes are served once
    for missed in (1, 5, 50):
        grid.node_ids = [a]
        for _ in range(missed):
            rnd += 1
            arrays = one_round(strategy, grid, rnd, arrays)
        grid.node_ids = [a, b]
        rnd += 1
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), grid))  # type: ignore[arg-type]
        info = {m.metadata.dst_node_id: dict(m.content[keys.DOWNLINK]) for m in msgs}
        kinds[missed] = info[b]["kind"]
        replies = list(grid.send_and_receive(msgs))
        assert not grid.errors, grid.errors[:1]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        version, model = node_copy(grid, b)
        assert version == info[b]["version"]
        assert model_digest(model) == info[b]["digest"]
    assert strategy.sync_mismatches == 0
    # one missed round and five: a few small steps; the rule sends steps while they are
    # smaller than the model
    assert kinds[1] == "steps" and kinds[5] == "steps"
    assert kinds[50] in ("steps", "dense")


def one_round(strategy, grid, rnd, arrays):
    msgs = strategy.configure_train(rnd, arrays, ConfigRecord({}), grid)
    new, _ = strategy.aggregate_train(rnd, list(grid.send_and_receive(msgs)))
    return new if new is not None else arrays


def test_a_new_client_gets_the_dense_model_and_a_corrupted_copy_is_repaired():
    grid = InProcessGrid(make_app(None), 3)
    strategy = CompressedDownlink(
        FedAvg(fraction_train=1.0, min_available_nodes=3, fraction_evaluate=0.0),
        "stc",
        alpha=0.05,
    )
    arrays = ArrayRecord({n: Array(v) for n, v in initial().items()})
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))  # type: ignore[arg-type]
    assert all(dict(m.content[keys.DOWNLINK])["kind"] == "dense" for m in msgs)
    arrays, _ = strategy.aggregate_train(1, list(grid.send_and_receive(msgs)))
    arrays = one_round(strategy, grid, 2, arrays)
    # corrupt node 0's copy: one weight changed in its context.state
    node = grid.node_ids[0]
    state = grid.contexts[node].state
    held = {
        n: a.numpy().copy() for n, a in state.array_records[keys.DOWNLINK_HELD].items()
    }
    held["fc"][0, 0] += 1e-3
    state[keys.DOWNLINK_HELD] = ArrayRecord({n: Array(a) for n, a in held.items()})
    arrays = one_round(strategy, grid, 3, arrays)
    assert strategy.sync_mismatches == 1
    assert any(keys.DOWNLINK_RESYNC in e for e in grid.errors)
    msgs = list(strategy.configure_train(4, arrays, ConfigRecord({}), grid))  # type: ignore[arg-type]
    kinds = {
        m.metadata.dst_node_id: dict(m.content[keys.DOWNLINK])["kind"] for m in msgs
    }
    assert kinds[node] == "dense" and {kinds[n] for n in grid.node_ids[1:]} == {"steps"}
    errors = len(grid.errors)
    strategy.aggregate_train(4, list(grid.send_and_receive(msgs)))
    assert len(grid.errors) == errors  # repaired
    assert model_digest(node_copy(grid, node)[1]) == strategy._held.digest
    assert strategy.sync_mismatches == 1


def test_dense_replies_are_moved_onto_the_server_model():
    """A plain client trained from x; FedAvg over w + (w_i - x) is what the wrapper
    aggregates."""
    grid = InProcessGrid(make_app(None), 2)
    inner = FedAvg(fraction_train=1.0, min_available_nodes=2, fraction_evaluate=0.0)
    strategy = CompressedDownlink(inner, "topk", alpha=0.02)
    arrays = ArrayRecord({n: Array(v) for n, v in initial().items()})
    arrays = one_round(strategy, grid, 1, arrays)  # dense broadcast: x = w afterwards
    arrays = one_round(strategy, grid, 2, arrays)  # first compressed step: x != w
    w = {n: a.numpy() for n, a in arrays.items()}
    msgs = list(strategy.configure_train(3, arrays, ConfigRecord({}), grid))  # type: ignore[arg-type]
    x = {n: a.copy() for n, a in strategy._held.arrays.items()}
    assert any(not np.array_equal(x[n], w[n]) for n in w)
    replies = list(grid.send_and_receive(msgs))
    local = {
        r.metadata.src_node_id: {
            n: a.numpy().copy() for n, a in r.content["arrays"].items()
        }
        for r in replies
    }
    weights = {
        r.metadata.src_node_id: r.content["metrics"][keys.NUM_EXAMPLES] for r in replies
    }
    new, _ = strategy.aggregate_train(3, replies)
    total = sum(weights.values())
    for n in w:
        expected = sum(
            weights[k] / total * (w[n] + (local[k][n] - x[n])) for k in local
        )
        np.testing.assert_allclose(new[n].numpy(), expected, rtol=1e-5, atol=1e-6)


def hostile(content_edit) -> str:
    """The error a client raises for a broadcast edited by ``content_edit``; its state
    is unchanged."""
    grid = InProcessGrid(make_app(None), 1)
    strategy = topk_downlink(0.1)
    arrays = ArrayRecord({n: Array(v) for n, v in initial().items()})
    arrays = one_round(strategy, grid, 1, arrays)
    node = grid.node_ids[0]
    before = model_digest(node_copy(grid, node)[1])
    msgs = list(strategy.configure_train(2, arrays, ConfigRecord({}), grid))  # type: ignore[arg-type]
    content_edit(msgs[0].content)
    with pytest.raises(ValueError, match=keys.DOWNLINK_RESYNC) as err:
        downlink_mod(
            msgs[0],
            grid.contexts[node],
            lambda m, c: pytest.fail("the ClientApp must not run"),
        )
    assert model_digest(node_copy(grid, node)[1]) == before
    return str(err.value)


def _step(content: RecordDict) -> ArrayRecord:
    return next(
        v
        for k, v in content.array_records.items()
        if k.startswith(keys.DOWNLINK_STEP_PREFIX)
    )


def _replace(content, name, **fields):
    rec = _step(content)
    a = rec[name]
    new = {
        "dtype": a.dtype,
        "shape": tuple(a.shape),
        "stype": a.stype,
        "data": a.data,
        **fields,
    }
    rec[name] = Array(**new)


def test_hostile_broadcasts_are_refused_before_the_model_changes():
    assert "digest" in hostile(
        lambda c: c[keys.DOWNLINK].__setitem__("digest", "0" * 16)
    )
    assert "(20, 50)" in hostile(lambda c: _replace(c, "fc", shape=(20, 50)))
    assert "float64" in hostile(lambda c: _replace(c, "fc", dtype="float64"))
    assert "step 2" in hostile(
        lambda c: _replace(c, "fc", data=_step(c)["fc"].data[:-3])
    )
    assert "stype" in hostile(lambda c: _replace(c, "bias", stype="numpy.ndarray"))
    assert "versions" in hostile(
        lambda c: c.__setitem__(f"{keys.DOWNLINK_STEP_PREFIX}99", _step(c))
    )
    assert "version" in hostile(lambda c: c[keys.DOWNLINK].__setitem__("version", -1))
    assert "holds version 1" in hostile(_jump_ahead)


def _jump_ahead(content: RecordDict) -> None:
    """Steps 5 after base 4, to a node that holds version 1."""
    step_key = next(
        k for k in content.array_records if k.startswith(keys.DOWNLINK_STEP_PREFIX)
    )
    content[f"{keys.DOWNLINK_STEP_PREFIX}5"] = content.array_records[step_key]
    del content[step_key]
    content[keys.DOWNLINK]["base"] = 4
    content[keys.DOWNLINK]["version"] = 5


def test_a_bad_codec_or_a_second_wrapper_is_refused():
    with pytest.raises(ValueError, match="downlink codec"):
        CompressedDownlink(FedAvg(), "dense")
    with pytest.raises(ValueError, match="once"):
        CompressedDownlink(
            CompressedDownlink(FedAvg(), "topk", alpha=0.1), "stc", alpha=0.1
        )
    with pytest.raises(ValueError, match="DGC"):
        CompressedDownlink(FedAvg(), "topk", alpha=0.1, momentum_correction=0.9)
