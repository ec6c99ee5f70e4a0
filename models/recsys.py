"""Biased matrix factorisation with a shared item side and a private user side.

Koren, Bell & Volinsky, "Matrix Factorization Techniques for Recommender Systems", IEEE
Computer 2009; federated split as in Ammad-ud-din et al., "Federated Collaborative
Filtering for Privacy-Preserving Personalized Recommendation System", arXiv:1901.09888
(2019): the item factors are aggregated by the server, the user factors never leave the
device that owns the user.

.. math::

    \\hat r_{ui} = \\mu + b_u + b_i + p_u^\\top q_i, \\qquad
    \\mathcal{L} = \\frac{1}{|B|} \\sum_{(u,i) \\in B} (r_{ui} - \\hat r_{ui})^2
        + \\lambda \\left(\\lVert p_u \\rVert^2 + \\lVert q_i \\rVert^2\\right)

Parameter names make the split explicit: everything under ``shared.`` (``mu``, item
biases ``b_i``, item factors ``q_i``) is sent to and aggregated by the server;
everything under ``private.`` (user biases ``b_u``, user factors ``p_u``) stays on the
client.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from bouquet.checks import require_integer
from bouquet.checks import require_number

SHARED_PREFIX = "shared."
PRIVATE_PREFIX = "private."
RECSYS_MODELS = ("mf",)


class _Shared(nn.Module):
    def __init__(
        self, num_items: int, dim: int, init_std: float, mu: float, gen: torch.Generator
    ) -> None:
        super().__init__()
        self.global_bias = nn.Parameter(torch.tensor([mu], dtype=torch.float32))
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.item_emb = nn.Parameter(
            torch.randn(num_items, dim, generator=gen) * init_std
        )


class _Private(nn.Module):
    def __init__(self, num_users: int, dim: int) -> None:
        super().__init__()
        self.user_bias = nn.Parameter(torch.zeros(num_users))
        self.user_emb = nn.Parameter(torch.zeros(num_users, dim))


class MatrixFactorization(nn.Module):
    """Biased MF over ``num_items`` catalogue items and ``num_users`` *local* users.

    Parameters
    ----------
    num_items : int
        Catalogue size (public).
    num_users : int
        Users held locally (0 on the server, which needs only the shared part).
    dim : int
        Latent dimension.
    init_std : float
        Standard deviation of the initial factors.
    mu : float
        Initial global bias (a prior on the rating scale, not computed from data).
    seed : int
        Seeds the item factors (the shared initialisation).
    """

    def __init__(
        self,
        num_items: int,
        num_users: int = 0,
        *,
        dim: int = 32,
        init_std: float = 0.1,
        mu: float = 3.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        require_integer(num_items, "num_items", 1)
        require_integer(num_users, "num_users", 0)
        require_integer(dim, "model.dim", 1)
        require_number(init_std, "model.init_std", "(0, inf)")
        gen = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.init_std = init_std
        self.shared = _Shared(num_items, dim, init_std, mu, gen)
        self.private = _Private(num_users, dim)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings for local user indices and item ids."""
        p = self.private.user_emb[users]
        q = self.shared.item_emb[items]
        return (
            self.shared.global_bias
            + self.private.user_bias[users]
            + self.shared.item_bias[items]
            + (p * q).sum(-1)
        )

    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of a ``users x k`` grid of items (``items`` shape ``(n, k)``)."""
        p = self.private.user_emb[users][:, None, :]
        q = self.shared.item_emb[items]
        return (
            self.shared.global_bias
            + self.private.user_bias[users][:, None]
            + self.shared.item_bias[items]
            + (p * q).sum(-1)
        )

    def regulariser(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``||p_u||^2 + ||q_i||^2``."""
        return (
            self.private.user_emb[users].pow(2).sum(-1)
            + self.shared.item_emb[items].pow(2).sum(-1)
        ).mean()

    def init_private(self, seed: int) -> dict[str, np.ndarray]:
        """Fresh user factors for the local users (seeded), zero user biases."""
        gen = torch.Generator().manual_seed(seed)
        n = self.private.user_emb.shape[0]
        return {
            PRIVATE_PREFIX + "user_bias": np.zeros(n, dtype=np.float32),
            PRIVATE_PREFIX + "user_emb": (
                torch.randn(n, self.dim, generator=gen) * self.init_std
            ).numpy(),
        }


def _weights(model: nn.Module, prefix: str) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        (k, v.detach().cpu().numpy().copy())
        for k, v in model.state_dict().items()
        if k.startswith(prefix)
    )


def shared_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The server-aggregated arrays (names start with ``shared.``)."""
    return _weights(model, SHARED_PREFIX)


def private_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The arrays that stay on the client (names start with ``private.``)."""
    return _weights(model, PRIVATE_PREFIX)


def load_partial(model: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Load exactly the arrays under ``prefix`` into ``model``.

    Raises
    ------
    ValueError
        On missing/extra names or a shape mismatch (naming the tensor).
    """
    state = model.state_dict()
    wanted = {k for k in state if k.startswith(prefix)}
    if set(arrays) != wanted:
        raise ValueError(
            f"arrays under {prefix!r}: expected {sorted(wanted)}, got {sorted(arrays)}"
        )
    with torch.no_grad():
        for name, value in arrays.items():
            arr = np.asarray(value)
            if tuple(arr.shape) != tuple(state[name].shape):
                raise ValueError(
                    f"tensor {name!r}: shape {arr.shape} != model shape "
                    f"{tuple(state[name].shape)}"
                )
            state[name].copy_(torch.as_tensor(arr, dtype=state[name].dtype))


def build_recsys_model(name: str = "mf", **options: Any) -> MatrixFactorization:
    """Build a recommendation model by name (``mf``); ``options`` are its constructor's
    (:class:`MatrixFactorization`: ``num_items``, ``num_users``, ``dim``, ``init_std``,
    ``mu``, ``seed``)."""
    if name not in RECSYS_MODELS:
        raise ValueError(
            f"model.name={name!r} is not a recommendation model; allowed: "
            f"{', '.join(RECSYS_MODELS)}"
        )
    return MatrixFactorization(**options)
