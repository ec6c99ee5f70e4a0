"""Server-side adjustment on a shared dataset (method S3): the ``adjust_fn`` and its
wrapper.

:class:`ServerAdjuster` fine-tunes the aggregated model on the server's shared data and
is the ``adjust_fn`` of :class:`~bouquet.strategies.server_adjusted.ServerAdjusted`. The
objective on the shared set :math:`S`, starting from the aggregate :math:`\\bar w_t`:

.. math::

    \\min_w \\; \\frac{1}{|S|} \\sum_{(x, y) \\in S} \\mathrm{CE}(f_w(x), y)
    + \\mu \\|w - \\bar w_t\\|^2

Shared data (config group ``server``): by default the class-balanced
``server.shared_fraction`` slice that
:class:`~bouquet.simulations.methods.experiment.Experiment` carves out of the training
set before partitioning (``exp.server_shared_indices``: disjoint from every client
partition and from the test set). ``server.shared_source=<dataset name>`` instead takes
a class-balanced ``shared_fraction`` slice of that dataset's *training* split (same
input shape and classes required); the clients' data still lose the carved slice in that
case.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from bouquet.data import load_dataset
from bouquet.data import split_server_holdout
from bouquet.models.training import evaluate
from bouquet.models.training import get_weights
from bouquet.models.training import iterate_batches
from bouquet.models.training import set_weights
from bouquet.simulations.methods.experiment import Experiment
from bouquet.strategies.server_adjusted import ServerAdjusted

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")


def shared_data(cfg: dict[str, Any], exp: Experiment) -> tuple[np.ndarray, np.ndarray]:
    """The server's shared ``(x, y)`` (see the module docstring)."""
    server = cfg.get("server", {})
    fraction = float(server.get("shared_fraction", 0.0) or 0.0)
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"server.shared_fraction={fraction} must be in (0, 1) for server=adjust"
        )
    source = server.get("shared_source")
    if not source:
        idx = exp.server_shared_indices
        return exp.dataset.x_train[idx], exp.dataset.y_train[idx]
    other = load_dataset(str(source), cfg["dataset"].get("root"))
    if (
        other.input_shape != exp.dataset.input_shape
        or other.num_classes != exp.dataset.num_classes
    ):
        raise ValueError(
            f"server.shared_source={source!r} has inputs {other.input_shape} and "
            f"{other.num_classes} classes; "
            f"the run's dataset has {exp.dataset.input_shape} and "
            f"{exp.dataset.num_classes}"
        )
    idx, _ = split_server_holdout(other.y_train, fraction, seed=exp.seed)
    return other.x_train[idx], other.y_train[idx]


class ServerAdjuster:
    """Fine-tune the aggregate on shared data: the ``adjust_fn`` of
    :class:`ServerAdjusted`.

    Parameters
    ----------
    exp : Experiment
        Builds the model and holds the test set (for ``acc_before_adjust``).
    x, y : numpy.ndarray
        Shared data.
    epochs, lr, batch_size : training settings (epochs >= 1, lr > 0, batch_size >= 1).
    optimizer : {"sgd", "adam"}
        ``sgd`` uses ``momentum``.
    proximal_mu : float
        :math:`\\mu \\ge 0` of the proximal term :math:`\\mu \\|w - \\bar w_t\\|^2`.
    record_before : bool
        Evaluate the aggregate on the test set before adjusting (``acc_before_adjust``,
        ``loss_before_adjust``).
    seed : int
        Base seed; round ``t`` shuffles with ``seed + t``.
    """

    def __init__(
        self,
        exp: Experiment,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        lr: float = 0.01,
        batch_size: int = 32,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        proximal_mu: float = 0.0,
        record_before: bool = True,
        seed: int = 0,
    ) -> None:
        if len(y) == 0 or len(x) != len(y):
            raise ValueError(
                f"shared data must be non-empty with matching x/y, got {len(x)} / "
                f"{len(y)}"
            )
        if int(epochs) < 1:
            raise ValueError(f"server.epochs={epochs} must be >= 1")
        if not float(lr) > 0:
            raise ValueError(f"server.lr={lr} must be > 0")
        if int(batch_size) < 1:
            raise ValueError(f"server.batch_size={batch_size} must be >= 1")
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"server.optimizer={optimizer!r} is unknown; allowed: "
                f"{', '.join(OPTIMIZERS)}"
            )
        if not float(proximal_mu) >= 0:
            raise ValueError(f"server.proximal_mu={proximal_mu} must be >= 0")
        self.exp, self.x, self.y = exp, x, y
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.optimizer, self.momentum, self.proximal_mu = (
            optimizer,
            float(momentum),
            float(proximal_mu),
        )
        self.record_before, self.seed = bool(record_before), int(seed)
        self.model = exp.build_model()

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=self.lr)
        return torch.optim.SGD(
            self.model.parameters(), lr=self.lr, momentum=self.momentum
        )

    def train(self, server_round: int) -> float:
        """Fine-tune ``self.model`` in place; return the mean loss of the last epoch."""
        ref = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        opt = self._optimizer()
        rng = np.random.default_rng(self.seed + server_round)
        self.model.train()
        last = float("nan")
        for _ in range(self.epochs):
            total = 0.0
            for xb, yb in iterate_batches(
                self.x, self.y, self.batch_size, shuffle=True, rng=rng
            ):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(self.model(xb), yb)
                if self.proximal_mu > 0:
                    loss = loss + self.proximal_mu * sum(
                        ((p - ref[n]) ** 2).sum()
                        for n, p in self.model.named_parameters()
                    )
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(yb)
            last = total / len(self.y)
        return last

    def __call__(
        self, arrays: ArrayRecord, server_round: int
    ) -> tuple[ArrayRecord, dict[str, Any]]:
        """Adjust ``arrays`` (the aggregate of ``server_round``); return them with a
        report."""
        start = time.perf_counter()
        set_weights(self.model, {k: v.numpy() for k, v in arrays.items()})
        report: dict[str, Any] = {}
        if self.record_before:
            loss, acc = evaluate(
                self.model, self.exp.dataset.x_test, self.exp.dataset.y_test
            )
            report.update(acc_before_adjust=float(acc), loss_before_adjust=float(loss))
        report["adjust_loss"] = self.train(server_round)
        report["adjust_s"] = round(time.perf_counter() - start, 4)
        out = ArrayRecord(
            {k: Array(np.asarray(v)) for k, v in get_weights(self.model).items()}
        )
        return out, report


def build_adjust_fn(cfg: dict[str, Any], exp: Experiment) -> ServerAdjuster:
    """The :class:`ServerAdjuster` that ``cfg["server"]`` describes."""
    server = cfg["server"]
    x, y = shared_data(cfg, exp)
    logger.info(
        "server adjustment on %d shared samples (%s)",
        len(y),
        server.get("shared_source") or "training-set slice",
    )
    return ServerAdjuster(
        exp,
        x,
        y,
        epochs=int(server.get("epochs", 1)),
        lr=float(server.get("lr", 0.01)),
        batch_size=int(server.get("batch_size", 32)),
        optimizer=str(server.get("optimizer", "sgd")),
        momentum=float(server.get("momentum", 0.9)),
        proximal_mu=float(server.get("proximal_mu", 0.0) or 0.0),
        record_before=bool(server.get("record_before", True)),
        seed=exp.seed,
    )


def wrap_server_adjust(
    cfg: dict[str, Any], exp: Experiment, strategy: Strategy
) -> Strategy:
    """``STRATEGY_WRAPPERS`` entry: wrap in :class:`ServerAdjusted` when
    ``server.name=adjust``."""
    server = cfg.get("server") or {}
    if server.get("name", "none") != "adjust":
        return strategy
    every = int(server.get("every_n_rounds", 1))
    return ServerAdjusted(strategy, build_adjust_fn(cfg, exp), every_n_rounds=every)
