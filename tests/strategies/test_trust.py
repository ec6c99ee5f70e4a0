"""Issue 30, classes 2-9: hostile reply metadata, dtypes, weights, identity, KL,
overflow, logs.

Each class is reproduced by a test of its own (written before the fix), then a
property-based fuzz over reply metadata holds every chain to: every reply is dropped
with a bounded reason or aggregated, the aggregate equals what the good replies alone
give, no exception escapes ``aggregate_train``; and a tracemalloc check that memory
stays within a fixed number of model sizes whatever the number of replies.
"""

from __future__ import annotations

import logging
import struct
import tracemalloc

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.app.metadata import Metadata
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bouquet import keys
from bouquet.clients.compressed import encoded_arrayrecord
from bouquet.codecs import encode_ternary
from bouquet.strategies import Compressed
from bouquet.strategies import KLWeightedFedAvg
from bouquet.strategies import ReplyGuard
from bouquet.strategies.reports import MAX_REASON_CHARS

KW = {"fraction_evaluate": 0.0, "min_available_nodes": 1, "min_train_nodes": 1}
GLOBAL = {
    "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "b": np.zeros(4, np.float32),
}
H = keys.LABEL_HISTOGRAM

CHAINS = {
    "Compressed(ReplyGuard(FedAvg))": lambda: Compressed(ReplyGuard(FedAvg(**KW))),
    "Compressed(ReplyGuard(FedAvg)) dense": lambda: Compressed(
        ReplyGuard(FedAvg(**KW)), fast_path=False
    ),
    "Compressed(FedAvg)": lambda: Compressed(FedAvg(**KW)),
    "ReplyGuard(FedAvg)": lambda: ReplyGuard(FedAvg(**KW)),
}
GUARDED = [c for c in CHAINS if "ReplyGuard" in c]


class _Grid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _configure(
    strategy, nodes=range(1, 11), glob=GLOBAL, rnd: int = 1, push: bool = True
) -> dict[int, str]:
    """configure_train, then what Flower's grid does when it pushes: write each
    message's id."""
    sent = list(
        strategy.configure_train(
            rnd,
            ArrayRecord({k: Array(v) for k, v in glob.items()}),
            ConfigRecord(),
            _Grid(nodes),
        )
    )
    ids = {}
    for msg in sent:
        if push:
            msg.metadata.__dict__["_message_id"] = (
                f"round{rnd}-node{msg.metadata.dst_node_id}"
            )
        ids[int(msg.metadata.dst_node_id)] = msg.metadata.message_id
    return ids


def _reply(
    arrays, metrics: dict, *, src: int, reply_to: str, array_record=None
) -> Message:
    content = RecordDict()
    content[keys.ARRAYS] = (
        array_record
        if array_record is not None
        else ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    )
    content[keys.METRICS] = MetricRecord(metrics)
    md = Metadata(
        run_id=1,
        message_id=f"reply-{src}-{reply_to}",
        src_node_id=src,
        dst_node_id=0,
        reply_to_message_id=reply_to,
        group_id="",
        created_at=0.0,
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(metadata=md, content=content)


def _good(
    ids: dict[int, str],
    node: int,
    value: float,
    n: int = 10,
    extra: dict | None = None,
    glob=GLOBAL,
) -> Message:
    arrays = {k: np.full_like(v, value) for k, v in glob.items()}
    return _reply(
        arrays, {keys.NUM_EXAMPLES: n, **(extra or {})}, src=node, reply_to=ids[node]
    )


def _report(strategy) -> dict:
    return strategy.round_report()


# ---------------------------------------------------------------------- class 2: dtypes
def _float16_reply(ids: dict[int, str]) -> Message:
    """Node 1's reply of all ones in float16 (the model is float32)."""
    arrays = {k: np.full_like(v, 1.0, dtype=np.float16) for k, v in GLOBAL.items()}
    return _reply(arrays, {keys.NUM_EXAMPLES: 10}, src=1, reply_to=ids[1])


@pytest.mark.parametrize("chain", GUARDED)
def test_2_behind_the_guard_a_float16_reply_first_does_not_narrow_the_model(chain):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    first = _float16_reply(ids)
    arrays, _ = strategy.aggregate_train(
        1, [first, _good(ids, 2, 1e5), _good(ids, 3, 1e5)]
    )
    assert arrays["w"].dtype == "float32"
    np.testing.assert_allclose(arrays["w"].numpy(), (1.0 + 2e5) / 3, rtol=1e-6)
    assert _report(strategy).get("clients_dropped", 0) == 0


@pytest.mark.parametrize("chain", GUARDED)
def test_2_behind_the_guard_a_float64_value_that_float32_cannot_hold_is_dropped(chain):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    huge = _reply(
        {k: np.full(v.shape, 1e300) for k, v in GLOBAL.items()},
        {keys.NUM_EXAMPLES: 10},
        src=1,
        reply_to=ids[1],
    )
    exact = _reply(
        {k: np.full(v.shape, 2.0) for k, v in GLOBAL.items()},
        {keys.NUM_EXAMPLES: 10},
        src=2,
        reply_to=ids[2],
    )
    arrays, _ = strategy.aggregate_train(1, [huge, exact])
    assert arrays["w"].dtype == "float32"
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    report = _report(strategy)
    assert report["clients_dropped"] == 1 and "node 1" in report["drop_reasons"][0]


@pytest.mark.parametrize("chain", GUARDED)
def test_2_an_integer_tensor_takes_only_exact_values(chain):
    glob = {**GLOBAL, "count": np.array([3, 4], np.int64)}
    strategy = CHAINS[chain]()
    ids = _configure(strategy, glob=glob)
    half = _reply(
        {
            **{k: np.ones_like(v) for k, v in GLOBAL.items()},
            "count": np.array([3.5, 4.0]),
        },
        {keys.NUM_EXAMPLES: 10},
        src=1,
        reply_to=ids[1],
    )
    whole = _reply(
        {
            **{k: np.ones_like(v) for k, v in GLOBAL.items()},
            "count": np.array([5.0, 6.0]),
        },
        {keys.NUM_EXAMPLES: 10},
        src=2,
        reply_to=ids[2],
    )
    arrays, _ = strategy.aggregate_train(1, [half, whole])
    np.testing.assert_array_equal(arrays["count"].numpy(), [5.0, 6.0])
    # Flower: an integer tensor averages to float64
    assert arrays["count"].dtype == "float64"
    assert _report(strategy)["clients_dropped"] == 1


def test_2_without_the_guard_flowers_rule_but_never_narrower_than_the_server():
    strategy = Compressed(FedAvg(**KW))
    ids = _configure(strategy)
    first = _float16_reply(ids)
    arrays, _ = strategy.aggregate_train(1, [first, _good(ids, 2, 1e5)])
    assert arrays["w"].dtype == "float32"
    np.testing.assert_allclose(arrays["w"].numpy(), (1.0 + 1e5) / 2, rtol=1e-6)


# --------------------------------------------------------------------- class 3: weights
@pytest.mark.parametrize("chain", list(CHAINS))
def test_3_weights_whose_sum_overflows_or_that_do_not_convert_are_dropped_not_raised(
    chain,
):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    replies = [
        _good(ids, 1, 9.0, n=10**400),
        _good(ids, 2, 9.0, n=1e308),
        _good(ids, 3, 9.0, n=1.7e308),
        _good(ids, 4, 2.0, n=2**53),
        _good(ids, 5, 4.0, n=2**53),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 3.0)
    report = _report(strategy)
    assert report["clients_dropped"] == 3 and all(
        len(r) < MAX_REASON_CHARS + 20 for r in report["drop_reasons"]
    )


@pytest.mark.parametrize("chain", list(CHAINS))
def test_3_tiny_and_mixed_weights_normalise(chain):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    arrays, _ = strategy.aggregate_train(
        1, [_good(ids, 1, 1.0, n=5e-324), _good(ids, 2, 3.0, n=5e-324)]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)


# ----------------------------------------------------------------- class 4: metric keys
@pytest.mark.parametrize("chain", list(CHAINS))
def test_4_a_hostile_first_reply_with_other_metric_keys_costs_the_good_one_nothing(
    chain,
):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    hostile = _good(ids, 1, 5.0, extra={"zzz": 1.0, "train-loss": [1.0, 2.0]})
    good = _good(ids, 2, 1.0, extra={"train-loss": 0.5})
    arrays, metrics = strategy.aggregate_train(1, [hostile, good])
    # both aggregated: arrays are fine
    np.testing.assert_allclose(arrays["w"].numpy(), 3.0)
    assert _report(strategy).get("clients_dropped", 0) == 0
    # kinds differ: left out, not voted on
    assert "zzz" not in metrics and "train-loss" not in metrics


# -------------------------------------------------------------------- class 5: identity
@pytest.mark.parametrize("chain", list(CHAINS))
def test_5_one_reply_per_message_sent_this_round_from_its_node(chain):
    strategy = CHAINS[chain]()
    _configure(strategy, nodes=[1, 2, 3], rnd=1)
    ids = _configure(strategy, nodes=[1, 2, 3], rnd=2)
    replies = [
        # not sent
        _reply(
            {k: np.full_like(v, 50.0) for k, v in GLOBAL.items()},
            {keys.NUM_EXAMPLES: 10},
            src=9,
            reply_to="x",
        ),
        # an earlier round's message
        _reply(
            {k: np.full_like(v, 50.0) for k, v in GLOBAL.items()},
            {keys.NUM_EXAMPLES: 10},
            src=3,
            reply_to="round1-node3",
        ),
        # node 2 answering node 1's message first...
        _reply(
            {k: np.full_like(v, 50.0) for k, v in GLOBAL.items()},
            {keys.NUM_EXAMPLES: 10},
            src=2,
            reply_to=ids[1],
        ),
        _good(ids, 1, 1.0),  # ...does not cost node 1 its reply
        _good(ids, 2, 3.0),
        _good(ids, 2, 50.0),  # a second reply to the same message
    ]
    arrays, _ = strategy.aggregate_train(2, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    reasons = " ".join(_report(strategy)["drop_reasons"])
    for text in (
        "not one sent this round",
        "sent to node 1, but comes from node 2",
        "second reply",
    ):
        assert text in reasons


@pytest.mark.parametrize("chain", list(CHAINS))
def test_5_messages_never_pushed_are_checked_by_node(chain):
    strategy = CHAINS[chain]()
    ids = _configure(strategy, nodes=[1, 2], push=False)
    assert set(ids.values()) == {""}
    replies = [
        make_reply({k: np.full_like(v, 1.0) for k, v in GLOBAL.items()}, 10, node_id=1),
        make_reply({k: np.full_like(v, 3.0) for k, v in GLOBAL.items()}, 10, node_id=2),
        make_reply(
            {k: np.full_like(v, 50.0) for k, v in GLOBAL.items()}, 10, node_id=2
        ),
        make_reply(
            {k: np.full_like(v, 50.0) for k, v in GLOBAL.items()}, 10, node_id=7
        ),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    assert _report(strategy)["clients_dropped"] == 2


def test_5_async_reply_from_another_node_is_not_applied_as_that_nodes_update():
    from async_grid import FakeGrid
    from async_grid import run_async

    from bouquet.strategies import AsyncFedAvg

    class Impostor(FakeGrid):
        """Node 2 answers node 1's messages instead of its own."""

        def pull_messages(self, message_ids):
            out = list(super().pull_messages(message_ids))
            for reply in out:
                if reply.metadata.src_node_id == 1:
                    reply.metadata.__dict__["_src_node_id"] = 2
            return out

    strategy = AsyncFedAvg(
        policy="constant",
        alpha=0.5,
        max_updates=4,
        eval_every=100,
        poll_interval_s=0.0,
        max_wall_s=5.0,
    )
    run_async(strategy, Impostor({1: ("ok", 1, 1.0), 2: ("ok", 1, 1.0)}))
    reasons = " ".join(strategy.state.dropped)
    assert "answers the message sent to node 1" in reasons


# ---------------------------------------------------------------- class 6: KL weighting
def test_6_kl_histogram_whose_sum_overflows_takes_the_fallback():
    kl = Compressed(ReplyGuard(KLWeightedFedAvg(mode="exp", tau=0.5, **KW)))
    ids = _configure(kl)
    # no histogram at all: the documented fallback, not a drop
    replies = [
        _good(ids, 1, 1.0, extra={H: [1.7e308, 1.7e308, 1.0]}),
        _good(ids, 2, 3.0, extra={H: [5.0, 5.0, 5.0]}),
        _good(ids, 3, 2.0),
    ]
    arrays, _ = kl.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0, rtol=1e-6)
    report = kl.round_report()
    assert report.get("clients_dropped", 0) == 0 and report["kl_bad_histograms"] == 2


# -------------------------------------------------------------------- class 7: overflow
@pytest.mark.parametrize("others", [9, 999])
@pytest.mark.parametrize(
    "chain",
    [
        "Compressed(ReplyGuard(FedAvg))",
        "Compressed(ReplyGuard(FedAvg)) dense",
        "Compressed(FedAvg)",
    ],
)
def test_7_one_update_that_would_overflow_is_dropped_and_never_skips_the_round(
    chain, others
):
    strategy = CHAINS[chain]()
    ids = _configure(strategy, nodes=range(1, others + 2))
    tern = encode_ternary(
        np.ones(12, np.int8).reshape(3, 4), 3.0e38, packing_form="trit"
    )[0]
    zero_b = encode_ternary(np.zeros(4, np.int8), 0.0, packing_form="trit")[0]
    bad = _reply(
        None,
        {keys.NUM_EXAMPLES: 10},
        src=1,
        reply_to=ids[1],
        array_record=encoded_arrayrecord(["w", "b"], [tern, zero_b]),
    )
    arrays, _ = strategy.aggregate_train(
        1, [bad, *(_good(ids, n, 2.0) for n in range(2, others + 2))]
    )
    assert arrays is not None
    # float32 sums of 999 terms
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0, rtol=1e-4)
    report = _report(strategy)
    assert report["clients_dropped"] == 1 and "overflow" in report["drop_reasons"][0]


# ------------------------------------------------------------- class 8: bounded reasons
@pytest.mark.parametrize("chain", list(CHAINS))
def test_8_a_megabyte_name_gives_a_bounded_reason_and_log_line(chain):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    name = "n" * (1 << 20)
    big = _reply(
        {name: np.ones(3, np.float32), "b": np.zeros(4, np.float32)},
        {keys.NUM_EXAMPLES: 10, name: 1.0},
        src=1,
        reply_to=ids[1],
    )
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logging.getLogger("flwr").addHandler(handler)
    try:
        arrays, _ = strategy.aggregate_train(1, [big, _good(ids, 2, 1.0)])
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)
    reasons = _report(strategy)["drop_reasons"]
    assert len(reasons) == 1 and len(reasons[0]) <= MAX_REASON_CHARS + 40
    assert lines and max(len(line) for line in lines) < 4 * MAX_REASON_CHARS


# ------------------------------------------------------- class 9: one reader, one limit
def _npy_with_header(values: np.ndarray, header_chars: int) -> bytes:
    header = (
        f"{{'descr': '{values.dtype.str}', 'fortran_order': False, 'shape': "
        f"{values.shape}, }}"
    ).encode()
    header += b" " * (header_chars - len(header) - 1) + b"\n"
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(header))
        + header
        + values.tobytes()
    )


@pytest.mark.parametrize("chain", list(CHAINS))
def test_9_a_header_flowers_reader_refuses_is_refused_by_the_guard_too(chain):
    strategy = CHAINS[chain]()
    ids = _configure(strategy)
    w = np.ones((3, 4), np.float32)
    odd = Array(
        dtype="float32",
        shape=(3, 4),
        stype="numpy.ndarray",
        data=_npy_with_header(w, 10_240),
    )
    with pytest.raises(ValueError):
        odd.numpy()  # np.load's limit
    record = ArrayRecord({"w": odd, "b": Array(np.zeros(4, np.float32))})
    arrays, _ = strategy.aggregate_train(
        1,
        [
            _reply(
                None,
                {keys.NUM_EXAMPLES: 10},
                src=1,
                reply_to=ids[1],
                array_record=record,
            ),
            _good(ids, 2, 3.0),
        ],
    )
    np.testing.assert_allclose(arrays["w"].numpy(), 3.0)
    assert "header" in _report(strategy)["drop_reasons"][0]


# ---------------------------------------------------------------------------- the fuzz
WEIGHTS = st.one_of(
    st.integers(-3, 60),
    st.integers(2**52, 2**54),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 5e-324, 1.7e308]),
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.none(),
)
REPLY = st.fixed_dictionaries(
    {
        "weight": WEIGHTS,
        "value": st.floats(-4, 4, allow_nan=False),
        "src": st.integers(1, 7),
        "to": st.integers(1, 7),  # which node's message it answers (7: one not sent)
        "keys": st.lists(
            st.sampled_from(["train-loss", "acc", "zz", "a" * 500]),
            max_size=3,
            unique=True,
        ),
        "scalar": st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(10**30), 10**400),
        ),
        "hist": st.one_of(
            st.none(), st.lists(st.floats(0, 1e308), min_size=0, max_size=4)
        ),
        "error": st.booleans(),
    }
)


def _oracle_good(specs: list[dict], sent: set[int]) -> list[int]:
    """Indices of the replies that must be aggregated: identity first (the first reply
    from the
    right node claims a message), then a usable weight."""
    claimed: set[int] = set()
    good = []
    for i, s in enumerate(specs):
        if s["error"]:
            continue
        if s["to"] not in sent or s["src"] != s["to"] or s["to"] in claimed:
            continue
        claimed.add(s["to"])
        w = s["weight"]
        ok = isinstance(w, (int, float)) and not isinstance(w, bool)
        if ok:
            try:
                ok = np.isfinite(float(w)) and 0 < float(w) <= 2.0**53
            except OverflowError:
                ok = False
        if ok:
            good.append(i)
    return good


def _fuzz_replies(specs: list[dict], ids: dict[int, str]) -> list[Message]:
    out = []
    for s in specs:
        to = ids.get(s["to"], "never-sent")
        if s["error"]:
            out.append(make_reply(None, 1, node_id=s["src"], error="crashed"))
            continue
        metrics: dict = {k: s["scalar"] for k in s["keys"]}
        if s["weight"] is not None:
            metrics[keys.NUM_EXAMPLES] = s["weight"]
        if s["hist"] is not None and s["hist"]:
            metrics[H] = s["hist"]
        arrays = {k: np.full_like(v, s["value"]) for k, v in GLOBAL.items()}
        out.append(_reply(arrays, metrics, src=s["src"], reply_to=to))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(REPLY, min_size=1, max_size=9),
    chain=st.sampled_from([*CHAINS, "KL"]),
)
def test_fuzz_reply_metadata(specs, chain):
    sent = {1, 2, 3, 4, 5, 6}
    if chain == "KL":
        strategy = Compressed(ReplyGuard(KLWeightedFedAvg(mode="exp", tau=0.5, **KW)))
    else:
        strategy = CHAINS[chain]()
    ids = _configure(strategy, nodes=sorted(sent))
    replies = _fuzz_replies(specs, ids)
    arrays, _ = strategy.aggregate_train(1, replies)  # nothing may raise
    report = strategy.round_report()
    good = _oracle_good(specs, sent)
    assert report.get("clients_dropped", 0) == sum(
        1 for s in specs if not s["error"]
    ) - len(good), (report, good)
    assert all(len(r) <= MAX_REASON_CHARS + 40 for r in report.get("drop_reasons", []))
    if not good:
        assert arrays is None
        return
    if chain == "KL":
        reference = KLWeightedFedAvg(mode="exp", tau=0.5, **KW)
    else:
        reference = FedAvg(**KW)
    clean = _fuzz_replies(
        [
            {**specs[i], "keys": [], **({} if chain == "KL" else {"hist": None})}
            for i in good
        ],
        ids,
    )
    want, _ = reference.aggregate_train(1, clean)
    for k in GLOBAL:
        np.testing.assert_allclose(
            arrays[k].numpy(), want[k].numpy(), rtol=1e-5, atol=1e-6
        )


# ---------------------------------------------------------------------------- memory
def _peak(strategy, replies) -> int:
    tracemalloc.start()
    try:
        arrays, _ = strategy.aggregate_train(1, replies)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arrays is not None
    return peak


@pytest.mark.parametrize(
    "chain,kind",
    [
        (chain, kind)
        for chain in (
            "Compressed(ReplyGuard(FedAvg))",
            "Compressed(FedAvg)",
            "ReplyGuard(FedAvg)",
            "KL",
        )
        for kind in ("dense", "compressed")
        # the guard alone takes dense replies only
        if not (chain == "ReplyGuard(FedAvg)" and kind == "compressed")
    ],
)
def test_memory_stays_within_a_few_model_sizes_whatever_the_number_of_replies(
    chain, kind
):
    """Peak memory allocated while aggregating (replies built before) is bounded by a
    fixed number
    of model sizes, not by the number of replies."""
    from bouquet.codecs import TopKCompressor

    # ~0.2 MB
    glob = {"w": np.zeros((256, 200), np.float32), "b": np.zeros(200, np.float32)}
    model = sum(v.nbytes for v in glob.values())
    peaks = []
    for count in (40, 320):
        strategy = (
            Compressed(ReplyGuard(KLWeightedFedAvg(mode="exp", tau=0.5, **KW)))
            if chain == "KL"
            else CHAINS[chain]()
        )
        ids = _configure(strategy, nodes=range(1, count + 1), glob=glob)
        rng = np.random.default_rng(count)
        replies = []
        for node in range(1, count + 1):
            metrics = {
                keys.NUM_EXAMPLES: int(rng.integers(1, 50)),
                H: [3.0, 1.0 + node % 3, 2.0],
            }
            if kind == "dense":
                replies.append(
                    _reply(
                        {k: v + 0.01 * node for k, v in glob.items()},
                        metrics,
                        src=node,
                        reply_to=ids[node],
                    )
                )
            else:
                enc, _ = TopKCompressor(alpha=0.01, residual_decay=0.0).compress(
                    [
                        rng.normal(size=v.shape).astype(np.float32)
                        for v in glob.values()
                    ],
                    None,
                    rng=rng,
                )
                replies.append(
                    _reply(
                        None,
                        metrics,
                        src=node,
                        reply_to=ids[node],
                        array_record=encoded_arrayrecord(list(glob), enc),
                    )
                )
        peaks.append(_peak(strategy, replies))
    # 8 replies' worth at most, for 320 replies
    assert peaks[1] < 8 * model + 2_000_000, (peaks, model)
    # does not grow with the number of replies
    assert peaks[1] < 2 * peaks[0] + model, peaks


def test_7_async_an_update_that_overflows_is_rejected_and_the_model_stays_finite():
    from async_grid import FakeGrid
    from async_grid import run_async

    from bouquet.strategies import AsyncFedAvg

    # node 1 moves the model to +3e38; node 2, trained from the model before that, sends
    # -3e38: mixing it in (x + r (y - x)) overflows float32
    strategy = AsyncFedAvg(
        policy="constant",
        alpha=1.0,
        buffer_size=1,
        max_updates=6,
        eval_every=100,
        poll_interval_s=0.0,
        max_wall_s=5.0,
    )
    run_async(strategy, FakeGrid({1: ("ok", 1, 3.0e38), 2: ("ok", 2, -3.0e38)}))
    assert all(np.all(np.isfinite(v)) for v in strategy.state.arrays.values())
    assert any(
        "would make the model non-finite" in r for r in strategy.state.dropped
    ), strategy.state.dropped
