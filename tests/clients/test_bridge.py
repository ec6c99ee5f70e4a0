"""The NumPyClient -> Message-API ClientApp bridge."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import RecordDict

from bouquet import keys
from bouquet.clients import TorchClient
from bouquet.clients import numpyclient_app
from bouquet.models import build_model
from bouquet.models import get_weights


def _context(pid: int = 0) -> Context:
    return Context(
        run_id=1,
        node_id=5,
        node_config={keys.PARTITION_ID: pid},
        state=RecordDict(),
        run_config={},
    )


def _train_message(
    weights: dict[str, np.ndarray], config: dict | None = None
) -> Message:
    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in weights.items()}),
            keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1, **(config or {})}),
        }
    )
    msg = Message(content=content, dst_node_id=5, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "abc"
    return msg


def _client(context: Context) -> TorchClient:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = (np.arange(40) % 3).astype(np.int64)
    return TorchClient(
        build_model("mlp", (1, 8, 8), 3, seed=0), x, y, num_classes=3, lr=0.1
    )


def test_train_reply_has_same_keys_trained_values_and_metrics() -> None:
    weights = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    app = numpyclient_app(_client)
    reply = app(_train_message(weights), _context())
    assert not reply.has_error(), reply.error
    arrays = reply.content[keys.ARRAYS]
    assert list(arrays.keys()) == list(weights.keys())
    changed = [not np.allclose(arrays[k].numpy(), weights[k]) for k in weights]
    assert any(changed), "training did not change the weights"
    metrics = reply.content[keys.METRICS]
    assert metrics[keys.NUM_EXAMPLES] == 40
    assert metrics[keys.LABEL_HISTOGRAM] == [14, 13, 13]
    assert np.isfinite(metrics[keys.TRAIN_LOSS])


def test_evaluate_reply() -> None:
    weights = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    app = numpyclient_app(_client)
    msg = _train_message(weights)
    msg.metadata.__dict__["_message_type"] = MessageType.EVALUATE
    reply = app(msg, _context())
    assert not reply.has_error(), reply.error
    metrics = reply.content[keys.METRICS]
    assert (
        metrics[keys.NUM_EXAMPLES] == 40 and 0.0 <= metrics[keys.EVAL_ACCURACY] <= 1.0
    )


def test_wrong_shapes_raise_naming_the_tensor() -> None:
    # Flower's runtime turns the exception into an error reply for the server.
    weights = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    first = next(iter(weights))
    weights[first] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=first.replace(".", r"\.")):
        numpyclient_app(_client)(_train_message(weights), _context())


def test_bare_numpyclient_fails_against_message_api_strategy() -> None:
    """Why the bridge exists: Flower's legacy wrapper cannot read Message-API
    content."""
    from flwr.clientapp import ClientApp

    legacy = ClientApp(client_fn=lambda ctx: _client(ctx).to_client())
    weights = dict(get_weights(build_model("mlp", (1, 8, 8), 3, seed=1)))
    with pytest.raises(KeyError, match="fitins"):
        legacy(_train_message(weights), _context())


def test_bad_client_settings_refused() -> None:
    x = np.zeros((4, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="client.lr"):
        TorchClient(
            build_model("mlp", (1, 8, 8), 3),
            x,
            np.zeros(4, dtype=np.int64),
            num_classes=3,
            lr=0.0,
        )
    with pytest.raises(ValueError, match="samples"):
        TorchClient(
            build_model("mlp", (1, 8, 8), 3),
            x,
            np.zeros(3, dtype=np.int64),
            num_classes=3,
        )


def _query(config: dict) -> Message:
    msg = Message(
        content=RecordDict({keys.CONFIG: ConfigRecord(config)}),
        dst_node_id=5,
        message_type=MessageType.QUERY,
    )
    msg.metadata.__dict__["_message_id"] = "q1"
    return msg


def test_node_info_query_answers_partition_id_and_capacity() -> None:
    from bouquet.clients.early_exit import EarlyExitClient
    from bouquet.models.early_exit import build_early_exit

    app = numpyclient_app(_client)
    reply = app(_query({keys.NODE_INFO: 1}), _context(pid=4))
    assert not reply.has_error(), reply.error
    assert dict(reply.content[keys.METRICS]) == {
        keys.PARTITION_ID: 4,
        keys.MAX_DEPTH: 0,
    }

    def early(context: Context) -> EarlyExitClient:
        x = np.zeros((4, 1, 8, 8), np.float32)
        return EarlyExitClient(
            build_early_exit((1, 8, 8), 3, seed=0),
            x,
            np.zeros(4, np.int64),
            num_classes=3,
            max_depth_by_partition=[1, 2, 3],
        )

    reply = numpyclient_app(early)(_query({keys.NODE_INFO: 1}), _context(pid=4))
    # capacity of partition 4
    assert dict(reply.content[keys.METRICS]) == {
        keys.PARTITION_ID: 4,
        keys.MAX_DEPTH: 2,
    }


def test_unknown_query_is_refused_naming_what_is_answered() -> None:
    # Flower's runtime turns the exception into an error reply for the server
    with pytest.raises(ValueError, match="answers 'node-info' only"):
        numpyclient_app(_client)(_query({"something": 1}), _context())
