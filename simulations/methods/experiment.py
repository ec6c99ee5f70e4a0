"""Build an experiment's parts (data, partitions, model, clients) from a resolved
config.

An :class:`Experiment` is built from a plain ``dict`` (the resolved Hydra config), so
that it can be shipped to simulation workers and rebuilt in a deployed ClientApp from
the run config. Everything heavy (dataset, partitions) is built lazily and cached per
process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from hydra.utils import instantiate
from torch import nn

from bouquet import keys
from bouquet.data import Dataset
from bouquet.data import label_histogram
from bouquet.data import load_dataset
from bouquet.data import split_server_holdout
from bouquet.models.training import evaluate
from bouquet.models.training import get_weights
from bouquet.models.training import set_weights

logger = logging.getLogger(__name__)


class Experiment:
    """Data, partitions, model factory and client factory of one run.

    Parameters
    ----------
    cfg : dict
        Resolved config (``OmegaConf.to_container(cfg, resolve=True)``).
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.seed = int(cfg.get("seed", 0))
        self.num_clients = int(cfg["simulation"]["num_clients"])
        self.run_dir: Path | None = (
            None  # set by the ServerApp (where extra outputs go)
        )

    # ------------------------------------------------------------------ data
    @cached_property
    def dataset(self) -> Dataset:
        ds_cfg = dict(self.cfg["dataset"])
        return load_dataset(ds_cfg["name"], ds_cfg.get("root"))

    @cached_property
    def server_shared_indices(self) -> np.ndarray:
        """Indices of the training set held only by the server
        (``server.shared_fraction``)."""
        return self._holdout[0]

    @cached_property
    def _holdout(self) -> tuple[np.ndarray, np.ndarray]:
        fraction = float(self.cfg.get("server", {}).get("shared_fraction", 0.0) or 0.0)
        return split_server_holdout(self.dataset.y_train, fraction, seed=self.seed)

    @cached_property
    def partitions(self) -> list[np.ndarray]:
        """Client partitions: index arrays into the training set (never the server's
        slice)."""
        rest = self._holdout[1]
        part_fn = instantiate(self.cfg["partition"])
        local = part_fn(self.dataset.y_train[rest], self.num_clients, seed=self.seed)
        return [rest[p] for p in local]

    def client_data(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= partition_id < self.num_clients:
            raise ValueError(
                f"partition-id={partition_id} outside [0, {self.num_clients})"
            )
        idx = self.partitions[partition_id]
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    def label_histograms(self) -> np.ndarray:
        """Counts per class for every partition (clients x classes)."""
        y = self.dataset.y_train
        return np.stack(
            [label_histogram(y[p], self.dataset.num_classes) for p in self.partitions]
        )

    # ----------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        model_fn = instantiate(self.cfg["model"])
        return model_fn(
            input_shape=self.dataset.input_shape,
            num_classes=self.dataset.num_classes,
            seed=self.seed,
        )

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return dict(get_weights(self.build_model()))

    def evaluate_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Evaluate global arrays on the server test set: ``{"loss", "accuracy"}``."""
        model = self.build_model()
        set_weights(model, arrays)
        loss, acc = evaluate(model, self.dataset.x_test, self.dataset.y_test)
        return {"loss": loss, "accuracy": acc}

    # ---------------------------------------------------------------- client
    def client(self, context: Context) -> NumPyClient:
        """Build the configured NumPyClient for the node's ``partition-id``."""
        pid = int(context.node_config.get(keys.PARTITION_ID, 0))
        x, y = self.client_data(pid)
        factory: Callable[..., NumPyClient] = instantiate(self.cfg["client"])
        return factory(
            model=self.build_model(),
            x=x,
            y=y,
            num_classes=self.dataset.num_classes,
            seed=self.seed * 100_003 + pid * 1009,
        )
