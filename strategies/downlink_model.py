"""The model the clients hold under a
:class:`~bouquet.strategies.downlink.CompressedDownlink`.

:class:`HeldModel` keeps :math:`x_v` (the sum of the broadcast steps), its version
:math:`v` and digest, and the history of steps a node that missed rounds catches up
with. :meth:`HeldModel.advance` cuts one step towards the server's model :math:`w_t`,

.. math::

    c_{v+1} = C(w_t - x_v), \\qquad x_{v+1} = x_v + \\hat c_{v+1},

adding the decoded step exactly as a client does
(:func:`bouquet.codecs.sync.apply_decoded`); the history keeps the most recent steps
whose bytes add up to at most the dense model's. :func:`downlink_compressor` checks (or
builds) the downlink codec, :func:`onto_server_model` moves a dense reply trained from
:math:`x_v` onto :math:`w_t` (:func:`strip_reply`: the whole reply). Formulas and what a
node is sent: :mod:`bouquet.strategies.downlink`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Message
from flwr.app import RecordDict
from flwr.common.logger import log

from bouquet import keys
from bouquet.codecs import Encoded
from bouquet.codecs import UpdateCompressor
from bouquet.codecs import is_statistic
from bouquet.codecs import make_compressor
from bouquet.codecs.catalog import DOWNLINK_CODECS
from bouquet.codecs.npy import read_npy
from bouquet.codecs.sync import apply_decoded
from bouquet.codecs.sync import decode_step
from bouquet.codecs.sync import model_digest
from bouquet.strategies.decoding import DENSE_STYPE
from bouquet.strategies.decoding import reference_arrays

Step = tuple[int, dict[str, Encoded], int]  # (version, payloads, bytes)


def step_record_key(version: int) -> str:
    """RecordDict key of the ``ArrayRecord`` holding broadcast step ``version``."""
    return f"{keys.DOWNLINK_STEP_PREFIX}{version}"


def step_record(payloads: dict[str, Encoded]) -> ArrayRecord:
    """One broadcast step as an ``ArrayRecord`` (each payload an ``Array`` of its
    codec's stype and bytes)."""
    return ArrayRecord(
        {
            n: Array(dtype=p.dtype, shape=tuple(p.shape), stype=p.stype, data=p.data)
            for n, p in payloads.items()
        }
    )


def broadcast_key(content: RecordDict, arrays: ArrayRecord, server_digest: str) -> str:
    """The key of the one model a train message of the inner strategy carries
    (``ValueError`` for several ArrayRecords or node-specific arrays)."""
    keys_of_arrays = list(content.array_records)
    if len(keys_of_arrays) != 1:
        raise ValueError(
            f"CompressedDownlink: a train message holds {len(keys_of_arrays)} "
            "ArrayRecords; the downlink broadcasts one model"
        )
    record = content.array_records[keys_of_arrays[0]]
    if record is not arrays and model_digest(reference_arrays(record)) != server_digest:
        raise ValueError(
            "CompressedDownlink: the inner strategy sends node-specific arrays "
            "(e.g. sub-models); the downlink broadcasts one model: remove "
            "CompressedDownlink"
        )
    return keys_of_arrays[0]


def downlink_compressor(
    compressor: UpdateCompressor | str, codec_kwargs: dict[str, Any]
) -> UpdateCompressor:
    """The downlink codec: ``compressor`` checked, or built from its name and
    ``codec_kwargs`` (``ValueError`` for anything but top-k, STC or ternary without DGC
    options)."""
    if isinstance(compressor, str):
        if compressor not in DOWNLINK_CODECS:
            raise ValueError(
                f"compressor={compressor!r} is not a downlink codec; allowed: "
                f"{list(DOWNLINK_CODECS)}"
            )
        compressor = make_compressor(compressor, **codec_kwargs)
    elif codec_kwargs:
        raise ValueError(
            f"codec options {sorted(codec_kwargs)} given with a compressor "
            "object: set them on it"
        )
    if (
        not isinstance(compressor, UpdateCompressor)
        or compressor.codec not in DOWNLINK_CODECS
    ):
        raise ValueError(
            "compressor must be a top-k, STC or ternary UpdateCompressor, got "
            f"{compressor!r}"
        )
    if (
        compressor.momentum_correction > 0
        or compressor.clip_norm is not None
        or compressor.warmup_rounds
    ):
        raise ValueError(
            "downlink compressors take no DGC options (momentum_correction, "
            "clip_norm, warmup_rounds)"
        )
    return compressor


class HeldModel:
    """:math:`x_v`, its version and digest, and the step history (module docstring).

    Parameters
    ----------
    compressor : UpdateCompressor
        The downlink codec (see :func:`downlink_compressor`).
    seed : int
        Seed of the codec's stochastic rounding (mixed with the version).
    """

    def __init__(self, compressor: UpdateCompressor, seed: int) -> None:
        self.compressor = compressor
        self.seed = seed
        self.version = 0
        # version -> digest of x_version (the initial one and the history's)
        self.digests: dict[int, str] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.digest = ""
        self.server_digest = ""  # digest of the w_t the current version was cut from
        self.server: dict[str, np.ndarray] = {}
        self.steps: deque[Step] = deque()
        self._dense: ArrayRecord | None = None  # x_v as Flower arrays, built once
        self._residual: dict[str, np.ndarray] | None = None  # w_t - x_v, when needed

    def advance(self, arrays: ArrayRecord) -> bool:
        """Cut the step from :math:`x_v` towards ``arrays`` (once per distinct server
        model); ``True`` when the model's layout changed and everyone gets it dense."""
        server = reference_arrays(arrays)
        digest = model_digest(server)
        if digest == self.server_digest:
            return False
        self.server, self.server_digest, self._residual = server, digest, None
        held = self.arrays
        same = (
            held
            and list(held) == list(server)
            and all(
                held[n].shape == a.shape and held[n].dtype == a.dtype
                for n, a in server.items()
            )
        )
        if not same:  # first broadcast, or the model's layout changed
            if held:
                log(
                    logging.INFO,
                    "CompressedDownlink: the model's tensors changed (names, shapes "
                    "or dtypes): broadcasting it dense",
                )
            self.arrays = {n: np.array(a, copy=True) for n, a in server.items()}
            self.steps.clear()
            self.digests.clear()
        else:
            self._cut_step(server)
        self.version += 1
        self.digest = model_digest(self.arrays)
        self.digests[self.version] = self.digest
        self._dense = None
        return not same

    def _cut_step(self, server: dict[str, np.ndarray]) -> None:
        held = self.arrays
        updates = [np.subtract(server[n], held[n], dtype=held[n].dtype) for n in server]
        rng = np.random.default_rng([self.seed, self.version, 29])
        payloads, _ = self.compressor.compress(
            updates,
            None,
            server_round=self.version + 1,
            rng=rng,
            inplace=True,
            exact=[is_statistic(n) for n in server],
        )
        step = dict(zip(server, payloads, strict=True))
        apply_decoded(held, decode_step(step, held))  # exactly what a client does
        self.steps.append((self.version + 1, step, sum(len(p.data) for p in payloads)))
        while sum(b for _, _, b in self.steps) > self.dense_bytes():
            dropped, _, _ = self.steps.popleft()
            if dropped - 1 > 1:
                self.digests.pop(dropped - 1, None)

    def dense_bytes(self) -> int:
        """Bytes of :math:`x_v` sent dense."""
        return sum(a.nbytes for a in self.arrays.values())

    def dense_record(self) -> ArrayRecord:
        """:math:`x_v` as Flower's arrays (built once per version)."""
        if self._dense is None:
            self._dense = ArrayRecord({n: Array(a) for n, a in self.arrays.items()})
        return self._dense

    def catchup(self, base: int | None) -> list[Step] | None:
        """The steps after ``base`` (None: send the model dense)."""
        if base is None or base > self.version:
            return None
        if base == self.version:
            return []
        steps = [s for s in self.steps if s[0] > base]
        if not steps or steps[0][0] != base + 1:
            return None  # the history no longer reaches back to base
        if sum(b for _, _, b in steps) >= self.dense_bytes():
            return None
        return steps

    def residual(self) -> dict[str, np.ndarray]:
        """:math:`w_t - x_v` of every float tensor (built once per server model)."""
        if self._residual is None:
            held = self.arrays
            self._residual = {
                n: np.subtract(self.server[n], held[n], dtype=held[n].dtype)
                for n in held
                if held[n].dtype.kind == "f"
            }
        return self._residual

    def state_dict(self) -> dict[str, Any]:
        """``{"version": v, "held": {name: x_v array}}`` (not the step history)."""
        return {
            "version": self.version,
            "held": {n: a.copy() for n, a in self.arrays.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hold the model of :meth:`state_dict` (a resumed run: no step history;
        ``ValueError`` if ``state`` is not one)."""
        held = state.get("held") if isinstance(state, dict) else None
        version = state.get("version") if isinstance(state, dict) else None
        if (
            not isinstance(held, dict)
            or not isinstance(version, int)
            or version < 0
            or not all(
                isinstance(k, str) and isinstance(v, np.ndarray)
                for k, v in held.items()
            )
        ):
            raise ValueError(
                "CompressedDownlink.load_state_dict: needs 'version' (int >= 0) and "
                "'held' (name -> array)"
            )
        self.arrays = {k: np.array(v, copy=True) for k, v in held.items()}
        self.version = version
        self.digest = model_digest(self.arrays) if self.arrays else ""
        self.server_digest, self._dense = "", None
        self.steps.clear()
        self.digests = {version: self.digest} if self.arrays else {}


def onto_server_model(
    record: ArrayRecord, residual: dict[str, np.ndarray]
) -> ArrayRecord:
    """:math:`w_i + (w_t - x_v)` for every dense float array of the right shape (others
    unchanged: the inner strategy judges them)."""
    out: dict[str, Array] = {}
    for name, arr in record.items():
        res = residual.get(name)
        if arr.stype != DENSE_STYPE or res is None or tuple(arr.shape) != res.shape:
            out[name] = arr
            continue
        try:
            full = read_npy(arr.data, shape=tuple(arr.shape), dtype=np.dtype(arr.dtype))
        except (ValueError, TypeError):
            out[name] = arr
            continue
        if full.dtype.kind != "f":
            out[name] = arr
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            out[name] = Array(
                np.add(full, res, dtype=np.result_type(full.dtype, res.dtype))
            )
    return ArrayRecord(out)


def strip_reply(msg: Message, held: HeldModel) -> Message:
    """The reply without the downlink record, its dense arrays moved onto the server's
    model (:func:`onto_server_model`; a record without dense arrays as it came)."""
    content = RecordDict()
    for key, value in msg.content.items():
        if key == keys.DOWNLINK:
            continue
        if isinstance(value, ArrayRecord) and any(
            a.stype == DENSE_STYPE for a in value.values()
        ):
            value = onto_server_model(value, held.residual())
        content[key] = value
    msg.content = content
    return msg
