"""Search space, shared-weight supernet and LSTM controller for residual-block NAS.

Method S2 (cloud-edge training with NAS), search part, after ENAS (Pham et al., 2018,
"Efficient Neural Architecture Search via Parameter Sharing", arXiv:1802.03268) with
MnasNet's accuracy-size reward (Tan et al., 2019, "MnasNet: Platform-Aware Neural
Architecture Search for Mobile", arXiv:1807.11626).

Search space
------------ ``P >= 2`` residual families (torchvision's ``BasicBlock`` and
``Bottleneck`` from ``torchvision.models.resnet``), each taken at several depths
(``blocks_per_stage``), give source networks ``ResNet(family, [b] * L)``. Every source
network is cut by stage; pool ``l`` keeps stage ``l`` of every source network, so each
pool holds ``N = P * len(blocks_per_stage)`` candidate stages, all mapping ``widths[l-1]
-> widths[l]`` channels (stride 2 from stage 2 on). A candidate network picks one
candidate per pool: ``N^L`` networks.

Widths: 28x28 inputs use a stride-2 stem of 16 channels and stages of 16/32/64 channels
(spatial 14, 7, 4); inputs smaller than 16x16 (8x8 digits) use a stride-1 stem of 8
channels and stages of 8/16/32 (spatial 8, 4, 2). Normalisation is ``GroupNorm`` (passed
to torchvision as ``norm_layer``): no running statistics, which suits federated training
on non-IID data (Hsieh et al., 2020, "The Non-IID Data Quagmire of Decentralized Machine
Learning").

The controller that samples networks of this space, the reward and REINFORCE are in
:mod:`bouquet.models.nas_controller` (:class:`Controller`, :func:`cost_reward`,
:func:`size_reward`, :class:`Reinforce`; importable from here as well).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import cast

import torch
from torch import nn

# Residual families by name; the torchvision classes are imported on first use
# (importing torchvision.models costs ~1.4 s, paid by every deployed ClientApp process
# otherwise).
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
        return cls(
            **{
                **data,
                "widths": tuple(data["widths"]),
                "candidates": tuple(data["candidates"]),
            }
        )


def parse_candidate(name: str) -> tuple[str, int]:
    """Split ``"basicx2"`` into ``("basic", 2)``, validating both parts."""
    family, _, blocks = name.rpartition("x")
    if family not in FAMILIES or not blocks.isdigit() or int(blocks) < 1:
        raise ValueError(
            f"candidate={name!r} is not '<family>x<blocks>' with family in "
            f"{sorted(FAMILIES)}"
        )
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
        For fewer than 2 families, an unknown family, blocks < 1 or widths not divisible
        by 4.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={input_shape} must be (C, H, W)")
    if len(set(families)) < 2 or any(f not in FAMILIES for f in families):
        raise ValueError(
            f"families={list(families)} must name >= 2 of {sorted(FAMILIES)}"
        )
    if not blocks_per_stage or any(int(b) < 1 for b in blocks_per_stage):
        raise ValueError(
            f"blocks_per_stage={list(blocks_per_stage)} must be a non-empty list of "
            "ints >= 1"
        )
    small = min(input_shape[1:]) < 16
    widths = tuple(int(w) for w in (widths or ((8, 16, 32) if small else (16, 32, 64))))
    if not widths or any(w < 4 or w % 4 for w in widths):
        raise ValueError(
            f"widths={list(widths)} must be positive multiples of 4 (Bottleneck "
            "expansion)"
        )
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
        nn.Conv2d(
            space.in_channels,
            space.stem_width,
            3,
            stride=space.stem_stride,
            padding=1,
            bias=False,
        ),
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
            down = nn.Sequential(
                nn.Conv2d(cin, out_ch, 1, stride=s, bias=False), group_norm(out_ch)
            )
        layers.append(
            block_cls(cin, planes, stride=s, downsample=down, norm_layer=group_norm)
        )
    return nn.Sequential(*layers)


def make_head(channels: int, num_classes: int) -> nn.Sequential:
    """Output layer: global average pooling and a linear classifier."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)
    )


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass
class Architecture:
    """A network of the space: one candidate name per pool."""

    space: SearchSpace
    choices: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.choices) != self.space.num_pools:
            raise ValueError(
                f"architecture has {len(self.choices)} choices, the space has "
                f"{self.space.num_pools} pools"
            )
        for c in self.choices:
            if c not in self.space.candidates:
                raise ValueError(
                    f"choice {c!r} is not a candidate; allowed: "
                    f"{', '.join(self.space.candidates)}"
                )

    @classmethod
    def from_indices(cls, space: SearchSpace, indices: list[int]) -> Architecture:
        return cls(space, [space.candidates[i] for i in indices])

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(SearchSpace.from_dict(data["space"]), list(data["choices"]))


def baseline_architecture(space: SearchSpace) -> Architecture:
    """The baseline network: the BasicBlock family at its largest depth in every
    pool."""
    basic = [c for c in space.candidates if parse_candidate(c)[0] == "basic"]
    pool = basic or list(space.candidates)
    best = max(pool, key=lambda c: parse_candidate(c)[1])
    return Architecture(space, [best] * space.num_pools)


class SuperNet(nn.Module):
    """Shared weights (ENAS): a stem, every candidate stage of every pool, and one
    output layer per candidate of the last pool (a stand-alone network's output layer
    follows its last stage)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.stem = make_stem(space)
        self.pools = nn.ModuleList(
            nn.ModuleList(make_stage(space, p, c) for c in space.candidates)
            for p in range(space.num_pools)
        )
        # one output layer per candidate of the last pool: the candidates' features are
        # unrelated
        self.heads = nn.ModuleList(
            make_head(space.widths[-1], space.num_classes) for _ in space.candidates
        )

    def forward(self, x: torch.Tensor, indices: list[int]) -> torch.Tensor:
        if len(indices) != self.space.num_pools:
            raise ValueError(
                f"indices={indices} must pick one candidate in each of "
                f"{self.space.num_pools} pools"
            )
        x = self.stem(x)
        for stage in self._stages(indices):
            x = stage(x)
        return self.heads[indices[-1]](x)

    def _stages(self, indices: list[int]) -> list[nn.Module]:
        """The candidate ``indices`` picks in each pool, in order."""
        return [
            cast(nn.ModuleList, pool)[i]
            for pool, i in zip(self.pools, indices, strict=True)
        ]

    def path_params(self, indices: list[int]) -> int:
        """Parameters of the stand-alone network picked by ``indices``."""
        stages = sum(count_params(stage) for stage in self._stages(indices))
        return count_params(self.stem) + stages + count_params(self.heads[indices[-1]])
