"""``client=shared_topk`` with secure aggregation (issue 34): shared coordinates, masks
that cancel only
in the sum, and a server-side strategy that receives only that sum."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import client_factory
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import MessageType
from flwr.app import RecordDict
from flwr.serverapp.strategy import FedAvg

from bouquet.clients import numpyclient_app
from bouquet.clients.shared_topk import SharedTopKClient
from bouquet.clients.shared_topk import secagg_key_mod
from bouquet.codecs.shared_topk import SCALE
from bouquet.codecs.shared_topk import from_fixed
from bouquet.codecs.shared_topk import mask
from bouquet.codecs.shared_topk import new_keypair
from bouquet.codecs.shared_topk import pair_key
from bouquet.codecs.shared_topk import shared_indices
from bouquet.codecs.shared_topk import shared_k
from bouquet.codecs.shared_topk import to_fixed
from bouquet.codecs.shared_topk import value_bound
from bouquet.keys import SHARED_ARRAY
from bouquet.models import build_model
from bouquet.models.training import get_weights
from bouquet.strategies.privacy_secagg import SharedSupport

NODES = [3, 7, 11]


def test_shared_indices_are_the_same_for_everyone_and_change_by_round():
    a = shared_indices(1000, 50, seed=1, server_round=4)
    assert np.array_equal(a, shared_indices(1000, 50, seed=1, server_round=4))
    assert (
        len(np.unique(a)) == 50
        and np.all(np.diff(a) > 0)
        and 0 <= a[0]
        and a[-1] < 1000
    )
    assert not np.array_equal(a, shared_indices(1000, 50, seed=1, server_round=5))
    assert (
        shared_k(1000, 0.01) == 10
        and shared_k(1000, 0.001, min_k=3) == 3
        and shared_k(5, 1.0) == 5
    )


def test_fixed_point_sum_of_n_clients_is_exact_to_the_resolution_and_never_wraps():
    rng = np.random.default_rng(0)
    n = 5
    values = [rng.uniform(-value_bound(n), value_bound(n), size=64) for _ in range(n)]
    total = np.zeros(64, np.uint32)
    for v in values:
        q, clipped = to_fixed(v, n)
        assert clipped == 0
        total += q
    np.testing.assert_allclose(
        from_fixed(total), np.sum(values, axis=0), atol=n / SCALE
    )
    _, clipped = to_fixed(np.array([2 * value_bound(n), 0.0]), n)
    assert clipped == 1
    with pytest.raises(ValueError, match="not finite"):
        to_fixed(np.array([np.nan]), n)


def test_pairwise_masks_cancel_only_in_the_sum_of_all_peers():
    pairs = {n: new_keypair() for n in NODES}
    publics = {n: pub for n, (_, pub) in pairs.items()}
    assert pair_key(pairs[3][0], publics[7], 2) == pair_key(pairs[7][0], publics[3], 2)
    # bound to the round
    assert pair_key(pairs[3][0], publics[7], 2) != pair_key(pairs[3][0], publics[7], 3)
    masks = [mask(n, pairs[n][0], publics, 100, 2) for n in NODES]
    assert not np.any(sum(masks, np.zeros(100, np.uint32)))  # all three: zero mod 2^32
    assert np.count_nonzero(masks[0] + masks[1]) > 90  # any two alone: still masked


class Grid:
    """Nodes run a real bouquet ClientApp (SharedTopKClient + secagg_key_mod), each with
    its own context."""

    def __init__(
        self, answer_keys: set[int] | None = None, drop_train: set[int] | None = None
    ) -> None:
        self.app = numpyclient_app(
            client_factory(SharedTopKClient, alpha=0.2), mods=[secagg_key_mod]
        )
        self.contexts = {
            n: Context(
                run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}
            )
            for n in NODES
        }
        self.answer_keys = set(NODES) if answer_keys is None else answer_keys
        self.drop_train = drop_train or set()
        self.uploads: dict[int, np.ndarray] = {}

    def get_node_ids(self):
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            query = msg.metadata.message_type == MessageType.QUERY
            if (query and node not in self.answer_keys) or (
                not query and node in self.drop_train
            ):
                continue
            msg.metadata.__dict__["_message_id"] = f"m{node}-{'q' if query else 't'}"
            reply = self.app(msg, self.contexts[node])
            reply.metadata.__dict__["_src_node_id"] = node
            if not query:
                self.uploads[node] = reply.content["arrays"][SHARED_ARRAY].numpy()
            out.append(reply)
        return out


def _initial() -> ArrayRecord:
    return ArrayRecord(
        {
            k: Array(v)
            for k, v in get_weights(build_model("mlp", (1, 8, 8), 3, seed=0)).items()
        }
    )


class Recording(FedAvg):
    """FedAvg that keeps what it was handed."""

    def aggregate_train(self, server_round, replies):
        self.seen = list(replies)
        return super().aggregate_train(server_round, self.seen)


def _round(
    secure: bool, grid: Grid
) -> tuple[SharedSupport, Recording, ArrayRecord | None]:
    inner = Recording(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
    strategy = SharedSupport(inner, alpha=0.2, secure=secure, seed=5)
    messages = list(strategy.configure_train(1, _initial(), ConfigRecord(), grid))
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    return strategy, inner, arrays


def test_the_server_strategy_receives_only_the_sum_and_it_equals_the_clear_mean():
    secure_grid = Grid()
    strategy, inner, secure = _round(True, secure_grid)
    # one reply: the unmasked mean of all peers
    assert strategy.inner_replies == 1 and len(inner.seen) == 1
    clear_grid = Grid()
    _, clear_inner, clear = _round(False, clear_grid)
    assert len(clear_inner.seen) == 3  # without secagg: every client's own vector
    assert secure is not None and clear is not None
    # same clients, same data, equal weights: the same model up to fixed-point rounding
    for name in clear.keys():
        np.testing.assert_allclose(
            secure[name].numpy(), clear[name].numpy(), atol=2 / SCALE
        )
    moved = sum(
        int(np.count_nonzero(np.abs(clear[n].numpy() - _initial()[n].numpy()) > 1e-5))
        for n in clear.keys()
    )
    total = sum(int(_initial()[n].numpy().size) for n in clear.keys())
    # only the shared coordinates moved (beyond FedAvg's float rounding)
    assert 0 < moved <= shared_k(total, 0.2)
    for node in NODES:  # one masked upload says nothing about its client's values
        clear_values = clear_grid.uploads[node].astype(np.float64)
        masked_values = from_fixed(secure_grid.uploads[node])
        assert secure_grid.uploads[node].dtype == np.uint32
        assert np.max(np.abs(masked_values - clear_values)) > 100 * np.max(
            np.abs(clear_values)
        )


def test_a_missing_or_bad_masked_reply_voids_the_round():
    _, inner, arrays = _round(True, Grid(drop_train={7}))
    assert arrays is None and not hasattr(inner, "seen")
    grid = Grid()
    inner = Recording(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
    strategy = SharedSupport(inner, alpha=0.2, secure=True, seed=5)
    replies = grid.send_and_receive(
        list(strategy.configure_train(1, _initial(), ConfigRecord(), grid))
    )
    # hostile
    replies[0].content["arrays"] = ArrayRecord(
        {SHARED_ARRAY: Array(np.zeros(3, np.float32))}
    )
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None
    assert "shape" in strategy.round_report()["drop_reasons"][0]


def test_nodes_without_a_key_are_left_out_and_too_few_mean_no_round():
    strategy = SharedSupport(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), alpha=0.2, secure=True
    )
    grid = Grid(answer_keys={3, 7})
    messages = list(strategy.configure_train(1, _initial(), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [3, 7]
    assert list(messages[0].content["config"]["bouquet-secagg-peers"]) == [3, 7]
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert arrays is not None  # the two that had keys are a complete set of peers
    assert (
        list(
            strategy.configure_train(
                2, _initial(), ConfigRecord(), Grid(answer_keys={3})
            )
        )
        == []
    )


def test_without_secagg_a_bad_reply_is_dropped_and_the_others_aggregated():
    grid = Grid()
    inner = Recording(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
    strategy = SharedSupport(inner, alpha=0.2, secure=False, seed=5)
    replies = grid.send_and_receive(
        list(strategy.configure_train(1, _initial(), ConfigRecord(), grid))
    )
    replies[1].content["arrays"] = ArrayRecord(
        {SHARED_ARRAY: Array(np.zeros(grid.uploads[3].size, np.uint32))}
    )
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and len(inner.seen) == 2
    assert (
        "dtype uint32, expected float32" in strategy.round_report()["drop_reasons"][0]
    )


def test_client_refuses_a_round_whose_size_it_was_not_configured_for():
    app = numpyclient_app(client_factory(SharedTopKClient, alpha=0.5))
    strategy = SharedSupport(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=1), alpha=0.2
    )
    msg = list(strategy.configure_train(1, _initial(), ConfigRecord(), Grid()))[0]
    with pytest.raises(ValueError, match="configure both alike"):
        app(
            msg,
            Context(
                run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={}
            ),
        )
    with pytest.raises(ValueError, match="min_peers"):
        SharedSupport(FedAvg(), alpha=0.2, secure=True, min_peers=1)


def test_dp_inside_shared_support_sees_each_rebuilt_update_and_accounts_it():
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    from bouquet.strategies.privacy import EPSILON
    from bouquet.strategies.privacy import DPAccountant
    from bouquet.strategies.rdp import epsilon_of

    grid = Grid()
    inner = Recording(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
    dp = DPAccountant(
        DifferentialPrivacyClientSideFixedClipping(inner, 1e-12, 1e-4, 3),
        population_size=3,
        delta=1e-5,
    )
    strategy = SharedSupport(dp, alpha=0.2, secure=False, seed=5)
    replies = grid.send_and_receive(
        list(strategy.configure_train(1, _initial(), ConfigRecord(), grid))
    )
    arrays, metrics = strategy.aggregate_train(1, replies)
    # DP got every client's own (rebuilt, dense) update
    assert arrays is not None and len(inner.seen) == 3
    for reply in inner.seen:  # each one clipped to C = 1e-4 on the server, weight 1
        u = np.concatenate(
            [
                (
                    reply.content["arrays"][n].numpy().astype(np.float64)
                    - _initial()[n].numpy()
                ).ravel()
                for n in _initial().keys()
            ]
        )
        assert (
            np.linalg.norm(u) <= 1e-4 * (1 + 1e-3)
            and reply.content["metrics"]["num-examples"] == 1
        )
    assert strategy.round_report()["dp_clipped_server"] == 3
    assert metrics is not None and metrics[EPSILON] == pytest.approx(
        epsilon_of([(1.0, 1e-12)], 1e-5)
    )
