"""The bridge that turns any ``NumPyClient`` into a Message-API ``ClientApp``.

A bare ``NumPyClient`` speaks Flower's legacy protocol: against a Message-API strategy
(``flwr.serverapp.strategy.*``) every client fails with ``KeyError:
'fitins.parameters'`` and the run still returns normally. :func:`numpyclient_app` wraps
a ``client_fn(context) -> NumPyClient`` in a ``ClientApp`` whose ``train`` /
``evaluate`` handlers speak the Message API:

* the received ``ArrayRecord`` is handed to ``fit``/``evaluate`` as a list of arrays in
  the record's key order, and the returned arrays are put back under the same keys;
* ``num-examples`` and the client's metrics go into one ``MetricRecord``;
* a client may encode its own reply arrays (e.g. compressed updates) by defining
  ``encode_train_reply(names, received, returned) -> ArrayRecord`` (see
  :class:`ReplyEncoder`); it also receives the node's ``Context`` as ``client.context``
  (if it has that attribute) so that per-node state (error-feedback residuals) can live
  in ``context.state``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import Protocol
from typing import TypeAlias
from typing import runtime_checkable

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from bouquet import keys
from bouquet.codecs.wire import is_bouquet_stype

#: One model's arrays, in the order of their names.
Arrays: TypeAlias = Sequence[np.ndarray]
#: What a NumPyClient's ``fit`` returns: arrays, the number of examples, metrics.
FitResult: TypeAlias = tuple[list[np.ndarray], int, dict[str, Any]]
#: What a NumPyClient's ``evaluate`` returns: loss, the number of examples, metrics.
EvaluateResult: TypeAlias = tuple[float, int, dict[str, Any]]

logger = logging.getLogger(__name__)

ClientFn = Callable[[Context], NumPyClient]


@runtime_checkable
class ReplyEncoder(Protocol):
    """A NumPyClient that builds its own train-reply ``ArrayRecord`` (e.g.
    compressed)."""

    def encode_train_reply(
        self, names: Sequence[str], received: Arrays, returned: Arrays
    ) -> ArrayRecord: ...


def single_record(content: RecordDict, kind: str, preferred: str) -> Any:
    """Return the record under ``preferred``, or the only record of that kind.

    Raises
    ------
    ValueError
        If there is no such record, or several and none under ``preferred``.
    """
    by_kind: dict[str, Mapping[str, Any]] = {
        "array": content.array_records,
        "config": content.config_records,
        "metric": content.metric_records,
    }
    records = by_kind[kind]
    if preferred in records:
        return records[preferred]
    if len(records) == 1:
        return next(iter(records.values()))
    if not records and kind == "config":
        return ConfigRecord()
    raise ValueError(
        f"message has {len(records)} {kind} records ({list(records)}); expected one "
        f"or key {preferred!r}"
    )


def reply_array_key(reply: Message) -> str:
    """The key of a train reply's update record: ``arrays``, or its only array record.

    Raises
    ------
    ValueError
        If the reply has no array record, or several and none named ``arrays``.
    """
    records = reply.content.array_records
    if keys.ARRAYS in records:
        return keys.ARRAYS
    if len(records) == 1:
        return next(iter(records))
    raise ValueError(
        f"reply has {len(records)} array records ({list(records)}); expected one or "
        f"key {keys.ARRAYS!r}"
    )


def reply_update(
    reply: Message, received: dict[str, np.ndarray]
) -> tuple[str, ArrayRecord, list[str], bool]:
    """(key, record, array names, already compressed?) of a train reply's update record.

    Raises
    ------
    ValueError
        If the record cannot be found (:func:`reply_array_key`), or if it is not
        compressed and its arrays are not the ``received`` ones.
    """
    rec_key = reply_array_key(reply)
    record = reply.content.array_records[rec_key]
    names = list(record.keys())
    compressed = any(is_bouquet_stype(a.stype) for a in record.values())
    if not compressed and set(names) != set(received):
        raise ValueError(
            f"reply arrays {names[:3]}... differ from the received arrays "
            f"{list(received)[:3]}..."
        )
    return rec_key, record, names, compressed


def received_arrays(msg: Message) -> dict[str, np.ndarray]:
    """Copies of the arrays a train message carries (what a mod compares the reply
    against)."""
    sent = single_record(msg.content, "array", keys.ARRAYS)
    return {name: np.array(arr.numpy(), copy=True) for name, arr in sent.items()}


def _to_scalar_metrics(metrics: dict[str, Any]) -> MetricRecord:
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, (list, tuple, np.ndarray)):
            vals = list(np.asarray(value).ravel().tolist())
            clean[key] = vals
        elif isinstance(value, (bool, np.bool_)):
            clean[key] = int(value)
        elif isinstance(value, (int, np.integer)):
            clean[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            clean[key] = float(value)
        else:
            raise ValueError(
                f"metric {key!r} has unsupported type {type(value).__name__}"
            )
    return MetricRecord(clean)


def dense_arrayrecord(
    names: Sequence[str], arrays: Sequence[np.ndarray]
) -> ArrayRecord:
    """An ``ArrayRecord`` of dense numpy arrays under ``names``."""
    return ArrayRecord(
        OrderedDict(
            (n, Array(np.asarray(a))) for n, a in zip(names, arrays, strict=True)
        )
    )


def _prepare(
    client_fn: ClientFn, msg: Message, context: Context
) -> tuple[NumPyClient, list[str], list[np.ndarray], dict[str, Any]]:
    client = client_fn(context)
    if hasattr(client, "context"):
        client.context = context
    record = single_record(msg.content, "array", keys.ARRAYS)
    names = list(record.keys())
    arrays = [record[n].numpy() for n in names]
    config = dict(single_record(msg.content, "config", keys.CONFIG))
    return client, names, arrays, config


def numpyclient_app(
    client_fn: ClientFn, mods: Sequence[Callable[..., Message]] | None = None
) -> ClientApp:
    """Build a Message-API ``ClientApp`` that runs the ``NumPyClient`` from
    ``client_fn``.

    Parameters
    ----------
    client_fn : callable
        ``client_fn(context) -> NumPyClient``; called once per message.
    mods : list, optional
        Flower client mods applied to every handler (e.g. ``compression_mod``).

    Returns
    -------
    flwr.clientapp.ClientApp
        With ``train`` and ``evaluate`` handlers, and a ``query`` handler answering
        ``node-info`` (the node's ``partition-id`` and ``max-depth``).
    """
    app = ClientApp(mods=list(mods or []))

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        client, names, arrays, config = _prepare(client_fn, msg, context)
        returned, num_examples, metrics = client.fit(arrays, config)
        returned = [np.asarray(a) for a in returned]
        if len(returned) != len(names):
            raise ValueError(
                f"fit returned {len(returned)} arrays, the message carried {len(names)}"
            )
        if isinstance(client, ReplyEncoder):
            out = client.encode_train_reply(names, arrays, returned)
        else:
            out = dense_arrayrecord(names, returned)
        metric_record = _to_scalar_metrics(
            {**metrics, keys.NUM_EXAMPLES: int(num_examples)}
        )
        return Message(
            RecordDict({keys.ARRAYS: out, keys.METRICS: metric_record}), reply_to=msg
        )

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        client, _, arrays, config = _prepare(client_fn, msg, context)
        loss, num_examples, metrics = client.evaluate(arrays, config)
        metric_record = _to_scalar_metrics(
            {
                **metrics,
                keys.EVAL_LOSS: float(loss),
                keys.NUM_EXAMPLES: int(num_examples),
            }
        )
        return Message(RecordDict({keys.METRICS: metric_record}), reply_to=msg)

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        # ``node-info``: what a strategy needs to know about a node before training it
        # (DepthFedAvg draws depths by partition-id and caps them by capacity).
        config = dict(single_record(msg.content, "config", keys.CONFIG))
        if not config.get(keys.NODE_INFO):
            raise ValueError(
                f"unknown query {sorted(config)}: this ClientApp answers "
                f"{keys.NODE_INFO!r} only"
            )
        info: dict[str, Any] = {}
        pid = context.node_config.get(keys.PARTITION_ID)
        if isinstance(pid, int):
            info[keys.PARTITION_ID] = pid
        client = client_fn(context)
        if hasattr(client, "context"):
            client.context = context
        capacity = getattr(client, "capacity", None)
        info[keys.MAX_DEPTH] = (
            int(capacity())
            if callable(capacity)
            else int(context.node_config.get(keys.MAX_DEPTH, 0))
        )
        return Message(RecordDict({keys.METRICS: MetricRecord(info)}), reply_to=msg)

    return app
