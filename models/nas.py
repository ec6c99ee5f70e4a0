"""Search space, shared-weight supernet and LSTM controller for residual-block NAS.

Method S2 (cloud-edge training with NAS), search part, after ENAS (Pham et al., 2018,
"Efficient Neural Architecture Search via Parameter Sharing", arXiv:1802.03268) with
MnasNet's accuracy-size reward (Tan et al., 2019, "MnasNet: Platform-Aware Neural
Architecture Search for Mobile", arXiv:1807.11626).

Search space
------------
``P >= 2`` residual families (torchvision's ``BasicBlock`` and ``Bottleneck`` from
``torchvision.models.resnet``), each taken at several depths (``blocks_per_stage``), give source
networks ``ResNet(family, [b] * L)``. Every source network is cut by stage; pool ``l`` keeps
stage ``l`` of every source network, so each pool holds ``N = P * len(blocks_per_stage)``
candidate stages, all mapping ``widths[l-1] -> widths[l]`` channels (stride 2 from stage 2 on).
A candidate network picks one candidate per pool: ``N^L`` networks.

Widths: 28x28 inputs use a stride-2 stem of 16 channels and stages of 16/32/64 channels
(spatial 14, 7, 4); inputs smaller than 16x16 (8x8 digits) use a stride-1 stem of 8 channels
and stages of 8/16/32 (spatial 8, 4, 2). Normalisation is ``GroupNorm`` (passed to torchvision
as ``norm_layer``): no running statistics, which suits federated training on non-IID data
(Hsieh et al., 2020, "The Non-IID Data Quagmire of Decentralized Machine Learning").

Reward
------
With validation accuracy :math:`Acc(h)` measured with the shared weights and :math:`c(h)` the
costs of the *early-exit model* built on network :math:`h` (``search.cost``: its parameters, its
MACs averaged over the exits, i.e. a device's expected compute when depths are drawn uniformly,
or both), against :math:`C` the same costs of the baseline network (by default the BasicBlock
family at the largest depth):

.. math::

    R(h) = Acc(h) \\cdot \\prod_{c} \\left(\\frac{c(h)}{C}\\right)^{-\\beta w},
    \\qquad \\beta \\in \\{1, 2, \\dots\\},\\; w > 0

so that a cheaper network than the baseline earns a bonus and a costlier one a penalty
(MnasNet's soft constraint with :math:`w = 0.07`, scaled by the integer exponent
:math:`\\beta` of the method; pricing MACs and both costs is our reading). Scale: a network
:math:`k` times cheaper in one priced cost gains a factor :math:`k^{\\beta w}`: with
:math:`w = 0.07`, a 2x cheaper network gains 5% at :math:`\\beta = 1`, 10% at 2, 21% at 4,
so :math:`\\beta` decides whether a few points of shared-weight accuracy are worth a halving of
the cost. The controller is trained by REINFORCE with a moving-average
baseline :math:`b \\leftarrow \\gamma b + (1 - \\gamma) R`:

.. math::

    \\nabla J = (R - b) \\nabla \\log \\pi(h) + \\eta \\nabla H(\\pi).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# Residual families by name; the torchvision classes are imported on first use (importing
# torchvision.models costs ~1.4 s, paid by every deployed ClientApp process otherwise).
FAMILIES: dict[str, str] = {"basic": "BasicBlock", "bottleneck": "Bottleneck"}


def family_class(family: str) -> type[nn.Module]:
    """torchvision's residual block class of ``family``."""
    from torchvision.models import resnet

    cls: type[nn.Module] = getattr(resnet, FAMILIES[family])
    return cls


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


@dataclass(frozen=True)
class SearchSpace:
    """The stem, the widths and the candidate list shared by every pool.

    Attributes
    ----------
    in_channels, image_size, num_classes : int
        Input channels, input side and number of classes.
    stem_width, stem_stride : int
        Output channels and stride of the 3x3 input convolution.
    widths : tuple of int
        Output channels of each stage (``L = len(widths)``).
    candidates : tuple of str
        Candidate names ``"<family>x<blocks>"`` (the same list in every pool).
    """

    in_channels: int
    image_size: int
    num_classes: int
    stem_width: int
    stem_stride: int
    widths: tuple[int, ...]
    candidates: tuple[str, ...]

    @property
    def num_pools(self) -> int:
        return len(self.widths)

    @property
    def num_candidates(self) -> int:
        return len(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        return cls(**{**data, "widths": tuple(data["widths"]), "candidates": tuple(data["candidates"])})


def parse_candidate(name: str) -> tuple[str, int]:
    """Split ``"basicx2"`` into ``("basic", 2)``, validating both parts."""
    family, _, blocks = name.rpartition("x")
    if family not in FAMILIES or not blocks.isdigit() or int(blocks) < 1:
        raise ValueError(f"candidate={name!r} is not '<family>x<blocks>' with family in {sorted(FAMILIES)}")
    return family, int(blocks)


def make_space(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    families: tuple[str, ...] | list[str] = ("basic", "bottleneck"),
    blocks_per_stage: tuple[int, ...] | list[int] = (1, 2),
    widths: tuple[int, ...] | list[int] | None = None,
) -> SearchSpace:
    """Build the search space for inputs of ``input_shape`` (C, H, W).

    Raises
    ------
    ValueError
        For fewer than 2 families, an unknown family, blocks < 1 or widths not divisible by 4.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={input_shape} must be (C, H, W)")
    if len(set(families)) < 2 or any(f not in FAMILIES for f in families):
        raise ValueError(f"families={list(families)} must name >= 2 of {sorted(FAMILIES)}")
    if not blocks_per_stage or any(int(b) < 1 for b in blocks_per_stage):
        raise ValueError(f"blocks_per_stage={list(blocks_per_stage)} must be a non-empty list of ints >= 1")
    small = min(input_shape[1:]) < 16
    widths = tuple(int(w) for w in (widths or ((8, 16, 32) if small else (16, 32, 64))))
    if not widths or any(w < 4 or w % 4 for w in widths):
        raise ValueError(f"widths={list(widths)} must be positive multiples of 4 (Bottleneck expansion)")
    candidates = tuple(f"{f}x{int(b)}" for f in families for b in blocks_per_stage)
    return SearchSpace(
        in_channels=int(input_shape[0]),
        image_size=int(input_shape[1]),
        num_classes=int(num_classes),
        stem_width=widths[0],
        stem_stride=1 if small else 2,
        widths=widths,
        candidates=candidates,
    )


def search_space_size(space: SearchSpace) -> dict[str, int]:
    """``{"N": candidates per pool, "L": pools, "count": N ** L}``."""
    n, L = space.num_candidates, space.num_pools
    return {"N": n, "L": L, "count": n**L}


def make_stem(space: SearchSpace) -> nn.Sequential:
    """3x3 convolution, GroupNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(space.in_channels, space.stem_width, 3, stride=space.stem_stride, padding=1, bias=False),
        group_norm(space.stem_width),
        nn.ReLU(inplace=True),
    )


def stage_channels(space: SearchSpace, pool: int) -> tuple[int, int, int]:
    """``(in_channels, out_channels, stride)`` of pool ``pool`` (0-based)."""
    in_ch = space.stem_width if pool == 0 else space.widths[pool - 1]
    return in_ch, space.widths[pool], 1 if pool == 0 else 2


def make_stage(space: SearchSpace, pool: int, candidate: str) -> nn.Sequential:
    """One candidate stage: ``blocks`` torchvision residual blocks of ``family``."""
    family, blocks = parse_candidate(candidate)
    block_cls = family_class(family)
    in_ch, out_ch, stride = stage_channels(space, pool)
    planes = out_ch // getattr(block_cls, "expansion", 1)
    layers: list[nn.Module] = []
    for i in range(blocks):
        cin, s = (in_ch, stride) if i == 0 else (out_ch, 1)
        down = None
        if s != 1 or cin != out_ch:
            down = nn.Sequential(nn.Conv2d(cin, out_ch, 1, stride=s, bias=False), group_norm(out_ch))
        layers.append(block_cls(cin, planes, stride=s, downsample=down, norm_layer=group_norm))
    return nn.Sequential(*layers)


def make_head(channels: int, num_classes: int) -> nn.Sequential:
    """Output layer: global average pooling and a linear classifier."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Architecture:
    """A network of the space: one candidate name per pool."""

    space: SearchSpace
    choices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.choices) != self.space.num_pools:
            raise ValueError(f"architecture has {len(self.choices)} choices, the space has {self.space.num_pools} pools")
        for c in self.choices:
            if c not in self.space.candidates:
                raise ValueError(f"choice {c!r} is not a candidate; allowed: {', '.join(self.space.candidates)}")

    @classmethod
    def from_indices(cls, space: SearchSpace, indices: list[int]) -> Architecture:
        return cls(space, [space.candidates[i] for i in indices])

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(SearchSpace.from_dict(data["space"]), list(data["choices"]))


def baseline_architecture(space: SearchSpace) -> Architecture:
    """The baseline network: the BasicBlock family at its largest depth in every pool."""
    basic = [c for c in space.candidates if parse_candidate(c)[0] == "basic"]
    pool = basic or list(space.candidates)
    best = max(pool, key=lambda c: parse_candidate(c)[1])
    return Architecture(space, [best] * space.num_pools)


class SuperNet(nn.Module):
    """Shared weights (ENAS): a stem, every candidate stage of every pool, and one output layer
    per candidate of the last pool (a stand-alone network's output layer follows its last stage)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.stem = make_stem(space)
        self.pools = nn.ModuleList(
            nn.ModuleList(make_stage(space, p, c) for c in space.candidates) for p in range(space.num_pools)
        )
        # one output layer per candidate of the last pool: the candidates' features are unrelated
        self.heads = nn.ModuleList(make_head(space.widths[-1], space.num_classes) for _ in space.candidates)

    def forward(self, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
        if len(indices) != self.space.num_pools:
            raise ValueError(f"indices={indices} must pick one candidate in each of {self.space.num_pools} pools")
        x = self.stem(x)
        for pool, i in zip(self.pools, indices, strict=True):
            x = pool[i](x)
        return self.heads[indices[-1]](x)

    def path_params(self, indices: list[int]) -> int:
        """Parameters of the stand-alone network picked by ``indices``."""
        stages = sum(count_params(pool[i]) for pool, i in zip(self.pools, indices, strict=True))
        return count_params(self.stem) + stages + count_params(self.heads[indices[-1]])


class Controller(nn.Module):
    """ENAS LSTM controller: one step per pool, each emitting a candidate index.

    Sampling uses the controller's own ``torch.Generator`` (seeded), so a sequence of samples
    is reproducible for a given seed and does not touch torch's global RNG.
    """

    def __init__(self, num_pools: int, num_candidates: int, *, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        if num_pools < 1 or num_candidates < 2 or hidden < 1:
            raise ValueError(f"controller needs num_pools>=1, num_candidates>=2, hidden>=1; got {num_pools}, {num_candidates}, {hidden}")
        self.num_pools = num_pools
        self.num_candidates = num_candidates
        with torch.random.fork_rng(devices=[]):  # leave torch's global RNG untouched
            self.embed = nn.Embedding(num_candidates + 1, hidden)  # last index: start token
            self.lstm = nn.LSTMCell(hidden, hidden)
            self.decoders = nn.ModuleList(nn.Linear(hidden, num_candidates) for _ in range(num_pools))
        init = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.1, 0.1, generator=init)  # ENAS initialisation
        self.generator = torch.Generator().manual_seed(seed + 1)

    def _logits(self, indices: list[int] | None) -> tuple[list[torch.Tensor], list[int]]:
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
        """Sample one architecture: ``(indices, log_prob, entropy)`` (differentiable)."""
        logits, chosen = self._logits(None)
        return chosen, *self._score(logits, chosen)

    def log_prob(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob, entropy)`` of given ``indices``."""
        logits, chosen = self._logits(indices)
        return self._score(logits, chosen)

    @staticmethod
    def _score(logits: list[torch.Tensor], chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.stack([torch.log_softmax(z, -1)[i] for z, i in zip(logits, chosen, strict=True)]).sum()
        ent = torch.stack([-(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum() for z in logits]).sum()
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


def cost_reward(accuracy: float, cost_ratios: dict[str, float], *, beta: int = 1, w: float = 0.07) -> float:
    """``Acc * prod_c (cost_c / baseline_c) ** (-beta * w)`` over the priced costs (module docstring).

    ``cost_ratios`` maps each priced cost (``params``, ``macs``) to its ratio against the baseline.

    Raises
    ------
    ValueError
        If ``beta`` is not a positive integer, ``w < 0``, no cost is priced or a ratio is not positive.
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


def size_reward(accuracy: float, params: int, baseline_params: int, *, beta: int = 1, w: float = 0.07) -> float:
    """MnasNet-style reward ``Acc * (p_h / P) ** (-beta * w)``: :func:`cost_reward` on parameters only.

    Raises
    ------
    ValueError
        If ``beta`` is not a positive integer, ``w < 0`` or a parameter count is not positive.
    """
    if params <= 0 or baseline_params <= 0:
        raise ValueError(f"parameter counts must be > 0; got p_h={params}, P={baseline_params}")
    return cost_reward(accuracy, {"params": params / baseline_params}, beta=beta, w=w)


class Reinforce:
    """REINFORCE with a moving-average baseline and an entropy bonus for a :class:`Controller`."""

    def __init__(
        self, controller: Controller, *, lr: float = 3.5e-3, baseline_decay: float = 0.9, entropy_weight: float = 1e-3
    ) -> None:
        if not 0.0 <= baseline_decay < 1.0:
            raise ValueError(f"search.baseline_decay={baseline_decay} must be in [0, 1)")
        if lr <= 0:
            raise ValueError(f"search.controller_lr={lr} must be > 0")
        self.controller = controller
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr)
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.baseline: float | None = None

    def update(self, samples: list[tuple[torch.Tensor, torch.Tensor, float]]) -> dict[str, float]:
        """One gradient step from ``(log_prob, entropy, reward)`` samples; returns diagnostics."""
        if not samples:
            raise ValueError("Reinforce.update needs at least one sample")
        losses, advantages = [], []
        for logp, ent, reward in samples:
            self.baseline = reward if self.baseline is None else (
                self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
            )
            adv = reward - self.baseline
            advantages.append(adv)
            losses.append(-adv * logp - self.entropy_weight * ent)
        loss = torch.stack(losses).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"controller_loss": float(loss.detach()), "baseline": float(self.baseline or 0.0),
                "advantage": sum(advantages) / len(advantages)}
