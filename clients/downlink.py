"""``downlink_mod``: rebuild the model from a compressed broadcast before the ClientApp
sees it.

The client half of :class:`bouquet.strategies.CompressedDownlink` (two-way compression,
Sattler et al. 2019). A train message from that wrapper carries a ``ConfigRecord``
``bouquet-downlink`` (``version``, ``base``, ``digest``, ``kind``, ``record``) and
either the dense model (``kind = dense``, Flower's ordinary arrays) or the broadcast
steps after ``base`` (``ArrayRecord`` s ``bouquet-downlink-step-<v>``). The mod keeps
the model this node holds and its version in ``context.state``, applies the steps it
does not have yet (in order, with :func:`bouquet.codecs.sync.apply_step`, exactly as the
server did), checks the digest of the result against the message's, and hands the
ClientApp an ordinary message with the dense model under the usual record key. Its reply
gets a ``bouquet-downlink`` record with that digest.

The broadcast is as hostile as any reply: names, shapes, dtypes and stypes are checked
against the held model before a step is decoded, dense arrays are read with their header
checked against the declared shape and dtype (nothing allocated beyond what the bytes
back), and a step that makes the model non-finite is refused. Anything wrong raises
``ValueError`` whose text starts with ``bouquet-downlink-resync``: Flower turns it into
an error reply, the node's state is left as it was, and the server sends that node the
dense model next time.

Place it outermost among bouquet's mods: ``mods=[downlink_mod, compression_mod(...)]``
(the upload compressor needs the rebuilt model as its reference).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import RecordDict
from flwr.clientapp.typing import ClientAppCallable

from bouquet import keys
from bouquet.codecs.npy import read_npy
from bouquet.codecs.sync import apply_decoded
from bouquet.codecs.sync import decode_step
from bouquet.codecs.sync import model_digest
from bouquet.codecs.wire import Encoded

DENSE_STYPE = "numpy.ndarray"
_DIGEST = re.compile(r"^[0-9a-f]{16}$")


def _fail(why: str) -> ValueError:
    return ValueError(f"{keys.DOWNLINK_RESYNC}: {why}")


Initial = Callable[[], dict[str, np.ndarray]]


def _info(content: RecordDict) -> tuple[int, int, str, str, str]:
    rec = content.config_records[keys.DOWNLINK]
    version, base, digest, kind, record = (
        rec.get(k) for k in ("version", "base", "digest", "kind", "record")
    )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(f"version {str(version)[:32]!r} is not an int >= 1")
    if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base <= version:
        raise _fail(f"base {str(base)[:32]!r} is not an int in [0, version]")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise _fail("digest is not 16 hex digits")
    if kind not in ("dense", "steps"):
        raise _fail(f"kind {str(kind)[:32]!r} is not 'dense' or 'steps'")
    if (
        not isinstance(record, str)
        or not record
        or record.startswith(keys.DOWNLINK_STEP_PREFIX)
    ):
        raise _fail("record is not an ArrayRecord key")
    return version, base, digest, kind, record


def _dense_model(record: ArrayRecord) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in record.items():
        if arr.stype != DENSE_STYPE:
            raise _fail(
                f"dense model tensor {name[:64]!r} has stype {str(arr.stype)[:64]!r}"
            )
        try:
            view = read_npy(arr.data, shape=tuple(arr.shape), dtype=np.dtype(arr.dtype))
        except (ValueError, TypeError) as exc:
            raise _fail(f"dense model tensor {name[:64]!r}: {str(exc)[:200]}") from exc
        if view.dtype.kind not in "biuf":
            raise _fail(
                f"dense model tensor {name[:64]!r} has dtype {view.dtype}, not a "
                "number type"
            )
        if view.dtype.kind == "f" and not np.all(np.isfinite(view)):
            raise _fail(f"dense model tensor {name[:64]!r} is not finite")
        out[name] = np.array(view, copy=True)
    return out


def held_model(state: RecordDict) -> tuple[int, dict[str, np.ndarray]] | None:
    """(version, copy of the model) this node holds, or None."""
    if (
        keys.DOWNLINK_HELD not in state.array_records
        or keys.DOWNLINK_VERSION not in state.config_records
    ):
        return None
    version = state.config_records[keys.DOWNLINK_VERSION].get("version")
    if not isinstance(version, int):
        return None
    return version, {
        n: np.array(a.numpy(), copy=True)
        for n, a in state.array_records[keys.DOWNLINK_HELD].items()
    }


def rebuild(
    content: RecordDict, state: RecordDict, initial: Initial | None = None
) -> tuple[dict[str, np.ndarray], int, str, str]:
    """(model, version, digest, record key) rebuilt from a broadcast; ``ValueError`` if
    it cannot be.

    ``initial()`` builds version 1 (the initial model) on a node that holds nothing yet,
    for steps that start there; its digest must equal the broadcast's ``base-digest``.
    """
    version, base, digest, kind, rec_key = _info(content)
    step_keys = {
        k for k in content.array_records if k.startswith(keys.DOWNLINK_STEP_PREFIX)
    }
    if kind == "dense":
        if step_keys or rec_key not in content.array_records:
            raise _fail("a dense broadcast must hold the model record and no steps")
        model = _dense_model(content.array_records[rec_key])
    else:
        expected = {
            f"{keys.DOWNLINK_STEP_PREFIX}{v}" for v in range(base + 1, version + 1)
        }
        if step_keys != expected or rec_key in content.array_records:
            raise _fail(
                f"steps {sorted(step_keys)[:3]}... are not exactly versions "
                f"{base + 1}..{version}"
            )
        held = held_model(state)
        if held is None and base == 1 and initial is not None:
            held = (1, {n: np.array(a, copy=True) for n, a in initial().items()})
            if model_digest(held[1]) != content.config_records[keys.DOWNLINK].get(
                "base-digest"
            ):
                raise _fail(
                    "the initial model built here differs from the server's (digest)"
                )
        if held is None:
            raise _fail("steps sent but this node holds no model")
        have, model = held
        if not base <= have <= version:
            raise _fail(
                f"this node holds version {have}, the steps go from {base} to {version}"
            )
        for v in range(have + 1, version + 1):
            step = content.array_records[f"{keys.DOWNLINK_STEP_PREFIX}{v}"]
            enc = {
                n: Encoded(str(a.stype), str(a.dtype), tuple(a.shape), a.data)
                for n, a in step.items()
            }
            try:
                apply_decoded(model, decode_step(enc, model))
            except ValueError as exc:
                raise _fail(f"step {v}: {str(exc)[:200]}") from exc
    got = model_digest(model)
    if got != digest:
        raise _fail(f"rebuilt model has digest {got}, the broadcast's is {digest}")
    return model, version, digest, rec_key


class DownlinkMod:
    """A Flower client mod: rebuild the model of a compressed broadcast (see module
    docstring).

    Parameters
    ----------
    initial : callable, optional
        ``initial() -> {name: array}``: the initial model, built on this node exactly as
        the server built it (e.g. from the run's seed); lets the server skip the dense
        model on a node's first round (``CompressedDownlink(..., initial_known=True)``).
        Checked by digest.

    Messages without a ``bouquet-downlink`` record pass unchanged.
    """

    def __init__(self, initial: Initial | None = None) -> None:
        if initial is not None and not callable(initial):
            raise ValueError(
                f"initial={initial!r} must be a callable returning the initial "
                "arrays by name"
            )
        self.initial = initial

    def __call__(
        self, msg: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        if msg.has_error() or keys.DOWNLINK not in msg.content.config_records:
            return call_next(msg, context)
        model, version, digest, rec_key = rebuild(
            msg.content, context.state, self.initial
        )
        context.state[keys.DOWNLINK_HELD] = ArrayRecord(
            {n: Array(a) for n, a in model.items()}
        )
        context.state[keys.DOWNLINK_VERSION] = ConfigRecord(
            {"version": version, "digest": digest}
        )
        content = RecordDict()
        for key, value in msg.content.items():
            if (
                key != keys.DOWNLINK
                and not key.startswith(keys.DOWNLINK_STEP_PREFIX)
                and key != rec_key
            ):
                content[key] = value
        content[rec_key] = ArrayRecord({n: Array(a) for n, a in model.items()})
        msg.content = content
        reply = call_next(msg, context)
        if not reply.has_error():
            reply.content[keys.DOWNLINK] = ConfigRecord({"digest": digest})
        return reply


downlink_mod = DownlinkMod()
"""The mod for apps whose clients cannot build the initial model themselves."""
