"""Search space, controller, reward and a short real search run (method S2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bouquet.models.nas import Architecture
from bouquet.models.nas import SuperNet
from bouquet.models.nas import baseline_architecture
from bouquet.models.nas import count_params
from bouquet.models.nas import make_space
from bouquet.models.nas import make_stage
from bouquet.models.nas import search_space_size
from bouquet.models.nas_controller import Controller
from bouquet.models.nas_controller import Reinforce
from bouquet.models.nas_controller import size_reward


def test_search_space_count_and_pools():
    space = make_space((1, 28, 28), 10)
    assert search_space_size(space) == {"N": 4, "L": 3, "count": 64}
    assert space.candidates == ("basicx1", "basicx2", "bottleneckx1", "bottleneckx2")
    three = make_space(
        (1, 8, 8), 10, families=["basic", "bottleneck"], blocks_per_stage=[1, 2, 3]
    )
    assert search_space_size(three) == {"N": 6, "L": 3, "count": 216}
    four_pools = make_space(
        (1, 28, 28), 10, blocks_per_stage=[1], widths=[8, 16, 32, 64]
    )
    assert search_space_size(four_pools) == {"N": 2, "L": 4, "count": 16}


def test_space_rejects_one_family_and_bad_widths():
    with pytest.raises(ValueError, match="families"):
        make_space((1, 28, 28), 10, families=["basic"])
    with pytest.raises(ValueError, match="widths"):
        make_space((1, 28, 28), 10, widths=[10, 20, 30])


def test_candidates_are_torchvision_blocks_and_every_network_runs():
    from torchvision.models.resnet import BasicBlock
    from torchvision.models.resnet import Bottleneck

    space = make_space((1, 8, 8), 10)
    assert isinstance(make_stage(space, 0, "basicx2")[1], BasicBlock)
    assert isinstance(make_stage(space, 2, "bottleneckx1")[0], Bottleneck)
    net = SuperNet(space)
    x = torch.zeros(2, 1, 8, 8)
    sizes = set()
    for a in range(4):
        for b in range(4):
            for c in range(4):
                assert net(x, [a, b, c]).shape == (2, 10)
                sizes.add(net.path_params([a, b, c]))
    assert len(sizes) > 10  # the networks really differ in size


def test_path_params_equal_a_standalone_network():
    space = make_space((1, 28, 28), 10)
    net = SuperNet(space)
    idx = [2, 0, 3]
    arch = Architecture.from_indices(space, idx)
    stand_alone = sum(
        count_params(make_stage(space, p, c)) for p, c in enumerate(arch.choices)
    )
    assert net.path_params(idx) == stand_alone + count_params(net.stem) + count_params(
        net.heads[3]
    )


def test_controller_sampling_is_seeded_and_reproducible():
    def draws(seed):
        ctrl = Controller(3, 4, hidden=16, seed=seed)
        return [ctrl.sample()[0] for _ in range(20)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    Controller(3, 4, seed=1).sample()
    assert torch.rand(1) == before  # the controller does not consume torch's global RNG


def test_controller_log_prob_matches_sample():
    ctrl = Controller(3, 4, seed=0)
    idx, logp, ent = ctrl.sample()
    logp2, ent2 = ctrl.log_prob(idx)
    assert torch.allclose(logp, logp2) and torch.allclose(ent, ent2)
    assert float(ent) > 0


def test_reinforce_moves_probability_towards_rewarded_choice():
    ctrl = Controller(2, 3, hidden=8, seed=0)
    rl = Reinforce(ctrl, lr=0.05, baseline_decay=0.5, entropy_weight=0.0)
    target = [2, 1]
    before = float(ctrl.log_prob(target)[0])
    for _ in range(60):
        samples = []
        for _ in range(4):
            idx, logp, ent = ctrl.sample()
            samples.append((logp, ent, 1.0 if idx == target else 0.0))
        rl.update(samples)
    assert float(ctrl.log_prob(target)[0]) > before + 1.0
    assert rl.baseline is not None


def test_size_reward_formula_and_validation():
    assert size_reward(0.9, 100, 100) == pytest.approx(0.9)
    assert size_reward(0.9, 50, 100, beta=2, w=0.07) == pytest.approx(
        0.9 * 0.5 ** (-0.14)
    )
    assert (
        size_reward(0.9, 50, 100)
        > size_reward(0.9, 100, 100)
        > size_reward(0.9, 200, 100)
    )
    for beta in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="beta"):
            size_reward(0.9, 50, 100, beta=beta)


def test_cost_reward_moves_with_beta_and_prices_each_cost():
    from bouquet.models.nas_controller import cost_reward

    assert cost_reward(0.9, {"params": 1.0, "macs": 1.0}) == pytest.approx(0.9)
    assert cost_reward(0.9, {"macs": 0.5}, beta=1) == pytest.approx(0.9 * 2**0.07)
    assert cost_reward(0.9, {"params": 0.5, "macs": 0.25}, beta=2) == pytest.approx(
        0.9 * 2**0.14 * 4**0.14
    )
    # the reward of a cheaper network grows with beta, that of a costlier one falls
    cheap = [cost_reward(0.9, {"macs": 0.5}, beta=b) for b in (1, 2, 3, 4)]
    dear = [cost_reward(0.9, {"macs": 2.0}, beta=b) for b in (1, 2, 3, 4)]
    assert (
        cheap == sorted(cheap)
        and len(set(cheap)) == 4
        and dear == sorted(dear, reverse=True)
    )
    with pytest.raises(ValueError, match="cost ratios"):
        cost_reward(0.9, {})
    with pytest.raises(ValueError, match="cost ratios"):
        cost_reward(0.9, {"macs": 0.0})


def test_beta_changes_which_network_wins():
    """A 3x cheaper network 15 points less accurate loses at beta 1-2 and wins at beta
    3-4."""
    from bouquet.models.nas_controller import cost_reward

    candidates = {"accurate": (0.90, 1.0), "cheap": (0.75, 1 / 3)}

    def winner(beta):
        return max(
            candidates,
            key=lambda k: cost_reward(
                candidates[k][0], {"macs": candidates[k][1]}, beta=beta
            ),
        )

    assert [winner(b) for b in (1, 2, 3, 4)] == [
        "accurate",
        "accurate",
        "cheap",
        "cheap",
    ]


def test_search_reward_prices_the_early_exit_models_costs():
    from bouquet.simulations.methods.search import search_settings
    from bouquet.simulations.methods.search_loop import Search
    from bouquet.simulations.methods.search_loop import network_costs

    space = make_space((1, 8, 8), 10)
    rng = np.random.default_rng(0)
    data = (
        rng.normal(size=(20, 1, 8, 8)).astype(np.float32),
        rng.integers(0, 10, 20),
        rng.normal(size=(10, 1, 8, 8)).astype(np.float32),
        rng.integers(0, 10, 10),
    )
    cheap = [space.candidates.index("basicx1")] * 3
    by_cost = {}
    for cost in ("params", "macs", "params_macs"):
        for beta in (1, 3):
            search = Search(
                space,
                data,
                search_settings({"search": {"cost": cost, "beta": beta}}),
                seed=0,
            )
            by_cost[cost, beta] = search.reward(cheap, 0.5)
    c, base = (
        network_costs(space, cheap),
        network_costs(space, [space.candidates.index("basicx2")] * 3),
    )
    assert (
        c["macs"] == pytest.approx(np.mean(c["macs_per_exit"]))
        and c["params"] < base["params"]
    )
    assert by_cost["params", 1] == pytest.approx(
        0.5 * (c["params"] / base["params"]) ** -0.07
    )
    assert by_cost["macs", 1] == pytest.approx(
        0.5 * (c["macs"] / base["macs"]) ** -0.07
    )
    assert by_cost["params_macs", 3] == pytest.approx(
        0.5
        * (c["params"] / base["params"]) ** -0.21
        * (c["macs"] / base["macs"]) ** -0.21
    )
    assert by_cost["macs", 3] > by_cost["macs", 1] > 0.5
    with pytest.raises(ValueError, match="search.cost"):
        search_settings({"search": {"cost": "latency"}})


def test_baseline_is_deepest_basic_network():
    space = make_space((1, 28, 28), 10)
    assert baseline_architecture(space).choices == ["basicx2"] * 3
    with pytest.raises(ValueError, match="candidate"):
        Architecture(space, ["basicx9", "basicx1", "basicx1"])
