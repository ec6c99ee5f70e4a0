"""Federated recommendation on MovieLens-100K: split, grouping, privacy of user factors,
a real run.

Needs ``$BOUQUET_DATA/movielens/ml-100k.inter`` (``scripts/fetch_data.sh movielens``);
without it the tests fail with ``DataMissingError`` naming that command.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ROOT
from conftest import make_reply

from bouquet import keys
from bouquet.data.movielens import group_users
from bouquet.data.movielens import load_movielens
from bouquet.data.movielens import rank_metrics
from bouquet.data.movielens import sample_negatives
from bouquet.data.movielens import temporal_split


@pytest.fixture(scope="module")
def ratings():
    return load_movielens()


def _cfg(*overrides: str) -> dict:
    from hydra import compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["dataset=movielens", "model=mf", "client=recsys", *overrides],
        )
    return OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------------------------ data
def test_movielens_is_the_100k_file(ratings) -> None:
    assert (len(ratings), ratings.num_users, ratings.num_items) == (100_000, 943, 1682)
    assert set(np.unique(ratings.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_temporal_split_has_no_leakage(ratings) -> None:
    split = temporal_split(ratings, test_per_user=5)
    assert len(split.train) + len(split.test) == len(ratings)
    train_pairs = set(
        zip(split.train.user.tolist(), split.train.item.tolist(), strict=True)
    )
    test_pairs = set(
        zip(split.test.user.tolist(), split.test.item.tolist(), strict=True)
    )
    assert not train_pairs & test_pairs  # no held-out rating is in the training set
    assert len(train_pairs | test_pairs) == len(ratings)
    for u in range(ratings.num_users):
        tr = split.train.timestamp[split.train.user == u]
        te = split.test.timestamp[split.test.user == u]
        assert len(te) == 5 and len(tr) >= 15  # every ML-100K user has >= 20 ratings
        assert tr.max() <= te.min()  # the test ratings are the user's latest


def test_temporal_split_keeps_one_training_rating() -> None:
    from bouquet.data.movielens import Ratings

    r = Ratings(
        np.array([0, 0, 1]),
        np.array([0, 1, 2]),
        np.ones(3, np.float32),
        np.array([5, 1, 3]),
        2,
        3,
    )
    split = temporal_split(r, test_per_user=3)
    assert split.test.item.tolist() == [0] and sorted(split.train.item.tolist()) == [
        1,
        2,
    ]
    with pytest.raises(ValueError, match="test_per_user"):
        temporal_split(r, 0)


def test_user_groups_are_seeded_disjoint_and_cover(ratings) -> None:
    groups = group_users(ratings.num_users, 7, seed=3)
    again = group_users(ratings.num_users, 7, seed=3)
    other = group_users(ratings.num_users, 7, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(groups, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(groups, other, strict=True))
    flat = np.concatenate(groups)
    assert len(flat) == len(np.unique(flat)) == ratings.num_users
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    subset = group_users(ratings.num_users, 2, seed=3, max_users=40)
    assert sum(map(len, subset)) == 40
    with pytest.raises(ValueError, match="num_clients"):
        group_users(10, 11, seed=0)


def test_negatives_are_unrated_and_do_not_depend_on_grouping(ratings) -> None:
    users = np.array([0, 5, 17])
    neg = sample_negatives(ratings, users, 99, seed=0)
    alone = sample_negatives(ratings, np.array([5]), 99, seed=0)
    assert np.array_equal(neg[1], alone[0])
    for row, u in enumerate(users):
        rated = set(ratings.item[ratings.user == u].tolist())
        assert len(set(neg[row].tolist())) == 99 and not rated & set(neg[row].tolist())


def test_rank_metrics_by_hand() -> None:
    pos = np.array([5.0, 1.0, 2.0])
    neg = np.array([[1.0] * 12, [2.0] * 12, [3.0] * 2 + [0.0] * 10])
    hits, ndcg = rank_metrics(pos, neg, k=10)
    assert hits.tolist() == [1.0, 0.0, 1.0]  # ranks 0, 12, 2
    assert ndcg.tolist() == pytest.approx([1.0, 0.0, 1.0 / math.log2(4.0)])


# ------------------------------------------------------------------ client privacy
def _train_message(arrays: dict[str, np.ndarray], server_round: int):
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord
    from flwr.app import Message
    from flwr.app import MessageType
    from flwr.app import RecordDict

    content = RecordDict(
        {
            keys.ARRAYS: ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
            ),
            keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=7)


@pytest.mark.parametrize("codec", [None, "ternary"])
def test_user_factors_stay_in_context_state_and_never_in_replies(
    codec: str | None,
) -> None:
    from flwr.app import Context
    from flwr.app import RecordDict

    from bouquet.simulations.methods.experiments import get_experiment
    from bouquet.simulations.run.serverapp import make_client_app

    cfg = _cfg(
        "dataset.max_users=40",
        "simulation.num_clients=2",
        f"client.codec={codec or 'null'}",
    )
    exp = get_experiment(cfg)
    app = make_client_app(cfg)
    shared = exp.initial_arrays()
    assert shared and all(k.startswith("shared.") for k in shared)
    context = Context(
        run_id=1,
        node_id=7,
        node_config={keys.PARTITION_ID: 1},
        state=RecordDict(),
        run_config={},
    )
    n_users = len(exp.partitions[1])
    # so shapes tell the two sides apart
    assert all(a.shape[0] != n_users for a in shared.values())
    stored = []
    for rnd in (1, 2):
        reply = app(_train_message(shared, rnd), context)
        assert not reply.has_error(), reply.error
        names = [n for rec in reply.content.array_records.values() for n in rec]
        assert sorted(names) == sorted(shared)  # only the item side travels
        for rec in reply.content.array_records.values():
            for name, arr in rec.items():
                assert "private" not in name and "user" not in name
                # never a (users,) or (users, dim) table
                assert tuple(arr.shape) == shared[name].shape
        user_state = context.state[keys.RECSYS_USER_STATE]
        assert sorted(user_state) == ["private.user_bias", "private.user_emb"]
        assert user_state["private.user_emb"].numpy().shape[0] == n_users
        stored.append(user_state["private.user_emb"].numpy().copy())
        metrics = next(iter(reply.content.metric_records.values()))
        assert metrics[keys.NUM_EXAMPLES] > 0 and math.isfinite(
            metrics[keys.TRAIN_LOSS]
        )
        if codec:
            assert all(
                a.stype.startswith("bouquet.ternary")
                for a in next(iter(reply.content.array_records.values())).values()
            )
    # round 2 trained the factors kept from round 1
    assert not np.array_equal(stored[0], stored[1])


# ------------------------------------------------------------------ server side
def test_pool_evaluation_weights_by_ratings_and_drops_bad_replies() -> None:
    from bouquet.simulations.methods.recsys import pool_evaluation

    def ev(n: int, mse: float, hr: float, ndcg: float, node: int):
        return make_reply(
            None,
            n,
            {keys.EVAL_MSE: mse, keys.EVAL_HR_AT_10: hr, keys.EVAL_NDCG_AT_10: ndcg},
            node_id=node,
        )

    good = [ev(10, 1.0, 0.5, 0.25, 1), ev(30, 0.5, 0.1, 0.05, 2)]
    bad = [
        ev(5, float("nan"), 0.5, 0.1, 3),
        ev(5, 0.4, 1.5, 0.1, 4),
        make_reply(None, 0, error="crash", node_id=5),
    ]
    report, record = pool_evaluation(good + bad)
    assert report["rmse"] == pytest.approx(math.sqrt((10 * 1.0 + 30 * 0.5) / 40))
    assert report["hr_at_10"] == pytest.approx((10 * 0.5 + 30 * 0.1) / 40)
    assert report["ndcg_at_10"] == pytest.approx((10 * 0.25 + 30 * 0.05) / 40)
    assert (report["eval_clients"], report["eval_dropped"]) == (2, 3)
    assert record is not None and record["rmse"] == pytest.approx(report["rmse"])
    empty, none = pool_evaluation(bad)
    assert empty["rmse"] is None and none is None


def test_server_holds_no_ratings_and_no_user_factors() -> None:
    from bouquet.simulations.methods.experiments import get_experiment

    exp = get_experiment(_cfg("dataset.max_users=40", "simulation.num_clients=2"))
    assert exp.evaluate_arrays(exp.initial_arrays()) == {}
    assert all(k.startswith("shared.") for k in exp.initial_arrays())


@pytest.mark.parametrize("codec", [None, "stc"])
def test_build_strategy_adds_federated_evaluation_and_decoding(
    codec: str | None,
) -> None:
    from flwr.app import Array
    from flwr.app import ArrayRecord
    from flwr.app import ConfigRecord
    from flwr.app import MessageType

    from bouquet.simulations.methods.experiments import get_experiment
    from bouquet.simulations.methods.recsys import FederatedEvaluation
    from bouquet.simulations.methods.recsys import _has_compressed
    from bouquet.simulations.run.serverapp import build_strategy

    cfg = _cfg(
        "dataset.max_users=40",
        "simulation.num_clients=2",
        "dataset.eval_fraction=0.5",
        f"client.codec={codec or 'null'}",
    )
    strategy = build_strategy(cfg, get_experiment(cfg))
    assert isinstance(strategy, FederatedEvaluation)
    assert _has_compressed(strategy) == (codec is not None)

    class Nodes:
        def get_node_ids(self):
            return [11, 12, 13, 14]

    arrays = ArrayRecord({"shared.item_bias": Array(np.zeros(3, np.float32))})
    msgs = list(strategy.configure_evaluate(3, arrays, ConfigRecord(), Nodes()))
    assert len(msgs) == 2 and {m.metadata.dst_node_id for m in msgs} <= {11, 12, 13, 14}
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in msgs)
    assert all(m.content[keys.CONFIG][keys.SERVER_ROUND] == 3 for m in msgs)
    assert strategy.round_report()["rmse"] is None  # nothing evaluated yet
    strategy.aggregate_evaluate(
        3,
        [
            make_reply(
                None,
                4,
                {
                    keys.EVAL_MSE: 0.81,
                    keys.EVAL_HR_AT_10: 0.5,
                    keys.EVAL_NDCG_AT_10: 0.3,
                },
            )
        ],
    )
    report = strategy.round_report()
    assert report["rmse"] == pytest.approx(0.9) and report["eval_clients"] == 1
    assert strategy.round_report()["rmse"] is None  # a report is used once
