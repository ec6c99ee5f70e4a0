"""LSTM controller, accuracy-cost reward and REINFORCE for the residual-block NAS.

Method S2 (cloud-edge training with NAS), the search's policy part: an ENAS controller
(Pham et al., 2018, "Efficient Neural Architecture Search via Parameter Sharing",
arXiv:1802.03268) picks one candidate per pool of the search space of
:mod:`bouquet.models.nas`, rewarded with MnasNet's accuracy-size trade-off (Tan et al.,
2019, "MnasNet: Platform-Aware Neural Architecture Search for Mobile",
arXiv:1807.11626).

Reward
------
With validation accuracy :math:`Acc(h)` measured with the shared weights and
:math:`c(h)` the costs of the *early-exit model* built on network :math:`h`
(``search.cost``: its parameters, its MACs averaged over the exits, i.e. a device's
expected compute when depths are drawn uniformly, or both), against :math:`C` the same
costs of the baseline network (by default the BasicBlock family at the largest depth):

.. math::

    R(h) = Acc(h) \\cdot \\prod_{c} \\left(\\frac{c(h)}{C}\\right)^{-\\beta w},
    \\qquad \\beta \\in \\{1, 2, \\dots\\},\\; w > 0

so that a cheaper network than the baseline earns a bonus and a costlier one a penalty
(MnasNet's soft constraint with :math:`w = 0.07`, scaled by the integer exponent
:math:`\\beta` of the method; pricing MACs and both costs is our reading). Scale: a
network :math:`k` times cheaper in one priced cost gains a factor :math:`k^{\\beta w}`:
with :math:`w = 0.07`, a 2x cheaper network gains 5% at :math:`\\beta = 1`, 10% at 2,
21% at 4, so :math:`\\beta` decides whether a few points of shared-weight accuracy are
worth a halving of the cost. The controller is trained by REINFORCE with a
moving-average baseline :math:`b \\leftarrow \\gamma b + (1 - \\gamma) R`:

.. math::

    \\nabla J = (R - b) \\nabla \\log \\pi(h) + \\eta \\nabla H(\\pi).
"""

from __future__ import annotations

import torch
from torch import nn


class Controller(nn.Module):
    """ENAS LSTM controller: one step per pool, each emitting a candidate index.

    Sampling uses the controller's own ``torch.Generator`` (seeded), so a sequence of
    samples is reproducible for a given seed and does not touch torch's global RNG.
    """

    def __init__(
        self, num_pools: int, num_candidates: int, *, hidden: int = 32, seed: int = 0
    ) -> None:
        super().__init__()
        if num_pools < 1 or num_candidates < 2 or hidden < 1:
            raise ValueError(
                "controller needs num_pools>=1, num_candidates>=2, hidden>=1; got "
                f"{num_pools}, {num_candidates}, {hidden}"
            )
        self.num_pools = num_pools
        self.num_candidates = num_candidates
        with torch.random.fork_rng(devices=[]):  # leave torch's global RNG untouched
            # last index: start token
            self.embed = nn.Embedding(num_candidates + 1, hidden)
            self.lstm = nn.LSTMCell(hidden, hidden)
            self.decoders = nn.ModuleList(
                nn.Linear(hidden, num_candidates) for _ in range(num_pools)
            )
        init = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.1, 0.1, generator=init)  # ENAS initialisation
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _logits(
        self, indices: list[int] | None
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Run the LSTM; sample the choices unless ``indices`` are given."""
        inp = self.embed(torch.tensor([self.num_candidates]))
        state = None
        all_logits, chosen = [], []
        for pool in range(self.num_pools):
            h, c = self.lstm(inp, state)
            state = (h, c)
            logits = self.decoders[pool](h)[0]
            if indices is None:
                probs = torch.softmax(logits.detach(), dim=-1)
                idx = int(torch.multinomial(probs, 1, generator=self.generator))
            else:
                idx = int(indices[pool])
            all_logits.append(logits)
            chosen.append(idx)
            inp = self.embed(torch.tensor([idx]))
        return all_logits, chosen

    def sample(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample one architecture: ``(indices, log_prob, entropy)``
        (differentiable)."""
        logits, chosen = self._logits(None)
        return chosen, *self._score(logits, chosen)

    def log_prob(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob, entropy)`` of given ``indices``."""
        logits, chosen = self._logits(indices)
        return self._score(logits, chosen)

    @staticmethod
    def _score(
        logits: list[torch.Tensor], chosen: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.stack(
            [torch.log_softmax(z, -1)[i] for z, i in zip(logits, chosen, strict=True)]
        ).sum()
        ent = torch.stack(
            [-(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum() for z in logits]
        ).sum()
        return logp, ent

    @torch.no_grad()
    def greedy(self) -> list[int]:
        """The most likely architecture (argmax at each step)."""
        inp = self.embed(torch.tensor([self.num_candidates]))
        state, chosen = None, []
        for pool in range(self.num_pools):
            state = self.lstm(inp, state)
            idx = int(self.decoders[pool](state[0])[0].argmax())
            chosen.append(idx)
            inp = self.embed(torch.tensor([idx]))
        return chosen


def cost_reward(
    accuracy: float, cost_ratios: dict[str, float], *, beta: int = 1, w: float = 0.07
) -> float:
    """``Acc * prod_c (cost_c / baseline_c) ** (-beta * w)`` over the priced costs
    (module docstring).

    ``cost_ratios`` maps each priced cost (``params``, ``macs``) to its ratio against
    the baseline.

    Raises
    ------
    ValueError
        If ``beta`` is not a positive integer, ``w < 0``, no cost is priced or a ratio
        is not positive.
    """
    if isinstance(beta, bool) or int(beta) != beta or beta < 1:
        raise ValueError(f"search.beta={beta!r} must be a positive integer")
    if w < 0:
        raise ValueError(f"search.w={w} must be >= 0")
    if not cost_ratios or any(not r > 0 for r in cost_ratios.values()):
        raise ValueError(f"cost ratios must be > 0, got {cost_ratios}")
    reward = float(accuracy)
    for ratio in cost_ratios.values():
        reward *= float(ratio) ** (-int(beta) * w)
    return reward


def size_reward(
    accuracy: float,
    params: int,
    baseline_params: int,
    *,
    beta: int = 1,
    w: float = 0.07,
) -> float:
    """MnasNet-style reward ``Acc * (p_h / P) ** (-beta * w)``: :func:`cost_reward` on
    parameters only.

    Raises
    ------
    ValueError
        If ``beta`` is not a positive integer, ``w < 0`` or a parameter count is not
        positive.
    """
    if params <= 0 or baseline_params <= 0:
        raise ValueError(
            f"parameter counts must be > 0; got p_h={params}, P={baseline_params}"
        )
    return cost_reward(accuracy, {"params": params / baseline_params}, beta=beta, w=w)


class Reinforce:
    """REINFORCE with a moving-average baseline and an entropy bonus for a
    :class:`Controller`."""

    def __init__(
        self,
        controller: Controller,
        *,
        lr: float = 3.5e-3,
        baseline_decay: float = 0.9,
        entropy_weight: float = 1e-3,
    ) -> None:
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(
                f"search.baseline_decay={baseline_decay} must be in [0, 1)"
            )
        if lr <= 0:
            raise ValueError(f"search.controller_lr={lr} must be > 0")
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.baseline: float | None = None

    def update(
        self, samples: list[tuple[torch.Tensor, torch.Tensor, float]]
    ) -> dict[str, float]:
        """One gradient step from ``(log_prob, entropy, reward)`` samples; returns
        diagnostics."""
        if not samples:
            raise ValueError("Reinforce.update needs at least one sample")
        losses, advantages = [], []
        for logp, ent, reward in samples:
            self.baseline = (
                reward
                if self.baseline is None
                else (
                    self.baseline_decay * self.baseline
                    + (1 - self.baseline_decay) * reward
                )
            )
            adv = reward - self.baseline
            advantages.append(adv)
            losses.append(-adv * logp - self.entropy_weight * ent)
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {
            "controller_loss": float(loss.detach()),
            "baseline": float(self.baseline or 0.0),
            "advantage": sum(advantages) / len(advantages),
        }
