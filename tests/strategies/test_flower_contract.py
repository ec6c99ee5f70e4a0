"""Issue 31: bouquet's wrappers are drop-ins for Flower's own Message-API strategies.

Written from Flower's documented behaviour (``flwr/serverapp/strategy``), not from its
tests: every strategy below aggregates the same real ``Message`` replies unwrapped and
wrapped in ``ReplyGuard``, ``Compressed`` and ``Compressed(ReplyGuard(...))``, both the
way Flower's own tests drive a strategy (``aggregate_train`` alone, server state written
on the strategy) and the way ``Strategy.start`` does (``configure_train`` first); arrays
and metrics must agree. Then the four differences the issue measured (D1-D4), the
XGBoost refusal, and the attribute and hook rules of :mod:`bouquet.strategies.wrapper` /
:mod:`bouquet.strategies.hooks`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import Bulyan
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping
from flwr.serverapp.strategy import FedAdagrad
from flwr.serverapp.strategy import FedAdam
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy import FedAvgM
from flwr.serverapp.strategy import FedMedian
from flwr.serverapp.strategy import FedProx
from flwr.serverapp.strategy import FedTrimmedAvg
from flwr.serverapp.strategy import FedXgbBagging
from flwr.serverapp.strategy import FedXgbCyclic
from flwr.serverapp.strategy import FedYogi
from flwr.serverapp.strategy import Krum
from flwr.serverapp.strategy import MultiKrum
from flwr.serverapp.strategy import QFedAvg

from bouquet.strategies import Compressed
from bouquet.strategies import ReplyGuard
from bouquet.strategies import RoundOffset
from bouquet.strategies import ServerAdjusted
from bouquet.strategies import ServerMomentum
from bouquet.strategies import hooks
from bouquet.strategies.kl_weighted import KLWeightedFedAvg

NODES = [1, 2, 3, 4, 5]
KW = {"fraction_evaluate": 0.0, "min_available_nodes": 1, "min_train_nodes": 1}


@pytest.fixture(autouse=True)
def _no_forced_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulyan and QFedAvg call ``to_numpy_ndarrays(keep_input=False)``, which runs a
    full ``gc.collect()`` per call: ~0.3 s in a test process that holds the whole
    suite's objects (~9 s a case). It frees memory and changes no value, so it is
    skipped here."""
    import types

    import flwr.app.message.arrayrecord as arrayrecord

    monkeypatch.setattr(
        arrayrecord, "gc", types.SimpleNamespace(collect=lambda *a, **k: 0)
    )


GLOBAL = {
    "conv.w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "conv.b": np.arange(4, dtype=np.float32) / 7,
}

FLOWER = {
    "FedAvg": lambda: FedAvg(**KW),
    "FedAvgM": lambda: FedAvgM(server_momentum=0.9, server_learning_rate=0.5, **KW),
    "FedMedian": lambda: FedMedian(**KW),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2, **KW),
    "FedAdam": lambda: FedAdam(eta=0.1, **KW),
    "FedYogi": lambda: FedYogi(eta=0.1, **KW),
    "FedAdagrad": lambda: FedAdagrad(eta=0.1, **KW),
    "FedProx": lambda: FedProx(proximal_mu=0.1, **KW),
    "Krum": lambda: Krum(num_malicious_nodes=1, **KW),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2, **KW),
    "Bulyan": lambda: Bulyan(num_malicious_nodes=0, **KW),
    "QFedAvg": lambda: QFedAvg(
        client_learning_rate=0.1, q=0.2, train_loss_key="train-loss", **KW
    ),
    "DPClientFixed(FedAvg)": lambda: DifferentialPrivacyClientSideFixedClipping(
        FedAvg(**KW), 0.0, 100.0, len(NODES)
    ),
    "DPServerFixed(FedAvg)": lambda: DifferentialPrivacyServerSideFixedClipping(
        FedAvg(**KW), 0.0, 100.0, len(NODES)
    ),
    "DPServerAdaptive(FedProx)": lambda: DifferentialPrivacyServerSideAdaptiveClipping(
        FedProx(proximal_mu=0.1, **KW),
        0.0,
        len(NODES),
        initial_clipping_norm=0.05,
        clipped_count_stddev=0.0,
    ),
}
NEEDS_SERVER_STATE = {
    "FedAvgM",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "QFedAvg",
    "DPServerFixed(FedAvg)",
    "DPServerAdaptive(FedProx)",
}
WRAPPERS = {
    "ReplyGuard": ReplyGuard,
    "Compressed": Compressed,
    "Compressed dense path": lambda s: Compressed(s, fast_path=False),
    "Compressed(ReplyGuard)": lambda s: Compressed(ReplyGuard(s)),
}


class _Grid:
    def get_node_ids(self):
        return list(NODES)


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def _replies(rnd: int, base: dict[str, np.ndarray] = GLOBAL) -> list:
    out = []
    for node in NODES:
        rng = np.random.default_rng([node, rnd])
        local = {
            k: (v + rng.normal(size=v.shape) * 0.1).astype(v.dtype)
            for k, v in base.items()
        }
        out.append(
            make_reply(
                local,
                10 * node,
                {"train-loss": float(node) / 3, "acc": [0.5, 0.25]},
                node_id=node,
            )
        )
    return out


def _server_state(strategy, name: str, arrays: ArrayRecord) -> None:
    """What Flower's own tests do for strategies that need the current model: write it
    on the
    strategy (through any wrapper, which forwards the write to its owner)."""
    if name in {"FedAdam", "FedYogi", "FedAdagrad"}:
        strategy.current_arrays = {k: a.numpy() for k, a in arrays.items()}
    else:
        strategy.current_arrays = arrays


def _same(got, want, what: str) -> None:
    (ga, gm), (wa, wm) = got, want
    assert (ga is None) == (wa is None), what
    if wa is not None:
        assert list(ga.keys()) == list(wa.keys()) or set(ga.keys()) == set(wa.keys()), (
            what
        )
        for k in wa:
            g, w = ga[k].numpy(), wa[k].numpy()
            assert g.shape == w.shape and g.dtype == w.dtype, (
                f"{what}: {k} {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
            )
            np.testing.assert_allclose(
                g, w, rtol=1e-5, atol=1e-6, err_msg=f"{what}: {k}"
            )
    assert (gm is None) == (wm is None), what
    if wm is not None:
        # intended: bouquet's facts
        extra = {k for k in gm.keys() if k.startswith("bouquet-")}
        assert set(gm.keys()) - extra == set(wm.keys()), what
        for k in wm:
            np.testing.assert_allclose(
                np.asarray(gm[k], float),
                np.asarray(wm[k], float),
                rtol=1e-9,
                err_msg=f"{what}: {k}",
            )


@pytest.mark.parametrize(
    "configured", [False, True], ids=["aggregate only", "configure first"]
)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("name", list(FLOWER))
def test_wrapped_flower_strategy_aggregates_as_unwrapped(name, wrapper, configured):
    plain, wrapped = FLOWER[name](), WRAPPERS[wrapper](FLOWER[name]())
    for rnd in (1, 2):  # two rounds: server optimisers carry state across rounds
        for strategy in (plain, wrapped):
            if configured:
                sent = list(
                    strategy.configure_train(
                        rnd, _arrays(GLOBAL), ConfigRecord(), _Grid()
                    )
                )
                assert sorted(int(m.metadata.dst_node_id) for m in sent) == NODES
            elif name in NEEDS_SERVER_STATE:
                # QFedAvg consumes the record it is given
                _server_state(strategy, name, _arrays(GLOBAL))
        # fresh replies: FedMedian & co. consume theirs
        want = plain.aggregate_train(rnd, _replies(rnd))
        got = wrapped.aggregate_train(rnd, _replies(rnd))
        _same(got, want, f"{wrapper}({name}) round {rnd}")
        report = wrapped.round_report()
        assert report.get("clients_dropped", 0) == 0, report


def test_compressed_drops_compressed_replies_it_cannot_decode_without_configure_train():
    from bouquet.clients.compressed import encoded_arrayrecord
    from bouquet.codecs import TopKCompressor

    enc, _ = TopKCompressor(alpha=0.5, residual_decay=0.0).compress(
        [np.ones((3, 4), np.float32), np.ones(4, np.float32)]
    )
    compressed = make_reply(
        None, 10, node_id=9, array_record=encoded_arrayrecord(list(GLOBAL), enc)
    )
    comp = Compressed(FedAvg(**KW))
    got = comp.aggregate_train(1, [compressed, *_replies(1)])
    want = FedAvg(**KW).aggregate_train(1, _replies(1))
    _same(got, want, "dense replies alone")
    reasons = comp.round_report()["drop_reasons"]
    assert (
        len(reasons) == 1 and "node 9" in reasons[0] and "configure_train" in reasons[0]
    )


def test_without_configure_train_dense_layouts_are_checked_among_replies():
    odd = make_reply(
        {"conv.w": np.zeros((2, 2), np.float32), "conv.b": np.zeros(4, np.float32)},
        10,
        node_id=9,
    )
    comp = Compressed(FedAvg(**KW))
    got = comp.aggregate_train(1, [odd, *_replies(1)])
    _same(got, FedAvg(**KW).aggregate_train(1, _replies(1)), "majority layout")
    assert comp.round_report()["clients_dropped"] == 1


# ---------------------------------------------------------------------------- D1-D4
def test_d1_float64_replies_for_a_float32_model_follow_flower_without_the_guard():
    r64 = [
        make_reply(
            {k: v.astype(np.float64) + n for k, v in GLOBAL.items()}, 10 * n, node_id=n
        )
        for n in NODES
    ]
    want, _ = FedAvg(**KW).aggregate_train(1, r64)
    assert want["conv.w"].dtype == "float64"
    for configured in (False, True):
        for fast in (True, False):
            comp = Compressed(FedAvg(**KW), fast_path=fast)
            if configured:
                list(comp.configure_train(1, _arrays(GLOBAL), ConfigRecord(), _Grid()))
            got, _ = comp.aggregate_train(1, r64)
            assert got["conv.w"].dtype == "float64", (configured, fast)
            np.testing.assert_allclose(
                got["conv.w"].numpy(), want["conv.w"].numpy(), rtol=1e-6
            )
    # behind ReplyGuard: the dtype rule (docs/resilience.md): cast to the server's
    # float32
    for chain in (ReplyGuard(FedAvg(**KW)), Compressed(ReplyGuard(FedAvg(**KW)))):
        list(chain.configure_train(1, _arrays(GLOBAL), ConfigRecord(), _Grid()))
        got, _ = chain.aggregate_train(1, r64)
        assert got["conv.w"].dtype == "float32"
        np.testing.assert_allclose(
            got["conv.w"].numpy(), want["conv.w"].numpy(), rtol=1e-6
        )


def test_d3_weighted_by_key_is_honoured_through_flowers_dp_wrappers():
    def dp():
        return DifferentialPrivacyClientSideFixedClipping(
            FedAvg(weighted_by_key="w8", **KW), 0.0, 100.0, 2
        )

    replies = [
        make_reply({"w": np.array([1.0], np.float32)}, 1, {"w8": 3.0}, node_id=1),
        make_reply({"w": np.array([5.0], np.float32)}, 1, {"w8": 1.0}, node_id=2),
    ]
    want, _ = dp().aggregate_train(1, replies)
    np.testing.assert_allclose(want["w"].numpy(), [2.0])
    for chain in (ReplyGuard(dp()), Compressed(dp()), Compressed(ReplyGuard(dp()))):
        got, _ = chain.aggregate_train(1, replies)
        assert chain.round_report().get("clients_dropped", 0) == 0
        np.testing.assert_allclose(got["w"].numpy(), want["w"].numpy())
        assert chain.weight_key == "w8" if isinstance(chain, ReplyGuard) else True


def test_d4_float16_model_replies_keep_their_bits():
    glob = {"w": np.array([-0.4578], np.float16)}

    # fresh each time: FedMedian consumes the arrays of the replies it reads
    def replies():
        return [
            make_reply({"w": np.array([0.6606], np.float16)}, 10, node_id=n)
            for n in (1, 2, 3)
        ]

    want, _ = FedMedian(**KW).aggregate_train(1, replies())
    for chain in (Compressed(FedMedian(**KW)), Compressed(ReplyGuard(FedMedian(**KW)))):
        list(chain.configure_train(1, _arrays(glob), ConfigRecord(), _Grid()))
        got, _ = chain.aggregate_train(1, replies())
        np.testing.assert_array_equal(got["w"].numpy(), want["w"].numpy())
        assert got["w"].numpy()[0] == np.float16(0.6606)


@pytest.mark.parametrize("xgb", [FedXgbBagging, FedXgbCyclic])
@pytest.mark.parametrize(
    "wrapper", [ReplyGuard, Compressed, lambda s: ServerMomentum(s, 0.9)]
)
def test_flower_xgboost_strategies_are_refused_at_construction(xgb, wrapper):
    with pytest.raises(ValueError, match="booster"):
        wrapper(xgb())


# ----------------------------------------------------------------- attributes and hooks
def test_writes_go_to_the_one_owner_or_are_refused():
    inner = FedAvgM(server_momentum=0.9)
    chain = ServerAdjusted(Compressed(ReplyGuard(inner)), lambda arrays, rnd: arrays)
    chain.server_momentum = 0.3  # FedAvgM's, three levels down
    chain.min_replies = 2  # the guard's
    chain.server_lr = 0.5  # Compressed's
    assert (
        inner.server_momentum == 0.3
        and chain.strategy.strategy.min_replies == 2
        and chain.strategy.server_lr == 0.5
    )
    for level in (chain, chain.strategy, chain.strategy.strategy):
        assert not {"server_momentum", "fraction_train"} & set(vars(level))
    with pytest.raises(AttributeError, match="no attribute 'typo_lr'"):
        chain.typo_lr = 0.1


def test_a_wrapper_attribute_that_would_shadow_the_inner_strategys_is_refused():
    from bouquet.strategies import StrategyWrapper

    class Shadowing(StrategyWrapper):
        def __init__(self, strategy):
            super().__init__(strategy)
            self.fraction_train = 0.5

    with pytest.raises(ValueError, match="shadow"):
        Shadowing(FedAvg())
    for wrapper in (
        ReplyGuard,
        Compressed,
        lambda s: ServerMomentum(s, 0.5),
        lambda s: RoundOffset(s, 2),
    ):
        for name, make in FLOWER.items():
            if name not in {"FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"}:
                # none of bouquet's wrappers shadows any Flower strategy
                wrapper(make())


def test_hooks_are_protocols_checked_with_isinstance():
    guard = ReplyGuard(KLWeightedFedAvg(**KW))
    comp = Compressed(guard)
    # not forwarded
    assert isinstance(guard, hooks.ReplyScreen) and not isinstance(
        comp, hooks.ReplyScreen
    )
    # KL's flag, forwarded
    assert isinstance(comp, hooks.RoundReporter) and isinstance(
        comp, hooks.ValidatesMetrics
    )
    assert not isinstance(ServerAdjusted(guard, lambda a, r: a), hooks.ReplyScreen)
    assert isinstance(ServerMomentum(FedAvg(), 0.5), hooks.Stateful)
    assert not isinstance(FedAvg(), hooks.ReplyWeights)
    root = Path(__file__).resolve().parents[2] / "strategies"
    for path in root.glob("*.py"):
        assert not re.search(r"__name__\s*==", path.read_text()), (
            f"{path.name} recognises a class by name"
        )
        for member in ("min_replies", "skip_round", "within_norm_bounds"):
            if path.name != "guard.py":
                assert not re.search(rf"\.{member}\b", path.read_text()), (
                    f"{path.name} reaches into the guard: {member}"
                )


def test_wrapper_summaries_are_branches_of_flowers_strategy_tree():
    """``Strategy.start`` logs "Starting X strategy:" then a tree ("\\t├── ..."); each
    wrapper's summary line is a branch of it, not a line that breaks the tree (issue
    35)."""
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    from bouquet.strategies import CompressedDownlink

    lines: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    strategy = CompressedDownlink(
        ServerMomentum(Compressed(ReplyGuard(KLWeightedFedAvg(**KW))), momentum=0.5),
        "topk",
        alpha=0.1,
    )
    handler = _Keep()
    FLOWER_LOGGER.addHandler(handler)
    try:
        strategy.summary()
    finally:
        FLOWER_LOGGER.removeHandler(handler)
    assert len(lines) >= 5 and all(line.startswith("\t") for line in lines), lines
    assert [line for line in lines if "around" in line] == [
        "\t├──> CompressedDownlink(topk) around ServerMomentum",
        "\t├──> ServerMomentum(momentum=0.5) around Compressed",
        "\t├──> Compressed(server_lr=1.0) around ReplyGuard",
        "\t├──> ReplyGuard around KLWeightedFedAvg",
    ]
