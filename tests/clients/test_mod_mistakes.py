"""A Flower user's usual mistakes with bouquet's client mods are named in one line
(issue 35)."""

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
from flwr.clientapp import ClientApp

from bouquet.clients import compression_mod
from bouquet.codecs import make_compressor
from bouquet.strategies.client_errors import explain_client_error


def _app(mods) -> ClientApp:
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = {k: v.numpy() + 0.5 for k, v in msg.content["arrays"].items()}
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


def _reading_mod(msg, context, call_next):
    """A mod that reads the reply's arrays (as Flower's arrays_size_mod or a DP mod
    does)."""
    reply = call_next(msg, context)
    for record in reply.content.array_records.values():
        for arr in record.values():
            arr.numpy()
    return reply


def test_compression_mod_listed_without_being_called_says_how_to_call_it():
    with pytest.raises(
        TypeError, match=r"write mods=\[compression_mod\('topk', alpha=0.01\)\]"
    ) as err:
        _app([compression_mod])(
            make_train_message({"a": np.zeros(4, np.float32)}), _ctx()
        )
    assert explain_client_error(f"<class 'TypeError'>:<'{err.value}'>") is not None


@pytest.mark.parametrize(
    "codec,kwargs,named",
    [
        (
            "ternary",
            {"alpha": 0.01},
            "codec 'ternary' takes no option alpha; its options: stochastic, clip_c, "
            "packing",
        ),
        ("topk", {}, "codec 'topk' needs alpha"),
        ("stc", {"alpah": 0.01}, "takes no option alpah"),
        ("zip", {}, "codec='zip' is unknown"),
    ],
)
def test_codec_options_are_checked_against_the_codec(codec, kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        compression_mod(codec, **kwargs)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        make_compressor(codec, **kwargs)


def test_a_mod_outside_compression_mod_fails_and_the_server_can_name_the_order():
    msg = make_train_message({"a": np.zeros(100, np.float32)})
    with pytest.raises(Exception, match="Unsupported serialization type") as err:
        _app([_reading_mod, compression_mod("topk", alpha=0.1)])(msg, _ctx())
    # what Flower sends back
    reason = str(type(err.value)) + ":<'" + str(err.value) + "'>"
    assert "list compression_mod before the mods that read" in (
        explain_client_error(reason) or ""
    )
    # the right order: the reading mod sees the dense reply, the server gets the
    # compressed one
    reply = _app([compression_mod("topk", alpha=0.1), _reading_mod])(
        make_train_message({"a": np.zeros(100, np.float32)}), _ctx()
    )
    assert [a.stype for a in reply.content["arrays"].values()] == ["bouquet.topk/1"]
    assert explain_client_error("<class 'ValueError'>:<'something else'>") is None
