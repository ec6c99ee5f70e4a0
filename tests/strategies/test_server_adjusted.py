"""Tests of the server-side adjustment wrapper (strategies/server_adjusted.py,
simulations/methods/adjust.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_reply
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy import FedProx

from bouquet import keys
from bouquet.simulations.methods.adjust import ServerAdjuster
from bouquet.simulations.methods.adjust import build_adjust_fn
from bouquet.simulations.methods.adjust import shared_data
from bouquet.simulations.methods.adjust import wrap_server_adjust
from bouquet.simulations.methods.experiment import Experiment
from bouquet.strategies.kl_weighted import KLWeightedFedAvg
from bouquet.strategies.server_adjusted import ServerAdjusted

ROOT = Path(__file__).resolve().parents[2]


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(2, 3)).astype(np.float32),
        "b": rng.normal(size=3).astype(np.float32),
    }


def _replies(hists=None):
    hists = hists or {1: [4, 6], 2: [9, 1], 3: [5, 5]}
    return [
        make_reply(
            _arrays(i),
            10 * i,
            {keys.LABEL_HISTOGRAM: h, keys.TRAIN_LOSS: 1.0},
            node_id=i,
        )
        for i, h in hists.items()
    ]


def _np(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


class Recorder:
    """An adjust_fn that records its calls and adds 1 to every array."""

    def __init__(self, delta: float = 1.0) -> None:
        self.calls: list[tuple[int, dict[str, np.ndarray]]] = []
        self.delta = delta

    def __call__(self, arrays: ArrayRecord, server_round: int):
        self.calls.append((server_round, _np(arrays)))
        return {k: v + self.delta for k, v in _np(arrays).items()}, {
            "acc_before_adjust": 0.5
        }


@pytest.mark.parametrize(
    "inner", [FedAvg, lambda: KLWeightedFedAvg(mode="exp", tau=0.5)]
)
def test_identity_adjust_gives_exactly_inner_result(inner):
    ref, ref_metrics = inner().aggregate_train(1, _replies())
    wrapped = ServerAdjusted(inner(), lambda arrays, rnd: arrays)
    got, got_metrics = wrapped.aggregate_train(1, _replies())
    for k, v in _np(ref).items():
        np.testing.assert_array_equal(_np(got)[k], v)
    assert dict(got_metrics) == dict(ref_metrics)
    assert wrapped.round_report()["adjusted"] is True


def test_adjust_called_once_per_round_with_the_aggregate():
    rec = Recorder()
    wrapped = ServerAdjusted(FedAvg(), rec)
    for rnd in (1, 2, 3):
        agg, _ = FedAvg().aggregate_train(rnd, _replies())
        got, _ = wrapped.aggregate_train(rnd, _replies())
        assert len(rec.calls) == rnd and rec.calls[-1][0] == rnd
        for k, v in _np(agg).items():
            # called with the aggregate
            np.testing.assert_array_equal(rec.calls[-1][1][k], v)
            # its result is the new global model
            np.testing.assert_allclose(_np(got)[k], v + 1.0)
        assert wrapped.round_report()["acc_before_adjust"] == 0.5


def test_every_n_rounds():
    rec = Recorder()
    wrapped = ServerAdjusted(FedAvg(), rec, every_n_rounds=3)
    adjusted = []
    for rnd in range(1, 8):
        agg, _ = FedAvg().aggregate_train(rnd, _replies())
        got, _ = wrapped.aggregate_train(rnd, _replies())
        report = wrapped.round_report()
        adjusted.append(report["adjusted"])
        same = all(np.array_equal(_np(got)[k], v) for k, v in _np(agg).items())
        assert same != report["adjusted"]
    assert [c[0] for c in rec.calls] == [3, 6] == wrapped.adjusted_rounds
    assert adjusted == [False, False, True, False, False, True, False]


def test_no_results_no_adjustment_and_bad_arguments():
    rec = Recorder()
    wrapped = ServerAdjusted(FedAvg(), rec)
    arrays, _ = wrapped.aggregate_train(
        1, [make_reply(None, 1, node_id=9, error="down")]
    )
    assert arrays is None and rec.calls == []
    with pytest.raises(ValueError, match="every_n_rounds"):
        ServerAdjusted(FedAvg(), rec, every_n_rounds=0)
    with pytest.raises(ValueError, match="adjust_fn"):
        ServerAdjusted(FedAvg(), None)  # type: ignore[arg-type]
    renaming = ServerAdjusted(
        FedAvg(), lambda a, r: ArrayRecord({"z": Array(np.zeros(1))})
    )
    with pytest.raises(ValueError, match="array names"):
        renaming.aggregate_train(1, _replies())


def test_composes_with_kl_and_merges_reports():
    rec = Recorder(delta=0.0)
    kl = KLWeightedFedAvg(mode="disco", a=0.5, b=0.05)
    wrapped = ServerAdjusted(kl, rec)
    bad = make_reply(
        _arrays(4), 10, {keys.LABEL_HISTOGRAM: [1, -1], keys.TRAIN_LOSS: 1.0}, node_id=4
    )
    got, _ = wrapped.aggregate_train(1, [*_replies(), bad])
    ref, _ = KLWeightedFedAvg(mode="disco", a=0.5, b=0.05).aggregate_train(
        1, [*_replies(), bad]
    )
    for k, v in _np(ref).items():
        np.testing.assert_array_equal(_np(got)[k], v)
    report = wrapped.round_report()
    assert report["kl_node_ids"] == [1, 2, 3, 4] and report["kl_bad_histograms"] == 1
    assert report["adjusted"] is True and report["acc_before_adjust"] == 0.5
    assert wrapped.weighted_by_key == keys.NUM_EXAMPLES  # attributes forwarded
    assert isinstance(ServerAdjusted(FedProx(), rec).strategy, FedProx)


# -------------------------------------------------------- shared data (real Experiment)
def _cfg(**server) -> dict:
    return {
        "seed": 0,
        "dataset": {
            "_target_": "bouquet.data.load_dataset",
            "name": "digits",
            "root": None,
        },
        "partition": {
            "_target_": "bouquet.data.partition_indices",
            "_partial_": True,
            "kind": "pathological",
            "labels_per_client": 2,
        },
        "model": {
            "_target_": "bouquet.models.build_model",
            "_partial_": True,
            "name": "mlp",
            "hidden": 16,
        },
        "simulation": {"num_clients": 4},
        "server": {
            "name": "adjust",
            "shared_fraction": 0.1,
            "epochs": 2,
            "lr": 0.05,
            "batch_size": 16,
            **server,
        },
    }


def test_shared_slice_disjoint_from_clients_and_test():
    cfg = _cfg()
    cfg["partition"] = {
        "_target_": "bouquet.data.partition_indices",
        "_partial_": True,
        "kind": "iid",
    }
    exp = Experiment(cfg)
    shared = exp.server_shared_indices
    assert len(shared) == pytest.approx(0.1 * len(exp.dataset.y_train), abs=10)
    counts = np.bincount(exp.dataset.y_train[shared], minlength=10)
    assert counts.max() - counts.min() <= 1  # class-balanced
    for part in exp.partitions:
        assert np.intersect1d(part, shared).size == 0
    covered = np.sort(np.concatenate([*exp.partitions, shared]))
    # nothing else lost
    np.testing.assert_array_equal(covered, np.arange(len(exp.dataset.y_train)))
    x, _ = shared_data(exp.cfg, exp)
    train_rows = {row.tobytes() for row in x}
    # test set untouched
    assert not any(row.tobytes() in train_rows for row in exp.dataset.x_test)


def test_server_adjuster_trains_on_shared_data_with_proximal_term():
    exp = Experiment(_cfg())
    init = exp.initial_arrays()
    record = ArrayRecord({k: Array(v) for k, v in init.items()})
    free, rep = build_adjust_fn(exp.cfg, exp)(record, 1)
    assert 0.0 <= rep["acc_before_adjust"] <= 1.0 and rep["adjust_loss"] > 0
    x, y = shared_data(exp.cfg, exp)
    held = ServerAdjuster(
        exp, x, y, epochs=2, lr=0.05, batch_size=16, proximal_mu=10.0
    )(record, 1)[0]
    dist = {
        name: sum(float(np.sum((r[k].numpy() - init[k]) ** 2)) for k in init)
        for name, r in (("free", free), ("held", held))
    }
    # the proximal term keeps the adjusted model near the aggregate
    assert dist["held"] < dist["free"]
    assert dist["free"] > 0
    before = exp.evaluate_arrays(init)["loss"]
    # training on the shared slice helps from scratch
    assert exp.evaluate_arrays(_np(free))["loss"] < before
    with pytest.raises(ValueError, match="server.optimizer"):
        ServerAdjuster(exp, x, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="server.shared_fraction"):
        build_adjust_fn(
            _cfg(shared_fraction=0.0), Experiment(_cfg(shared_fraction=0.0))
        )


def test_shared_source_and_wrapper_selection():
    exp = Experiment(_cfg(shared_source="digits", optimizer="adam"))
    assert isinstance(wrap_server_adjust(exp.cfg, exp, FedAvg()), ServerAdjusted)
    none_cfg = {**exp.cfg, "server": {"name": "none", "shared_fraction": 0.0}}
    plain = FedAvg()
    assert wrap_server_adjust(none_cfg, exp, plain) is plain
    with pytest.raises(ValueError, match="shared_source"):
        shared_data(_cfg(shared_source="mnist"), exp)  # 28x28 data for an 8x8 model


class _Grid:
    def get_node_ids(self):
        return [1, 2, 3]


def test_composes_with_compressed():
    from flwr.app import ConfigRecord

    from bouquet.codecs import encode_topk
    from bouquet.codecs import select_topk
    from bouquet.strategies.compressed import Compressed

    glob = {k: np.zeros_like(v) for k, v in _arrays(0).items()}
    record = ArrayRecord({k: Array(v) for k, v in glob.items()})

    def replies():
        out = []
        for node in (1, 2, 3):
            enc = {}
            for name, ref in glob.items():
                update = _arrays(node)[name] - ref
                e, _ = encode_topk(update, select_topk(update.reshape(-1), 2))
                enc[name] = Array(
                    dtype=e.dtype, shape=tuple(e.shape), stype=e.stype, data=e.data
                )
            out.append(
                make_reply(
                    None,
                    10 * node,
                    {keys.TRAIN_LOSS: 1.0},
                    node_id=node,
                    array_record=ArrayRecord(enc),
                )
            )
        return out

    plain = Compressed(FedAvg())
    plain.configure_train(1, record, ConfigRecord(), _Grid())
    ref, _ = plain.aggregate_train(1, replies())
    rec = Recorder(delta=0.0)
    wrapped = ServerAdjusted(Compressed(FedAvg()), rec)
    wrapped.configure_train(1, record, ConfigRecord(), _Grid())
    got, _ = wrapped.aggregate_train(1, replies())
    for k, v in _np(ref).items():
        # adjust_fn sees the decoded aggregate
        np.testing.assert_array_equal(rec.calls[0][1][k], v)
        np.testing.assert_array_equal(_np(got)[k], v)
    assert len(rec.calls) == 1 and wrapped.round_report()["adjusted"] is True
