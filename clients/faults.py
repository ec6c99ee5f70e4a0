"""Fault injection for simulations: a client mod that crashes, hangs or corrupts
replies.

``fault_mod(crash_rate, hang_rate, corrupt_rate, hang_s, seed)`` wraps any ClientApp.
For each train message it draws one uniform number from a generator seeded by
``(seed, partition-id, server-round)`` (so the same node fails in the same rounds on
every run):

* ``u < crash_rate``: raise (Flower turns it into an error reply);
* ``u < crash_rate + hang_rate``: sleep ``hang_s`` seconds before training (longer than
  the round timeout, the reply arrives too late and is counted as failed);
* ``u < crash_rate + hang_rate + corrupt_rate``: train, then corrupt the reply: NaN
  values, a wrong shape, or truncated bytes (chosen by the same generator).

Used to test that a run survives bad clients; never enable it in a real deployment.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.clientapp.typing import Mod

from bouquet import keys

logger = logging.getLogger(__name__)

CORRUPTIONS = ("nan", "shape", "truncate")


class InjectedCrash(RuntimeError):
    """The error a crashing client raises."""


def _validate_rates(
    crash_rate: float, hang_rate: float, corrupt_rate: float, hang_s: float
) -> None:
    for name, rate in (
        ("fault.crash_rate", crash_rate),
        ("fault.hang_rate", hang_rate),
        ("fault.corrupt_rate", corrupt_rate),
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name}={rate} must be in [0, 1]")
    if crash_rate + hang_rate + corrupt_rate > 1.0 + 1e-12:
        raise ValueError(
            f"fault rates sum to {crash_rate + hang_rate + corrupt_rate} > 1"
        )
    if hang_s < 0:
        raise ValueError(f"fault.hang_s={hang_s} must be >= 0")


def corrupt_record(
    record: ArrayRecord, kind: str, rng: np.random.Generator
) -> ArrayRecord:
    """A copy of ``record`` with one array corrupted in the way ``kind`` names."""
    if kind not in CORRUPTIONS:
        raise ValueError(
            f"corruption kind={kind!r} is unknown; allowed: {', '.join(CORRUPTIONS)}"
        )
    names = list(record.keys())
    victim = names[int(rng.integers(len(names)))]
    out = ArrayRecord()
    for name in names:
        arr = record[name]
        if name != victim:
            out[name] = arr
        elif kind == "truncate":
            out[name] = Array(
                dtype=arr.dtype,
                shape=tuple(arr.shape),
                stype=arr.stype,
                data=arr.data[: len(arr.data) // 2],
            )
        elif arr.stype == "numpy.ndarray" and kind == "nan":
            value = arr.numpy().astype(np.float32)
            value.flat[0] = np.nan
            out[name] = Array(value)
        elif arr.stype == "numpy.ndarray":
            out[name] = Array(
                np.zeros(np.asarray(arr.numpy()).size + 1, dtype=np.float32)
            )
        else:  # encoded arrays: flip bytes in the payload
            data = bytearray(arr.data)
            for i in range(0, len(data), 7):
                data[i] ^= 0xFF
            out[name] = Array(
                dtype=arr.dtype,
                shape=tuple(arr.shape),
                stype=arr.stype,
                data=bytes(data),
            )
    return out


def fault_mod(
    crash_rate: float = 0.0,
    hang_rate: float = 0.0,
    corrupt_rate: float = 0.0,
    hang_s: float = 30.0,
    seed: int = 0,
) -> Mod:
    """Build the fault-injecting client mod (see module docstring)."""
    _validate_rates(crash_rate, hang_rate, corrupt_rate, hang_s)

    def _mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        pid = int(context.node_config.get(keys.PARTITION_ID, 0))
        config = next(iter(msg.content.config_records.values()), None)
        value = config.get(keys.SERVER_ROUND, 0) if config else 0
        server_round = int(value) if isinstance(value, int | float) else 0
        rng = np.random.default_rng([seed, pid, server_round])
        u = rng.random()
        if u < crash_rate:
            raise InjectedCrash(
                f"injected crash (partition {pid}, round {server_round})"
            )
        if u < crash_rate + hang_rate:
            logger.info("partition %d hangs for %.1f s", pid, hang_s)
            time.sleep(hang_s)
        reply = call_next(msg, context)
        if (
            crash_rate + hang_rate <= u < crash_rate + hang_rate + corrupt_rate
            and not reply.has_error()
        ):
            kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
            for key, record in list(reply.content.array_records.items()):
                reply.content[key] = corrupt_record(record, kind, rng)
        return reply

    return _mod
