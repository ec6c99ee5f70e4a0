"""Shared train / evaluate loops and conversions between torch models and numpy
arrays."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def get_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The model's state as ``name -> float32 numpy array`` (copies, in state_dict
    order)."""
    return OrderedDict(
        (k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items()
    )


def set_weights(
    model: nn.Module, weights: dict[str, np.ndarray] | list[np.ndarray]
) -> None:
    """Load arrays (by name, or a list in state_dict order) into ``model``.

    Raises
    ------
    ValueError
        On missing/extra names, a wrong count, or a shape mismatch (naming the tensor).
    """
    state = model.state_dict()
    if isinstance(weights, list):
        if len(weights) != len(state):
            raise ValueError(
                f"got {len(weights)} arrays, model has {len(state)} tensors"
            )
        weights = dict(zip(state.keys(), weights, strict=True))
    missing = set(state) - set(weights)
    extra = set(weights) - set(state)
    if missing or extra:
        raise ValueError(
            f"array names do not match the model: missing {sorted(missing)}, extra "
            f"{sorted(extra)}"
        )
    new_state = OrderedDict()
    for name, ref in state.items():
        arr = np.asarray(weights[name])
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(
                f"tensor {name!r}: shape {arr.shape} != model shape {tuple(ref.shape)}"
            )
        new_state[name] = torch.as_tensor(arr, dtype=ref.dtype)
    model.load_state_dict(new_state, strict=True)


# type: ignore[no-untyped-def]
def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None = None,
):
    """Yield ``(x_batch, y_batch)`` torch tensors."""
    n = len(y)
    order = (rng or np.random.default_rng()).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(
    model: nn.Module, xb: torch.Tensor, yb: torch.Tensor
) -> torch.Tensor:
    """Default loss: cross entropy of the model's logits."""
    return nn.functional.cross_entropy(model(xb), yb)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    loss_fn: LossFn = cross_entropy_loss,
    proximal: tuple[float, dict[str, torch.Tensor]] | None = None,
    steps: int | None = None,
) -> float:
    """Train with SGD (momentum) and return the mean training loss over the last epoch.

    ``proximal=(mu, reference)`` adds ``mu/2 * ||w - w_ref||^2`` (FedProx / a
    server-side proximal adjustment). ``steps`` (instead of ``epochs``): exactly that
    many batches, drawn from seeded reshuffles of the data (``steps=1`` with
    ``momentum=0`` is one SGD iteration); the loss returned is then the mean over those
    steps.
    """
    if epochs < 0 or batch_size < 1 or lr <= 0 or (steps is not None and steps < 1):
        raise ValueError(
            f"bad training settings: epochs={epochs}, steps={steps}, "
            f"batch_size={batch_size}, lr={lr}"
        )
    if steps is not None:
        return _train_steps(
            model,
            x,
            y,
            steps,
            batch_size,
            lr,
            momentum,
            weight_decay,
            seed,
            loss_fn,
            proximal,
        )
    if len(y) == 0 or epochs == 0:
        return float("nan")
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    rng = np.random.default_rng(seed)
    model.train()
    last = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in iterate_batches(x, y, batch_size, shuffle=True, rng=rng):
            opt.zero_grad()
            loss = loss_fn(model, xb, yb)
            if proximal is not None and proximal[0] > 0:
                mu, ref = proximal
                prox = sum(
                    ((p - ref[n]) ** 2).sum()
                    for n, p in model.named_parameters()
                    if n in ref
                )
                loss = loss + 0.5 * mu * prox
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1024
) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` of ``model`` on ``(x, y)``."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    total_loss, correct = 0.0, 0
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        logits = model(xb)
        total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return total_loss / len(y), correct / len(y)


def _train_steps(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    loss_fn: LossFn,
    proximal: tuple[float, dict[str, torch.Tensor]] | None,
) -> float:
    """``steps`` SGD steps on batches of seeded reshuffles (see :func:`train`)."""
    if len(y) == 0:
        return float("nan")
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    rng = np.random.default_rng(seed)
    model.train()
    total, count, done = 0.0, 0, 0
    while done < steps:
        for xb, yb in iterate_batches(x, y, batch_size, shuffle=True, rng=rng):
            opt.zero_grad()
            loss = loss_fn(model, xb, yb)
            if proximal is not None and proximal[0] > 0:
                mu, ref = proximal
                loss = loss + 0.5 * mu * sum(
                    ((p - ref[n]) ** 2).sum()
                    for n, p in model.named_parameters()
                    if n in ref
                )
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(yb)
            count += len(yb)
            done += 1
            if done == steps:
                break
    return total / max(count, 1)
