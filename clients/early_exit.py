"""A TorchClient that trains the early-exit sub-model it receives with the multi-exit
loss.

Method S2 (cloud-edge training with NAS), edge part: a device trains the branch model
(stem, stages 1..d, exits 1..d) that the server sent it, with the total loss
(BranchyNet, Teerapittayanon et al., 2016; DepthFL, Kim et al., ICLR 2023)

.. math::

    \\mathcal{L} = \\sum_{i=1}^{d} \\lambda_i \\, \\mathrm{CE}(\\mathrm{softmax}(z_i),
        y),

with :math:`\\lambda` from the model config (``model.exit_weights``), plus DepthFL's
mutual self-distillation among the exits when ``self_distillation > 0`` (see
:func:`bouquet.models.early_exit.multi_exit_loss`).

The arrays that arrive define the depth: the client finds the unique ``d`` whose
sub-model has as many tensors with the same shapes (the bridge hands arrays over in the
record's order, which is the full model's order filtered by depth), and
:meth:`EarlyExitClient.encode_train_reply` checks the record's names against the
sub-model's names before anything is sent back. A node with a capacity (``max-depth`` in
its ``node_config``, or ``max_depth_by_partition`` in the client config for simulations)
below the received depth trains only its capacity's sub-model and returns only those
arrays, never an array outside what it received.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.common import NDArrays

from bouquet import keys
from bouquet.clients.bridge import Arrays
from bouquet.clients.bridge import EvaluateResult
from bouquet.clients.bridge import FitResult
from bouquet.clients.bridge import dense_arrayrecord
from bouquet.clients.torch_client import TorchClient
from bouquet.models.early_exit import EarlyExitNet
from bouquet.models.early_exit import depth_names
from bouquet.models.early_exit import early_exit_loss_fn
from bouquet.models.early_exit import evaluate_exits
from bouquet.models.training import set_weights

logger = logging.getLogger(__name__)


class EarlyExitClient(TorchClient):
    """Train the received depth-``d`` sub-model of an :class:`EarlyExitNet`.

    Parameters
    ----------
    model : EarlyExitNet
        The full early-exit model (its architecture and exit weights are used).
    max_depth : int, optional
        This node's capacity (0 or ``None`` = no limit); ``max-depth`` in the node
        config wins.
    max_depth_by_partition : list of int, optional
        Capacity by ``partition-id`` (simulations, where nodes have no custom node
        config).
    self_distillation : float
        Weight of DepthFL's mutual self-distillation among the exits (0 = off).
    **kwargs
        Passed to :class:`TorchClient` (``x``, ``y``, ``num_classes``, ``lr``, ...).
    """

    def __init__(
        self,
        model: EarlyExitNet,
        x: np.ndarray,
        y: np.ndarray,
        *,
        max_depth: int | None = None,
        max_depth_by_partition: Sequence[int] | None = None,
        self_distillation: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, EarlyExitNet):
            raise ValueError(
                f"EarlyExitClient needs model=early_exit, got {type(model).__name__}"
            )
        if not float(self_distillation) >= 0:
            raise ValueError(
                f"client.self_distillation={self_distillation} must be >= 0 (0 = off)"
            )
        super().__init__(
            model,
            x,
            y,
            loss_fn=partial(early_exit_loss_fn, distill=float(self_distillation)),
            **kwargs,
        )
        self.self_distillation = float(self_distillation)
        if max_depth is not None and int(max_depth) < 0:
            raise ValueError(
                f"client.max_depth={max_depth} must be >= 0 (0 = no limit)"
            )
        if max_depth_by_partition is not None and any(
            int(d) < 0 for d in max_depth_by_partition
        ):
            raise ValueError(
                f"client.max_depth_by_partition={list(max_depth_by_partition)} must "
                "be depths >= 0"
            )
        self.full_model = model
        self.max_depth = int(max_depth or 0)
        self.max_depth_by_partition = (
            [int(d) for d in max_depth_by_partition] if max_depth_by_partition else None
        )
        self.received_names: list[str] = []
        self.trained_names: list[str] = []

    def capacity(self) -> int:
        """Deepest sub-model this node trains (0 = no limit)."""
        if self.context is not None:
            node_cfg = self.context.node_config
            if keys.MAX_DEPTH in node_cfg:
                return int(node_cfg[keys.MAX_DEPTH])
            if (
                self.max_depth_by_partition is not None
                and keys.PARTITION_ID in node_cfg
            ):
                pid = int(node_cfg[keys.PARTITION_ID])
                return self.max_depth_by_partition[
                    pid % len(self.max_depth_by_partition)
                ]
        return self.max_depth

    def received_depth(self, parameters: Sequence[np.ndarray]) -> int:
        """The depth whose sub-model has exactly these array shapes.

        Raises
        ------
        ValueError
            If no depth of the architecture matches.
        """
        state = self.full_model.state_dict()
        shapes = [tuple(np.shape(a)) for a in parameters]
        for depth in range(1, self.full_model.num_exits + 1):
            names = depth_names(self.full_model, depth)
            if len(names) == len(shapes) and all(
                tuple(state[n].shape) == s for n, s in zip(names, shapes, strict=True)
            ):
                return depth
        raise ValueError(
            f"the {len(shapes)} received arrays are not a sub-model of this "
            "early-exit architecture"
        )

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        depth = self.received_depth(parameters)
        cap = self.capacity()
        train_depth = min(depth, cap) if cap > 0 else depth
        self.received_names = depth_names(self.full_model, depth)
        received = dict(zip(self.received_names, parameters, strict=True))
        sub = self.full_model.submodel(train_depth)
        self.trained_names = list(sub.state_dict())
        self.model = sub
        try:
            trained, num_examples, metrics = super().fit(
                [received[n] for n in self.trained_names], config
            )
        finally:
            self.model = self.full_model
        received.update(zip(self.trained_names, trained, strict=True))
        metrics.update({keys.TRAINED_DEPTH: train_depth, keys.MAX_DEPTH: cap})
        return [received[n] for n in self.received_names], num_examples, metrics

    def encode_train_reply(
        self, names: Sequence[str], received: Arrays, returned: Arrays
    ) -> ArrayRecord:
        """Check the record's names, then send only the arrays this node trained."""
        if list(names) != self.received_names:
            raise ValueError(
                "the received record's names do not match the "
                f"{len(self.received_names)}-array sub-model "
                f"of this architecture (first names {list(names)[:3]})"
            )
        by_name = dict(zip(names, returned, strict=True))
        return dense_arrayrecord(
            self.trained_names, [by_name[n] for n in self.trained_names]
        )

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]) -> EvaluateResult:
        """Evaluate the received sub-model; ``eval-accuracy`` is that of its deepest
        exit."""
        depth = self.received_depth(parameters)
        sub = self.full_model.submodel(depth)
        set_weights(sub, list(parameters))
        res = evaluate_exits(sub, self.x, self.y)
        return (
            float(res["loss"][-1]),
            len(self.y),
            {keys.EVAL_ACCURACY: float(res["accuracy"][-1])},
        )
