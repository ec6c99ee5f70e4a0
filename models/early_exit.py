"""Early-exit networks built from a searched architecture (BranchyNet-style exits).

Method S2 (cloud-edge training with NAS), model part: after the search, the server adds
a classifier branch (an *exit*) after every stage of the best network (BranchyNet,
Teerapittayanon et al., 2016, "BranchyNet: Fast Inference via Early Exiting from Deep
Neural Networks"; trained at several depths as in DepthFL, Kim et al., ICLR 2023). The
network is

    stem -> stage 1 -> ... -> stage L, with exit i reading the output of stage i,

where exits ``1..L-1`` are a 1x1 convolution to 8 channels, GroupNorm, ReLU, global
pooling and a linear layer (:func:`exit_head`: cheap, so that stopping at exit ``i``
costs less than going on), and exit ``L`` is the network's own output layer (pooling and
a linear layer).

Parameter names are ``stem.*``, ``stages.d<i>.*`` and ``exits.d<i>.*`` (``i`` = 1..L),
so the depth-``d`` sub-model (stem, stages 1..d, exits 1..d) is exactly the subset of
the full model's names whose depth tag is ``<= d`` (:data:`DEPTH_PATTERN`; the strategy
reads the same tags). The training loss over the exits present is

.. math::

    \\mathcal{L} = \\sum_{i=1}^{d} \\lambda_i \\, \\mathrm{CE}(\\mathrm{softmax}(z_i),
        y).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bouquet.models.nas import Architecture
from bouquet.models.nas import baseline_architecture
from bouquet.models.nas import group_norm
from bouquet.models.nas import make_head
from bouquet.models.nas import make_space
from bouquet.models.nas import make_stage
from bouquet.models.nas import make_stem

# Depth tag of a parameter name (group 1); names without a tag (the stem) belong to
# every depth.
DEPTH_PATTERN = r"^(?:stages|exits)\.d(\d+)\."


def name_depth(name: str, pattern: str = DEPTH_PATTERN) -> int:
    """Depth that a parameter belongs to (0 = shared by every depth)."""
    match = re.search(pattern, name)
    return int(match.group(1)) if match else 0


def check_exit_weights(
    exit_weights: list[float] | tuple[float, ...] | None, num_exits: int
) -> list[float]:
    """The exit weights ``lambda_1..lambda_L`` (all 1.0 when ``None``).

    Raises
    ------
    ValueError
        If the length differs from the number of exits or a weight is negative / not
        finite.
    """
    if exit_weights is None:
        return [1.0] * num_exits
    weights = [float(w) for w in exit_weights]
    if (
        len(weights) != num_exits
        or any(not math.isfinite(w) or w < 0 for w in weights)
        or sum(weights) <= 0
    ):
        raise ValueError(
            f"model.exit_weights={list(exit_weights)} must be {num_exits} finite "
            "weights >= 0 with a positive sum"
        )
    return weights


EXIT_WIDTH = 8  # channels of an exit's 1x1 bottleneck
# an exit pools its bottleneck to EXIT_GRID x EXIT_GRID cells before the linear layer
EXIT_GRID = 4


def exit_head(
    width: int, num_classes: int, bottleneck: int = EXIT_WIDTH, grid: int = EXIT_GRID
) -> nn.Module:
    """An intermediate exit that costs less than the stages it skips: a 1x1 convolution
    down to ``bottleneck`` channels (DepthFL's bottleneck classifiers, reduced),
    GroupNorm, ReLU, average pooling to a ``grid x grid`` map and a linear layer. At
    stage resolution ``h x w`` it costs ``h*w*width*bottleneck +
    bottleneck*grid**2*classes`` MACs, against ``9*h*w*width**2`` for the 3x3
    convolution exit it replaces. The pooled grid keeps where features are: with global
    pooling instead, exit 1 of the searched MNIST network reached 26% after 400 central
    steps, with a 4x4 grid 93% (+1,200 MACs)."""
    mid = min(bottleneck, width)
    return nn.Sequential(
        nn.Conv2d(width, mid, 1, bias=False),
        group_norm(mid),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(grid),
        nn.Flatten(),
        nn.Linear(mid * grid * grid, num_classes),
    )


class EarlyExitNet(nn.Module):
    """Stem, the architecture's stages and one exit per stage, up to ``depth``.

    Parameters
    ----------
    architecture : Architecture
        One candidate stage per pool.
    depth : int, optional
        Build only stages and exits ``1..depth`` (default: all ``L``).
    exit_weights : list of float, optional
        ``lambda_1..lambda_L`` of the multi-exit loss (default all 1).
    """

    def __init__(
        self,
        architecture: Architecture,
        depth: int | None = None,
        exit_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        space = architecture.space
        num_exits = space.num_pools
        depth = num_exits if depth is None else int(depth)
        if not 1 <= depth <= num_exits:
            raise ValueError(f"depth={depth} must be in [1, {num_exits}]")
        self.architecture = architecture
        self.depth = depth
        self.num_exits = num_exits
        self.exit_weights = check_exit_weights(exit_weights, num_exits)
        self.stem = make_stem(space)
        self.stages = nn.ModuleDict(
            {
                f"d{i + 1}": make_stage(space, i, architecture.choices[i])
                for i in range(depth)
            }
        )
        self.exits = nn.ModuleDict({f"d{i + 1}": self._exit(i) for i in range(depth)})

    def _exit(self, i: int) -> nn.Module:
        space = self.architecture.space
        width = space.widths[i]
        if i == space.num_pools - 1:
            return make_head(width, space.num_classes)
        return exit_head(width, space.num_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit present (exit 1 first)."""
        x = self.stem(x)
        outs = []
        for key, stage in self.stages.items():
            x = stage(x)
            outs.append(self.exits[key](x))
        return outs

    def submodel(self, depth: int) -> EarlyExitNet:
        """A fresh (randomly initialised) depth-``depth`` model with the same names."""
        return EarlyExitNet(self.architecture, depth, self.exit_weights)


def depth_names(model: EarlyExitNet, depth: int) -> list[str]:
    """State names of the depth-``depth`` sub-model, in the full model's order."""
    if not 1 <= depth <= model.num_exits:
        raise ValueError(f"depth={depth} must be in [1, {model.num_exits}]")
    return [n for n in model.state_dict() if name_depth(n) <= depth]


def multi_exit_loss(
    logits: list[torch.Tensor],
    y: torch.Tensor,
    weights: list[float],
    distill: float = 0.0,
) -> torch.Tensor:
    """``sum_i lambda_i * CE(z_i, y)`` over the exits present (weights cut to their
    number), plus, with ``distill > 0``, DepthFL's mutual self-distillation (Kim et al.,
    ICLR 2023; Flower's DepthFL baseline): every exit learns from each other exit's
    softened prediction as a fixed teacher, ``distill / (d - 1) * sum_i sum_{j != i}
    KL(softmax(z_j).detach() || softmax(z_i))`` (temperature 1; the weight is ours to
    set, DepthFL's reading is 1)."""
    if len(weights) < len(logits):
        raise ValueError(f"{len(logits)} exits but only {len(weights)} exit weights")
    loss = torch.stack(
        [
            w * nn.functional.cross_entropy(z, y)
            for z, w in zip(logits, weights, strict=False)
        ]
    ).sum()
    if distill > 0 and len(logits) > 1:
        teachers = [nn.functional.softmax(z.detach(), dim=1) for z in logits]
        kl = torch.stack(
            [
                nn.functional.kl_div(
                    nn.functional.log_softmax(zi, dim=1),
                    teachers[j],
                    reduction="batchmean",
                )
                for i, zi in enumerate(logits)
                for j in range(len(logits))
                if j != i
            ]
        ).sum()
        loss = loss + distill * kl / (len(logits) - 1)
    return loss


def early_exit_loss_fn(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, distill: float = 0.0
) -> torch.Tensor:
    """A ``LossFn`` for :func:`bouquet.models.training.train`: the model's multi-exit
    loss (with ``distill``: mutual self-distillation, see :func:`multi_exit_loss`)."""
    if not isinstance(model, EarlyExitNet):
        raise ValueError(
            f"early_exit_loss_fn needs an EarlyExitNet, got {type(model).__name__}"
        )
    return multi_exit_loss(model(xb), yb, model.exit_weights, distill)


@torch.no_grad()
def evaluate_exits(
    model: EarlyExitNet, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> dict[str, Any]:
    """Loss and accuracy of every exit, and the weighted total loss, on ``(x, y)``.

    Returns
    -------
    dict
        ``{"loss": [per exit], "accuracy": [per exit], "total_loss": float}``.
    """
    n = len(y)
    if n == 0:
        raise ValueError("evaluate_exits needs at least one sample")
    model.eval()
    losses = np.zeros(model.depth)
    correct = np.zeros(model.depth)
    for start in range(0, n, batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        for i, z in enumerate(model(xb)):
            losses[i] += float(nn.functional.cross_entropy(z, yb, reduction="sum"))
            correct[i] += int((z.argmax(1) == yb).sum())
    losses /= n
    total = float(
        sum(w * loss for w, loss in zip(model.exit_weights, losses, strict=False))
    )
    return {
        "loss": losses.tolist(),
        "accuracy": (correct / n).tolist(),
        "total_loss": total,
    }


@torch.no_grad()
def exit_macs(model: EarlyExitNet, batch: int = 1) -> list[int]:
    """Multiply-accumulates of one sample up to each exit (stem + stages 1..i + exit i).

    Counted with forward hooks on every ``Conv2d`` (``out elements * in/groups * kh *
    kw``) and ``Linear`` (``in * out``); normalisation and activations are not counted.
    """
    space = model.architecture.space
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def _count(
            mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor
        ) -> None:
            if isinstance(mod, nn.Conv2d):
                k = (
                    mod.in_channels
                    // mod.groups
                    * mod.kernel_size[0]
                    * mod.kernel_size[1]
                )
                counts[name] = counts.get(name, 0) + out[0].numel() * k
            elif isinstance(mod, nn.Linear):
                counts[name] = counts.get(name, 0) + mod.in_features * mod.out_features

        return _count

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        model.eval()
        model(torch.zeros(batch, space.in_channels, space.image_size, space.image_size))
    finally:
        for h in handles:
            h.remove()
    macs = []
    for d in range(1, model.depth + 1):
        macs.append(
            sum(
                v
                for n, v in counts.items()
                if name_depth(n + ".") <= d and not _other_exit(n, d)
            )
        )
    return macs


def exit_params(model: EarlyExitNet) -> list[int]:
    """Parameters of the network up to each exit (stem + stages 1..i + exit i)."""
    out = []
    for d in range(1, model.depth + 1):
        out.append(
            sum(
                p.numel()
                for n, p in model.named_parameters()
                if name_depth(n) <= d and not _other_exit(n, d)
            )
        )
    return out


def exit_costs(model: EarlyExitNet) -> dict[str, list[int]]:
    """``params_per_exit`` and ``macs_per_exit`` of ``model`` (see :func:`exit_params`,
    :func:`exit_macs`)."""
    return {"params_per_exit": exit_params(model), "macs_per_exit": exit_macs(model)}


def _other_exit(module_name: str, depth: int) -> bool:
    """True for modules of exits ``1..depth-1`` (not on the path to exit ``depth``)."""
    match = re.match(r"^exits\.d(\d+)", module_name)
    return match is not None and int(match.group(1)) != depth


def load_architecture(path: str | Path) -> Architecture:
    """Read ``architecture.json`` written by the search (``{"architecture": {...},
    ...}``)."""
    data = json.loads(Path(path).read_text())
    return Architecture.from_dict(data.get("architecture", data))


def build_early_exit(
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int | None = None,
    *,
    name: str = "early_exit",
    architecture: str | None = None,
    exit_weights: list[float] | None = None,
    families: list[str] | tuple[str, ...] = ("basic", "bottleneck"),
    blocks_per_stage: list[int] | tuple[int, ...] = (1, 2),
    widths: list[int] | None = None,
) -> EarlyExitNet:
    """Build the full early-exit model (the ``model`` config's ``_target_``).

    ``architecture`` is the path of an ``architecture.json``; ``None`` uses the baseline
    network of the default space (BasicBlock family at the largest depth).

    Raises
    ------
    ValueError
        If ``name`` is not ``early_exit`` or the architecture does not fit the data.
    """
    if name != "early_exit":
        raise ValueError(
            f"model.name={name!r}: build_early_exit builds only 'early_exit'"
        )
    if architecture:
        arch = load_architecture(architecture)
        space = arch.space
        if (space.in_channels, space.image_size, space.num_classes) != (
            input_shape[0],
            input_shape[1],
            num_classes,
        ):
            raise ValueError(
                f"model.architecture={architecture!r} was searched for inputs "
                f"{space.in_channels}x"
                f"{space.image_size} with {space.num_classes} classes, not "
                f"{input_shape} with {num_classes}"
            )
    else:
        space = make_space(
            input_shape,
            num_classes,
            families=tuple(families),
            blocks_per_stage=tuple(blocks_per_stage),
            widths=widths,
        )
        arch = baseline_architecture(space)
    if seed is not None:
        torch.manual_seed(seed)
    return EarlyExitNet(arch, exit_weights=exit_weights)
