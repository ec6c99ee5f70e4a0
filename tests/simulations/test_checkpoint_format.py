"""Checkpoints are data, never code (issue 30, class 1).

The attack: a checkpoint used to be a pickle behind a SHA-256 kept in the same file, so
a tampered file with a recomputed digest ran any code on resume. Here the exploit is a
pickle whose ``__reduce__`` creates a marker file when it is unpickled; it is planted
where the old format lived and inside the new one (an object array in ``arrays.npz``, a
pickle as ``state.json``), each time with a recomputed digest: the marker never appears,
the old format is refused and the new one falls back to the previous checkpoint with a
warning.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bouquet.simulations.run import checkpoint_format as fmt
from bouquet.simulations.run import checkpoint_skeleton as skeleton
from bouquet.simulations.run.checkpoint import CHECKPOINT
from bouquet.simulations.run.checkpoint import PREVIOUS
from bouquet.simulations.run.checkpoint import CheckpointError
from bouquet.simulations.run.checkpoint import load_checkpoint
from bouquet.simulations.run.checkpoint import load_strategy_state
from bouquet.simulations.run.checkpoint import rng_state
from bouquet.simulations.run.checkpoint import save_checkpoint
from bouquet.simulations.run.checkpoint import set_rng_state
from bouquet.simulations.run.checkpoint import strategy_state
from bouquet.simulations.run.resume import check_resume

LEGACY_MAGIC = b"BOUQUET-CKPT-1\n"  # the header of the old checkpoint.pkl


class Exploit:
    """Unpickling this creates ``marker`` (stands for any code an attacker would
    run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _exploit_pickle(marker: Path) -> bytes:
    return pickle.dumps(
        {"round": 3, "arrays": {}, "strategy": [], "rng": Exploit(marker), "config": {}}
    )


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if anything calls pickle's loaders (the calls are listed too)."""
    calls: list[str] = []

    def forbidden(name: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"pickle.{name} was called")

        return call

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden(name))
    return calls


def test_the_exploit_is_live(tmp_path: Path) -> None:
    """Control: unpickling the planted payload does run its code."""
    marker = tmp_path / "pwned"
    pickle.loads(_exploit_pickle(marker))
    assert marker.exists()


def _plant_legacy(run_dir: Path, marker: Path) -> None:
    body = _exploit_pickle(marker)
    # the old format, digest recomputed
    for name in ("checkpoint.pkl", "checkpoint.prev.pkl"):
        (run_dir / name).write_bytes(
            LEGACY_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        )
    (run_dir / "config.json").write_text("{}")


def test_an_old_pickle_checkpoint_is_refused_never_unpickled(
    tmp_path: Path, no_unpickling: list[str]
) -> None:
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _plant_legacy(run_dir, marker)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint\.pkl is a pickle checkpoint of an older bouquet: it is "
        r"never "
        r"loaded \(unpickling can run code\); resume is refused",
    ):
        load_checkpoint(run_dir)
    cfg = {"simulation": {"resume": str(run_dir)}}
    with pytest.raises(CheckpointError, match="older bouquet"):
        check_resume(cfg, tmp_path / "elsewhere")
    # next to a checkpoint of the new format, the pickle is ignored
    save_checkpoint(run_dir, {"round": 1, "arrays": {"w": np.ones(2)}})
    assert load_checkpoint(run_dir)["round"] == 1
    assert not marker.exists() and no_unpickling == []


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _resum(directory: Path) -> None:
    """Recompute SHA256SUMS after tampering (what an attacker with write access
    does)."""
    lines = [
        f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n"
        for n in (fmt.ARRAYS_FILE, fmt.STATE_FILE)
    ]
    (directory / fmt.SUMS_FILE).write_text("".join(lines))


def _object_array_npz(marker: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, zf.open("a0.npy", "w") as member:
        np.lib.format.write_array(
            member, np.array([Exploit(marker)], dtype=object), allow_pickle=True
        )
    return buf.getvalue()


def _npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An npz whose member declares ``shape`` of float64 but holds 8 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        # the header starts with the magic
        zf.writestr("a0.npy", header.getvalue() + b"\0" * 8)
    return buf.getvalue()


def _state(skeleton: Any) -> bytes:
    return json.dumps({"format": fmt.FORMAT, "payload": skeleton}).encode()


def _valid_skeleton() -> Any:
    return {"dict": {"round": 2, "arrays": {"dict": {"w": {"array": "a0"}}}}}


# name -> (how the latest checkpoint is tampered with, whether the digest is recomputed,
# the reason logged)
TAMPERING = {
    "object array in the npz": (
        lambda d, m: (d / fmt.ARRAYS_FILE).write_bytes(_object_array_npz(m)),
        True,
        "dtype object",
    ),
    "pickle as state.json": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(_exploit_pickle(m)),
        True,
        "UnicodeDecodeError",
    ),
    "pickle as arrays.npz": (
        lambda d, m: (d / fmt.ARRAYS_FILE).write_bytes(_exploit_pickle(m)),
        True,
        "BadZipFile",
    ),
    "unknown tag": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(_state({"pickle": "gASV"})),
        True,
        "{'pickle': ...} is not a value of the checkpoint format",
    ),
    "dangling array reference": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(
            _state({"dict": {"round": 2, "arrays": {"dict": {"w": {"array": "a9"}}}}})
        ),
        True,
        "'a9', which is not a member",
    ),
    "duplicate key": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(
            b'{"format": "bouquet-checkpoint/2", "payload": {"dict": {"round": 2, '
            b'"round": 3}}}'
        ),
        True,
        "appears twice",
    ),
    "NaN literal": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(
            b'{"format": "bouquet-checkpoint/2", "payload": {"dict": {"round": NaN}}}'
        ),
        True,
        "NaN is not a JSON number",
    ),
    "huge declared shape": (
        lambda d, m: (d / fmt.ARRAYS_FILE).write_bytes(
            _npz_declaring((1 << 20, 1 << 20))
        ),
        True,
        "declares shape (1048576, 1048576) of float64 but holds 8 bytes",
    ),
    "no round": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(
            _state({"dict": {"arrays": {"dict": {}}}})
        ),
        True,
        "exactly one of 'round' and 'updates'",
    ),
    "truncated state": (
        lambda d, m: (d / fmt.STATE_FILE).write_bytes(
            (d / fmt.STATE_FILE).read_bytes()[:-7]
        ),
        False,
        "state.json: SHA-256 mismatch",
    ),
    "truncated arrays": (
        lambda d, m: (d / fmt.ARRAYS_FILE).write_bytes(
            (d / fmt.ARRAYS_FILE).read_bytes()[:-1]
        ),
        False,
        "arrays.npz: SHA-256 mismatch",
    ),
    "no digests": (
        lambda d, m: (d / fmt.SUMS_FILE).unlink(),
        False,
        "FileNotFoundError",
    ),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_a_tampered_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, caplog, no_unpickling, how: str
) -> None:
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_checkpoint(
        run_dir, {"round": 1, "arrays": {"w": np.ones(3, dtype=np.float32)}}
    )
    save_checkpoint(
        run_dir, {"round": 2, "arrays": {"w": np.full(3, 2.0, dtype=np.float32)}}
    )
    tamper, resum, reason = TAMPERING[how]
    tamper(run_dir / CHECKPOINT, marker)
    if resum:
        _resum(run_dir / CHECKPOINT)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        payload = load_checkpoint(run_dir)
    assert payload["round"] == 1 and np.array_equal(
        payload["arrays"]["w"], np.ones(3, dtype=np.float32)
    )
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "flwr"
    ]
    assert len(warnings) == 2, warnings
    assert (
        warnings[0].startswith(f"checkpoint {run_dir / CHECKPOINT} ignored: ")
        and reason in warnings[0]
    )
    assert (
        warnings[1] == f"using the previous checkpoint {run_dir / PREVIOUS} (round 1)"
    )
    assert not marker.exists() and no_unpickling == []
    # with the previous one tampered the same way, nothing is usable: refused, naming
    # both reasons
    tamper(run_dir / PREVIOUS, marker)
    if resum:
        _resum(run_dir / PREVIOUS)
    with pytest.raises(
        CheckpointError,
        match=r"no usable checkpoint in .*: checkpoint: .*; checkpoint\.prev: ",
    ):
        load_checkpoint(run_dir)
    assert not marker.exists()


def test_writes_are_atomic_and_leftovers_of_a_crash_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.tmp").mkdir()  # a crash mid-write left a partial directory
    (tmp_path / "checkpoint.tmp" / "state.json").write_text("{")
    for rnd in (1, 2, 3):
        save_checkpoint(tmp_path, {"round": rnd, "arrays": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, PREVIOUS]
    assert sorted(_files(tmp_path / CHECKPOINT)) == [
        fmt.SUMS_FILE,
        fmt.ARRAYS_FILE,
        fmt.STATE_FILE,
    ]
    assert load_checkpoint(tmp_path)["round"] == 3
    # a crash between the two renames leaves checkpoint.prev only: it is used
    (tmp_path / CHECKPOINT).rename(tmp_path / "elsewhere")
    assert load_checkpoint(tmp_path, warn=False)["round"] == 2


def test_sha256sums_is_what_sha256sum_checks(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, {"round": 0, "arrays": {"w": np.arange(4)}})
    for line in (path / fmt.SUMS_FILE).read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest


# ------------------------------------------------------------------ flatten / unflatten
def assert_same(a: Any, b: Any, where: str = "value") -> None:
    """Equal values of the same types (dict subclasses come back as dict); arrays: same
    dtype,
    shape and values (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
        return
    assert type(a) is type(b), f"{where}: {type(a).__name__} became {type(b).__name__}"
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def _round_trip(value: Any) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fmt.write_checkpoint(Path(d), fmt.encode_checkpoint(value))
        return fmt.read_checkpoint(Path(d))


def test_every_kind_of_value_round_trips() -> None:
    value = {
        "none": None,
        "bool": True,
        "int": -(1 << 70),
        "float": 0.1,
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
        "str": 'ünï"code\n',
        "list": [1, [2.5, None]],
        "tuple": (1, ("a", 2.0)),
        "empty": {},
        "int keys": {3: "a", -1: [1]},
        "none key": {None: 1, 2: 2},
        "tag-like": {"array": "a0", "dict": {}},
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "fortran": np.asfortranarray(np.eye(3, dtype=np.float32)),
        "i64": np.array([-(1 << 62), 7]),
        "u8": np.frombuffer(b"\x00\xff", dtype=np.uint8).copy(),
        "bool arr": np.array([True, False]),
        "0-d": np.array(3.5),
        "empty arr": np.zeros((0, 4), dtype=np.int32),
        "c64": np.array([1 + 2j], dtype=np.complex64),
        "nan arr": np.array([np.nan, np.inf]),
        "str arr": np.array(["ab", "c"]),
        "np scalars": [
            np.float32(1.5),
            np.int64(-3),
            np.bool_(True),
            np.float64("nan"),
        ],
        "strided": np.arange(10.0)[::3],
    }
    assert_same(value, _round_trip(value))


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"s": {1, 2}}, r"payload\['s'\] is a builtins.set"),
        ({"f": print}, r"payload\['f'\] is a builtins.builtin_function_or_method"),
        ({"x": [Exploit(Path("m"))]}, r"payload\['x'\]\[0\] is a .*Exploit"),
        (
            {"o": np.array([1, "a"], dtype=object)},
            r"payload\['o'\] is an array of dtype object",
        ),
        (
            {"m": np.ma.masked_array([1, 2], mask=[0, 1])},
            r"payload\['m'\] is a numpy.ma.*MaskedArray",
        ),
        (
            {"r": np.zeros(2, dtype=[("a", "<f4")])},
            r"payload\['r'\] is an array of dtype",
        ),
        (
            {True: 1},
            r"payload has the key True \(bool\); allowed: str, int or None keys",
        ),
        ({(1, 2): 1}, r"payload has the key \(1, 2\)"),
        ({"b": b"bytes"}, r"payload\['b'\] is a builtins.bytes"),
    ],
)
def test_unknown_types_are_refused_not_dropped(
    tmp_path: Path, value: Any, where: str
) -> None:
    with pytest.raises(ValueError, match=where):
        skeleton.flatten(value)
    with pytest.raises(ValueError, match=where):  # before anything is written
        save_checkpoint(tmp_path, {"round": 1, "arrays": {}, **value})
    assert list(tmp_path.iterdir()) == []


def test_the_dataclass_period_of_an_async_run_is_refused_but_its_fields_are_saved(
    tmp_path: Path,
) -> None:
    import dataclasses

    from bouquet.simulations.run.metering import Period
    from bouquet.simulations.run.serverapp import period_from_state

    period = Period(bytes_up=3, client_train_s=0.5, first_reply_at=None)
    with pytest.raises(
        ValueError,
        match=r"payload\['period'\] is a bouquet.simulations.run.metering.Period",
    ):
        skeleton.flatten({"period": period})
    assert period_from_state(_round_trip(dataclasses.asdict(period))) == period
    with pytest.raises(CheckpointError, match="period is not a Period"):
        period_from_state({"bytes_up": 1, "evil": 2})


def test_rng_states_round_trip() -> None:
    state = rng_state()
    back = _round_trip(state)
    assert_same(state, back)
    random.random(), np.random.rand()
    set_rng_state(back)
    assert_same(rng_state(), state)
    with pytest.raises(CheckpointError, match="RNG state is not usable"):
        set_rng_state({**back, "random": [1, 2]})


# ---------------------------------------------- every strategy state checkpointed today
def _async_states() -> list[Any]:
    from async_grid import FakeGrid
    from async_grid import learner_reports
    from async_grid import run_async

    from bouquet.strategies.async_fedavg import AsyncFedAvg

    settings = [
        {"policy": "constant", "alpha": 0.5},
        {"policy": "fedbuff", "buffer_size": 3, "exponent": 0.0},
        {"policy": "polynomial"},
        {"policy": "hinge"},
        {
            "policy": "sliding_window",
            "window_side": "server",
            "per_node": True,
            "window": 3,
        },
        {
            "policy": "sliding_window",
            "window_side": "server",
            "per_node": False,
            "window": 3,
        },
        {"policy": "sliding_window", "window_side": "learner"},
    ]
    states = []
    for kw in settings:
        strategy = AsyncFedAvg(
            **kw, max_updates=8, eval_every=2, plateau_window=0, poll_interval_s=0.0
        )
        saved: list[Any] = []
        strategy.bind_checkpoint(
            lambda u, a, s=strategy, out=saved: out.append(
                copy.deepcopy(s.state_dict())
            ),
            3,
        )
        extra = (
            learner_reports(lambda t: 0.5)
            if kw.get("window_side") == "learner"
            else None
        )
        run_async(
            strategy,
            FakeGrid(
                {1: ("ok", 1, 1.0), 2: ("ok", 2, 0.5), 3: ("error", 1, None)},
                extra=extra,
            ),
        )
        states.extend(saved)
    return states


def _chain_factories() -> list[Any]:
    """Builders of the chains bouquet-sim builds (ReplyGuard innermost, then Compressed,
    ServerAdjusted)."""
    from flwr.serverapp.strategy import FedAdam
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy import FedProx

    from bouquet.strategies import Compressed
    from bouquet.strategies import ReplyGuard
    from bouquet.strategies import ServerAdjusted
    from bouquet.strategies import ServerMomentum
    from bouquet.strategies.depth_fedavg import DepthFedAvg
    from bouquet.strategies.kl_weighted import KLWeightedFedAvg

    kw = {"min_available_nodes": 1, "min_train_nodes": 1}
    return [
        lambda: ReplyGuard(FedAvg(**kw)),
        lambda: ReplyGuard(FedProx(proximal_mu=0.1, **kw)),
        lambda: ReplyGuard(FedAdam(**kw)),
        lambda: ReplyGuard(
            KLWeightedFedAvg(reference="server", reference_distribution=[3, 1], **kw)
        ),
        lambda: ReplyGuard(DepthFedAvg(depths=[1, 2], **kw)),
        lambda: ServerMomentum(
            Compressed(ReplyGuard(FedAvg(**kw)), server_lr=0.5), momentum=0.9
        ),
        lambda: ServerAdjusted(
            Compressed(ReplyGuard(FedAdam(**kw))),
            adjust_fn=lambda arrays, rnd: (arrays, {"rnd": rnd}),
        ),
    ]


def _two_rounds(chain: Any) -> Any:
    """Two rounds of one reply, so that moments, momentum and references hold arrays."""
    from conftest import make_reply
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord

    class _Grid:
        def get_node_ids(self) -> list[int]:
            return [1]

        def send_and_receive(
            self, messages: Any, timeout: float | None = None
        ) -> list[Any]:
            # DepthFedAvg's node-info query: no answer (it falls back to the node id)
            return []

    # DepthFedAvg's names
    w = {
        "stages.d1.w": np.zeros(4, dtype=np.float32),
        "stages.d2.w": np.zeros(2, dtype=np.float32),
    }
    for rnd in (1, 2):
        sent = list(
            chain.configure_train(
                rnd,
                ArrayRecord({k: Array(v) for k, v in w.items()}),
                ConfigRecord(),
                _Grid(),
            )
        )
        got = {k: v.numpy() + rnd for k, v in sent[0].content["arrays"].items()}
        agg, _ = chain.aggregate_train(rnd, [make_reply(got, 3)])
        w = {k: v.numpy() for k, v in agg.items()} if agg is not None else w
    return chain


def test_every_strategy_state_round_trips(tmp_path: Path) -> None:
    for state in _async_states():
        assert_same(state, _round_trip(state))
    for make in _chain_factories():
        chain = _two_rounds(make())
        state = strategy_state(chain)
        payload = {
            "round": 2,
            "arrays": {"w": np.ones(4, dtype=np.float32)},
            "strategy": state,
            "rng": rng_state(),
            "config": {"seed": 0, "strategy": {"lr": 0.1, "depths": [1, 2]}},
        }
        save_checkpoint(tmp_path, payload)
        loaded = load_checkpoint(tmp_path)
        assert_same(payload, loaded)
        fresh = make()
        load_strategy_state(fresh, loaded["strategy"])
        # (attributes that held objects, e.g. an ArrayRecord, are not saved)
        restored = strategy_state(fresh)
        for level, saved in enumerate(state):
            assert_same(
                saved,
                {k: restored[level][k] for k in saved},
                f"{type(fresh).__name__} level {level}",
            )


def test_a_checkpoint_sets_only_data_attributes_the_strategy_has() -> None:
    from flwr.serverapp.strategy import FedAvg

    from bouquet.strategies import ReplyGuard

    chain = ReplyGuard(FedAvg())
    state = strategy_state(chain)
    bad = copy.deepcopy(state)
    bad[1]["train_metrics_aggr_fn"] = (
        "os.system"  # a function attribute is never replaced
    )
    with pytest.raises(
        CheckpointError, match="train_metrics_aggr_fn not among its data attributes"
    ):
        load_strategy_state(ReplyGuard(FedAvg()), bad)
    with pytest.raises(
        CheckpointError, match="strategy chain has 2 levels, checkpoint has 1"
    ):
        load_strategy_state(ReplyGuard(FedAvg()), state[:1])
    with pytest.raises(CheckpointError, match="not one of its states"):
        load_strategy_state(ReplyGuard(FedAvg()), [state[0], {"__state_dict__": {}}])
