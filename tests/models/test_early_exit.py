"""Early-exit model, client and the federated S2 run on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Context
from flwr.app import RecordDict

from bouquet import keys
from bouquet.clients.early_exit import EarlyExitClient
from bouquet.models.early_exit import EarlyExitNet
from bouquet.models.early_exit import build_early_exit
from bouquet.models.early_exit import depth_names
from bouquet.models.early_exit import evaluate_exits
from bouquet.models.early_exit import exit_macs
from bouquet.models.early_exit import multi_exit_loss
from bouquet.models.early_exit import name_depth
from bouquet.models.nas import Architecture
from bouquet.models.nas import make_space
from bouquet.models.training import get_weights
from bouquet.models.training import set_weights
from bouquet.simulations.methods.early_exit import best_exit


def _client(model, max_depth=None, node_config=None, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40).astype(np.int64)
    client = EarlyExitClient(
        model,
        x,
        y,
        num_classes=10,
        max_depth=max_depth,
        batch_size=16,
        lr=0.05,
        **kwargs,
    )
    client.context = Context(
        run_id=1,
        node_id=1,
        node_config=node_config or {},
        state=RecordDict(),
        run_config={},
    )
    return client


def test_submodel_names_are_subsets_with_same_shapes():
    model = build_early_exit((1, 28, 28), 10, seed=0)
    full = model.state_dict()
    previous: set[str] = set()
    for d in (1, 2, 3):
        sub = model.submodel(d).state_dict()
        assert set(sub) <= set(full)
        # same order as the full model, filtered
        assert list(sub) == depth_names(model, d)
        assert previous < set(sub)  # strictly nested
        assert all(sub[n].shape == full[n].shape for n in sub)
        assert {name_depth(n) for n in sub} == set(range(d + 1))
        previous = set(sub)
    assert previous == set(full)


def test_forward_gives_one_output_per_exit():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    outs = model(torch.zeros(3, 1, 8, 8))
    assert [o.shape for o in outs] == [(3, 10)] * 3
    assert len(model.submodel(2)(torch.zeros(3, 1, 8, 8))) == 2


def test_multi_exit_loss_is_weighted_sum():
    torch.manual_seed(0)
    z = [torch.randn(4, 10) for _ in range(3)]
    y = torch.tensor([1, 2, 3, 4])
    ce = [torch.nn.functional.cross_entropy(zi, y) for zi in z]
    assert torch.allclose(
        multi_exit_loss(z, y, [0.5, 1.0, 2.0]), 0.5 * ce[0] + ce[1] + 2 * ce[2]
    )
    assert torch.allclose(
        multi_exit_loss(z[:2], y, [0.5, 1.0, 2.0]), 0.5 * ce[0] + ce[1]
    )
    with pytest.raises(ValueError, match="exit_weights"):
        build_early_exit((1, 8, 8), 10, exit_weights=[1.0, 1.0])


def test_macs_and_params_grow_with_depth():
    model = build_early_exit((1, 28, 28), 10, seed=0)
    macs = exit_macs(model)
    assert len(macs) == 3 and macs[0] > 0
    assert macs[2] > macs[0]  # the deepest exit costs more than the first
    stem_conv = model.stem[0]
    # at least the stem's convolution
    assert macs[0] > 14 * 14 * stem_conv.out_channels * 9


def test_architecture_json_round_trip(tmp_path):
    space = make_space((1, 8, 8), 10)
    arch = Architecture(space, ["bottleneckx1", "basicx2", "bottleneckx2"])
    path = tmp_path / "architecture.json"
    path.write_text(json.dumps({"architecture": arch.to_dict(), "accuracy": 0.5}))
    model = build_early_exit((1, 8, 8), 10, seed=0, architecture=str(path))
    assert model.architecture.choices == arch.choices
    with pytest.raises(ValueError, match="searched for inputs"):
        build_early_exit((1, 28, 28), 10, architecture=str(path))


def test_client_trains_only_the_depth_it_received():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    client = _client(model)
    names = depth_names(model, 2)
    full = get_weights(model)
    sent = [full[n] for n in names]
    returned, n, metrics = client.fit(sent, {})
    assert n == 40 and metrics[keys.TRAINED_DEPTH] == 2
    record = client.encode_train_reply(names, sent, returned)
    assert list(record.keys()) == names  # nothing outside what arrived
    moved = [not np.array_equal(record[k].numpy(), full[k]) for k in names]
    assert all(moved)
    with pytest.raises(ValueError, match="not a sub-model"):
        client.fit(sent[:-1], {})


def test_client_with_capacity_returns_its_subset():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    client = _client(model, node_config={keys.MAX_DEPTH: 1})
    names = depth_names(model, 3)
    full = get_weights(model)
    sent = [full[n] for n in names]
    returned, _, metrics = client.fit(sent, {})
    assert metrics[keys.TRAINED_DEPTH] == 1 and metrics[keys.MAX_DEPTH] == 1
    assert len(returned) == len(names)
    record = client.encode_train_reply(names, sent, returned)
    assert list(record.keys()) == depth_names(model, 1)
    by_name = dict(zip(names, returned, strict=True))
    untouched = [n for n in names if name_depth(n) > 1]
    assert all(np.array_equal(by_name[n], full[n]) for n in untouched)


def test_client_rejects_wrong_names():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    client = _client(model)
    names = depth_names(model, 1)
    full = get_weights(model)
    sent = [full[n] for n in names]
    returned, _, _ = client.fit(sent, {})
    with pytest.raises(ValueError, match="names do not match"):
        client.encode_train_reply(list(reversed(names)), sent, returned)


def test_evaluate_exits_and_best_exit():
    model = build_early_exit((1, 8, 8), 10, seed=0)
    x = np.zeros((5, 1, 8, 8), np.float32)
    y = np.arange(5, dtype=np.int64)
    res = evaluate_exits(model, x, y)
    assert len(res["accuracy"]) == 3 and len(res["loss"]) == 3
    assert res["total_loss"] == pytest.approx(sum(res["loss"]))
    assert best_exit([0.5, 0.9, 0.9], [1.0, 0.4, 0.3]) == 3
    assert best_exit([0.5, 0.9, 0.9], [1.0, 0.3, 0.3]) == 2
    sub = EarlyExitNet(model.architecture, depth=1)
    set_weights(
        sub, {n: v for n, v in get_weights(model).items() if n in sub.state_dict()}
    )


def test_exit_cost_grows_with_depth_for_every_network_in_the_space():
    """Issue 16: stopping at exit i costs less than going on, for all N^L candidate
    networks
    (MNIST-sized and digits-sized inputs), and the intermediate exits are cheap
    heads."""
    import itertools

    from bouquet.models.early_exit import EarlyExitNet
    from bouquet.models.early_exit import exit_macs
    from bouquet.models.early_exit import exit_params
    from bouquet.models.nas import Architecture
    from bouquet.models.nas import make_space

    for shape in [(1, 28, 28), (1, 8, 8)]:
        space = make_space(shape, 10)
        ratios = []
        for choices in itertools.product(space.candidates, repeat=space.num_pools):
            model = EarlyExitNet(Architecture(space, tuple(choices)))
            macs, params = exit_macs(model), exit_params(model)
            assert all(a < b for a, b in zip(macs, macs[1:], strict=False)), (
                choices,
                macs,
            )
            assert all(a < b for a, b in zip(params, params[1:], strict=False)), (
                choices,
                params,
            )
            assert params[-1] <= sum(p.numel() for p in model.parameters())
            ratios.append(macs[0] / macs[-1])
        median = sorted(ratios)[len(ratios) // 2]
        assert max(ratios) < 1.0 and median < (0.4 if shape[1] == 28 else 0.45), (
            shape,
            median,
        )


def test_self_distillation_adds_the_exits_mutual_kl_with_fixed_teachers():
    import torch

    from bouquet.models.early_exit import multi_exit_loss

    torch.manual_seed(0)
    z = [torch.randn(8, 10, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 10, (8,))
    plain = multi_exit_loss(z, y, [1.0, 1.0, 1.0])
    assert torch.equal(multi_exit_loss(z, y, [1.0, 1.0, 1.0], distill=0.0), plain)
    kl = sum(
        torch.nn.functional.kl_div(
            torch.log_softmax(z[i], 1), torch.softmax(z[j], 1), reduction="batchmean"
        )
        for i in range(3)
        for j in range(3)
        if i != j
    )
    with_kd = multi_exit_loss(z, y, [1.0, 1.0, 1.0], distill=0.5)
    assert torch.allclose(with_kd, plain + 0.5 * kl / 2)
    # teachers are fixed: the KL term's gradient on z_0 comes only from z_0 as a student
    (g_kd,) = torch.autograd.grad(with_kd - plain, z[0])
    student = sum(
        torch.nn.functional.kl_div(
            torch.log_softmax(z[0], 1),
            torch.softmax(z[j].detach(), 1),
            reduction="batchmean",
        )
        for j in (1, 2)
    )
    (g_student,) = torch.autograd.grad(0.5 * student / 2, z[0])
    assert torch.allclose(g_kd, g_student, atol=1e-6)
    one = [z[0]]  # a single exit has nobody to learn from
    assert torch.equal(
        multi_exit_loss(one, y, [1.0], distill=1.0), multi_exit_loss(one, y, [1.0])
    )


def test_client_self_distillation_changes_training_only_when_on():
    weights = dict(get_weights(build_early_exit((1, 8, 8), 10, seed=0)))
    trained = {}
    for name, kd in (("off", 0.0), ("off again", 0.0), ("on", 1.0)):
        client = _client(build_early_exit((1, 8, 8), 10, seed=0), self_distillation=kd)
        out, _, _ = client.fit(list(weights.values()), {})
        trained[name] = out
    assert all(
        np.array_equal(a, b)
        for a, b in zip(trained["off"], trained["off again"], strict=True)
    )
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(trained["off"], trained["on"], strict=True)
    )
    with pytest.raises(ValueError, match="self_distillation"):
        _client(build_early_exit((1, 8, 8), 10, seed=0), self_distillation=-1.0)
