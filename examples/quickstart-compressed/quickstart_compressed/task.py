"""Model, data and training loop (offline: scikit-learn's bundled 8x8 digits)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bouquet.data import label_histogram
from bouquet.data import load_dataset
from bouquet.data import partition_indices


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_data(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """This node's Dirichlet(0.5) share of the digits training set."""
    ds = load_dataset("digits")
    parts = partition_indices(
        ds.y_train, num_partitions, kind="dirichlet", alpha=0.5, seed=0
    )
    idx = parts[partition_id]
    return ds.x_train[idx], ds.y_train[idx]


def test_data() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("digits")
    return ds.x_test, ds.y_test


def train(net: Net, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(
                net(torch.from_numpy(x[i : i + 32])), torch.from_numpy(y[i : i + 32])
            )
            loss.backward()
            opt.step()
    return float(loss.detach())


def evaluate(net: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
        return float(nn.functional.cross_entropy(logits, torch.from_numpy(y))), float(
            (logits.argmax(1).numpy() == y).mean()
        )


def histogram(y: np.ndarray) -> list[float]:
    return [float(v) for v in label_histogram(y, 10)]
