"""A NumPyClient that trains a torch model on its partition.

``fit`` trains for ``local_epochs`` (or exactly ``local_steps`` batches, when set) with
SGD (momentum) and reports ``num-examples``, ``train-loss``, ``train-time-s`` and
``label-histogram`` (counts per class, so that distribution-aware strategies such as KL
weighting can use it). The server's train config may override ``lr``, ``local-epochs``
and ``local-steps`` per round.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import Context
from flwr.common import NDArrays
from torch import nn

from bouquet import keys
from bouquet.checks import require_integer
from bouquet.checks import require_number
from bouquet.clients.bridge import EvaluateResult
from bouquet.clients.bridge import FitResult
from bouquet.data import label_histogram
from bouquet.models.training import LossFn
from bouquet.models.training import cross_entropy_loss
from bouquet.models.training import evaluate
from bouquet.models.training import get_weights
from bouquet.models.training import set_weights
from bouquet.models.training import train

logger = logging.getLogger(__name__)


def check_training_args(local_epochs: int, batch_size: int, lr: float) -> None:
    """Refuse impossible client training settings, naming the config key."""
    require_integer(local_epochs, "client.local_epochs", 0)
    require_integer(batch_size, "client.batch_size", 1)
    require_number(lr, "client.lr", "(0, inf)")


class TorchClient(NumPyClient):
    """Train a torch model on local ``(x, y)``.

    Parameters
    ----------
    model : torch.nn.Module
        Model with the same structure as the server's.
    x, y : numpy.ndarray
        Local data (float32 inputs, int64 labels).
    num_classes : int
        Length of the reported label histogram.
    local_epochs, batch_size, lr, momentum, weight_decay : training settings.
    local_steps : int, optional
        Train exactly this many batches per round instead of ``local_epochs`` (``1``
        with ``momentum=0`` is one SGD iteration per round: the S1 source's
        per-iteration form).
    seed : int
        Base seed; each round trains with ``seed + server_round``.
    torch_threads : int
        ``torch.set_num_threads`` for this client (1 avoids oversubscribing the cores
        when several simulated clients run at once).
    """

    def __init__(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        *,
        num_classes: int,
        local_epochs: int = 1,
        local_steps: int | None = None,
        batch_size: int = 32,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        seed: int = 0,
        torch_threads: int = 1,
        loss_fn: LossFn = cross_entropy_loss,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        check_training_args(local_epochs, batch_size, lr)
        self.model = model
        self.x = x
        self.y = y
        self.num_classes = num_classes
        if local_steps is not None and int(local_steps) < 1:
            raise ValueError(
                f"client.local_steps={local_steps} must be >= 1 (or null: use "
                "local_epochs)"
            )
        self.local_epochs = local_epochs
        self.local_steps = None if local_steps is None else int(local_steps)
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.seed = seed
        self.torch_threads = torch_threads
        self.loss_fn = loss_fn
        self.context: Context | None = None

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return list(get_weights(self.model).values())

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        torch.set_num_threads(self.torch_threads)
        set_weights(self.model, list(parameters))
        server_round = int(config.get(keys.SERVER_ROUND, 0))
        epochs = int(config.get(keys.LOCAL_EPOCHS, self.local_epochs))
        steps = config.get(keys.LOCAL_STEPS, self.local_steps)
        lr = float(config.get(keys.LR, self.lr))
        mu = float(config.get(keys.PROXIMAL_MU, 0.0))
        proximal = None
        # FedProx: the strategy sends "proximal-mu"; the client adds the term
        if mu > 0:
            proximal = (
                mu,
                {n: p.detach().clone() for n, p in self.model.named_parameters()},
            )
        start = time.perf_counter()
        loss = train(
            self.model,
            self.x,
            self.y,
            epochs=epochs,
            batch_size=self.batch_size,
            lr=lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=self.seed + server_round,
            loss_fn=self.loss_fn,
            proximal=proximal,
            steps=None if steps is None else int(steps),
        )
        elapsed = time.perf_counter() - start
        metrics = {
            keys.TRAIN_LOSS: float(loss) if np.isfinite(loss) else 0.0,
            keys.TRAIN_TIME: elapsed,
            keys.LABEL_HISTOGRAM: label_histogram(self.y, self.num_classes).tolist(),
        }
        return self.get_parameters({}), len(self.y), metrics

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]) -> EvaluateResult:
        torch.set_num_threads(self.torch_threads)
        set_weights(self.model, list(parameters))
        loss, acc = evaluate(self.model, self.x, self.y)
        return float(loss), len(self.y), {keys.EVAL_ACCURACY: float(acc)}
