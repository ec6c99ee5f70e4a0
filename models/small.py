"""Small models for the spine: an MLP for 8x8 digits and the LeNet-style CNN for 28x28
images.

LeNet-style CNN (LeCun et al., 1998, as used by niid_bench / Li et al. 2022, "Federated
learning on non-IID data silos: an experimental study"): conv(6, k5) - ReLU -
maxpool(2) - conv(16, k5) - ReLU - maxpool(2) - fc(120) - ReLU - fc(84) - ReLU -
fc(classes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODELS = ("auto", "mlp", "lenet", "cnn_bn")


class MLP(nn.Module):
    """Two-hidden-layer perceptron on flattened inputs."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or hidden < 1:
            raise ValueError(
                "MLP needs in_features>=1, num_classes>=2, hidden>=1; got "
                f"{in_features}, {num_classes}, {hidden}"
            )
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-style CNN: two conv layers (6 and 16 channels, kernel 5), three linear
    layers."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(
                f"LeNet needs image_size >= 16, got {image_size} (use model=mlp)"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = ((image_size - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BatchNormCNN(nn.Module):
    """A small CNN with BatchNorm: conv 16 - BN - ReLU - pool - conv 32 - BN - ReLU -
    global pool
    - linear. Its BatchNorm buffers include the 0-d int64 ``num_batches_tracked`` that
      every
    BatchNorm model carries (any input size >= 2x2)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 64,
    seed: int | None = None,
) -> nn.Module:
    """Build a model by name for inputs of ``input_shape`` (C, H, W).

    ``auto`` picks the MLP for inputs smaller than 16x16 and the LeNet CNN otherwise.
    With ``seed``, the initial weights are reproducible.
    """
    if name not in MODELS:
        raise ValueError(
            f"model.name={name!r} is unknown; allowed: {', '.join(MODELS)}"
        )
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={input_shape} must be (C, H, W)")
    if name == "auto":
        name = "mlp" if min(input_shape[1:]) < 16 else "lenet"
    if seed is not None:
        torch.manual_seed(seed)
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes, hidden)
    if name == "cnn_bn":
        return BatchNormCNN(input_shape[0], num_classes)
    return LeNet(input_shape[0], num_classes, input_shape[1])
