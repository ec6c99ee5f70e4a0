"""Heterogeneous client speeds for simulations (so that asynchronous staleness really
happens).

Every node gets a seeded compute-time factor :math:`f_i`: log-normal around 1, and a
share of very slow nodes (stragglers) whose factor is multiplied by ``slow_factor``:

.. math::
    f_i = e^{\\sigma z_i} \\cdot (\\text{slow\\_factor if } i \\in S \\text{ else } 1),
        \\qquad
    z_i \\sim \\mathcal{N}(0, 1), \\quad |S| = \\mathrm{round}(\\text{slow\\_fraction}
        \\cdot N)

:class:`SlowClient` trains like :class:`~bouquet.clients.torch_client.TorchClient`, then
sleeps so that the task takes :math:`f_i \\cdot t_0` seconds in total, where
:math:`t_0` = ``base_time_s`` is the simulated compute time of a task on a median device
(deterministic, not polluted by the host's load); with ``base_time_s = 0`` it is the
measured training time :math:`t` instead (:math:`f_i \\cdot t`). A task never ends
before its real training does (a simulated time below :math:`t` means no sleep). The
reply echoes the model version of the train config (``model-version``) so that the
asynchronous strategy can check it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flwr.common import NDArrays

from bouquet import keys
from bouquet.clients.bridge import FitResult
from bouquet.clients.torch_client import TorchClient

logger = logging.getLogger(__name__)


def speed_factors(
    num_nodes: int, sigma: float, slow_fraction: float, slow_factor: float, seed: int
) -> np.ndarray:
    """Compute-time factors of ``num_nodes`` nodes (see the module docstring);
    seeded."""
    if num_nodes < 1:
        raise ValueError(f"num_nodes={num_nodes} must be >= 1")
    if not sigma >= 0:
        raise ValueError(f"client.speed_sigma={sigma} must be >= 0")
    if not 0.0 <= slow_fraction <= 1.0:
        raise ValueError(f"client.slow_fraction={slow_fraction} must be in [0, 1]")
    if not slow_factor >= 1.0:
        raise ValueError(f"client.slow_factor={slow_factor} must be >= 1")
    rng = np.random.default_rng([int(seed), 7919])
    factors = np.exp(sigma * rng.standard_normal(num_nodes))
    slow = rng.permutation(num_nodes)[: int(round(slow_fraction * num_nodes))]
    factors[slow] *= slow_factor
    return factors


class SlowClient(TorchClient):
    """A :class:`TorchClient` that runs at its node's seeded speed (see the module
    docstring).

    Parameters
    ----------
    speed_sigma : float
        Standard deviation of the log-normal factor (0: all nodes alike).
    slow_fraction : float
        Share of very slow nodes, in [0, 1].
    slow_factor : float
        Extra factor of the slow nodes (>= 1).
    base_time_s : float
        Simulated compute time of one task on a median node, in seconds (0: the measured
        time).
    speed_seed : int
        Seed of the factors (the same nodes are slow on every run with this seed).
    **kwargs :
        :class:`TorchClient` arguments.
    """

    def __init__(
        self,
        *args: Any,
        speed_sigma: float = 0.5,
        slow_fraction: float = 0.2,
        slow_factor: float = 5.0,
        base_time_s: float = 0.0,
        speed_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not base_time_s >= 0:
            raise ValueError(f"client.base_time_s={base_time_s} must be >= 0")
        # validates
        speed_factors(1, speed_sigma, slow_fraction, slow_factor, speed_seed)
        self.speed_sigma = float(speed_sigma)
        self.slow_fraction = float(slow_fraction)
        self.slow_factor = float(slow_factor)
        self.base_time_s = float(base_time_s)
        self.speed_seed = int(speed_seed)

    def speed_factor(self) -> float:
        """This node's factor, from ``partition-id`` / ``num-partitions`` of its node
        config."""
        node_config = dict(self.context.node_config) if self.context is not None else {}
        if (
            keys.PARTITION_ID not in node_config
            or keys.NUM_PARTITIONS not in node_config
        ):
            logger.warning(
                "no partition-id/num-partitions in the node config: speed factor 1"
            )
            return 1.0
        pid = int(node_config[keys.PARTITION_ID])
        factors = speed_factors(
            int(node_config[keys.NUM_PARTITIONS]),
            self.speed_sigma,
            self.slow_fraction,
            self.slow_factor,
            self.speed_seed,
        )
        return float(factors[pid])

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        start = time.perf_counter()
        arrays, num_examples, metrics = super().fit(parameters, config)
        measured = time.perf_counter() - start
        factor = self.speed_factor()
        simulated = factor * (self.base_time_s if self.base_time_s > 0 else measured)
        delay = simulated - measured
        if delay > 0:
            time.sleep(delay)
        metrics[keys.SPEED_FACTOR] = factor
        if keys.MODEL_VERSION in config:
            metrics[keys.MODEL_VERSION] = int(config[keys.MODEL_VERSION])
        return arrays, num_examples, metrics
