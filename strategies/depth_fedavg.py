"""Depth-heterogeneous FedAvg: each node trains the sub-model of its depth.

Method S2 (cloud-edge training with NAS), federated part: branch models of an early-exit network
are assigned to edge devices and aggregated by federated learning (DepthFL, Kim et al., ICLR
2023, "DepthFL: Depthwise Federated Learning for Heterogeneous Clients"; HeteroFL, Diao et al.,
ICLR 2021, for name-wise partial averaging).

Every array name carries a depth tag read by a regular expression (default
``^(?:stages|exits)\\.d(\\d+)\\.``; names without a tag, such as the stem, have depth 0 and go to
every node). The depth-``d`` sub-model is the set of names whose tag is ``<= d``; no code is
specific to an architecture and nothing is matched by list position.

Depth of a node
    Drawn at random once per node from ``depths`` (probabilities ``depth_probs``) with a
    generator seeded by ``seed`` and the node id, so a node keeps its depth and a run is
    reproducible for the same node ids. The server learns a node's capacity from its replies:
    the client reports ``max-depth`` (from its ``node_config``; 0 = no limit) in every train
    reply, and a client whose capacity is below the depth it received trains and returns only
    its capacity's sub-model. From then on the node is sent ``min(assigned, capacity)``.

Aggregation, for every name :math:`k` over the accepted replies :math:`S_k` that carry it:

.. math::

    w_k \\leftarrow \\sum_{i \\in S_k} \\frac{n_i}{\\sum_{j \\in S_k} n_j} w_{k,i},
    \\qquad w_k \\text{ unchanged if } S_k = \\emptyset.

With every node at full depth this is FedAvg's weighted mean, computed in the same order with
the same operations (bit-identical to Flower's ``aggregate_arrayrecords``).

A reply is rejected (dropped, logged, counted in ``round_report()["clients_dropped"]``) if it
carries a name outside the sub-model it was sent, is not a complete sub-model of some depth, has
a wrong shape or dtype, a non-finite value, or a bad ``num-examples``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from bouquet import keys

logger = logging.getLogger(__name__)

DEFAULT_DEPTH_PATTERN = r"^(?:stages|exits)\.d(\d+)\."


def name_depths(names: Iterable[str], pattern: str = DEFAULT_DEPTH_PATTERN) -> dict[str, int]:
    """Depth tag of every name (0 for names without a tag)."""
    regex = re.compile(pattern)
    out = {}
    for name in names:
        match = regex.search(name)
        out[name] = int(match.group(1)) if match else 0
    return out


def submodel_names(depths: dict[str, int], depth: int) -> list[str]:
    """Names of the depth-``depth`` sub-model, in the order of ``depths``."""
    return [n for n, d in depths.items() if d <= depth]


def aggregate_by_name(
    global_arrays: dict[str, np.ndarray], replies: Sequence[tuple[dict[str, np.ndarray], float]]
) -> dict[str, np.ndarray]:
    """Weighted mean of every name over the replies that carry it (see module docstring).

    Parameters
    ----------
    global_arrays : dict
        Current global arrays (their order is kept; names nobody trained stay unchanged).
    replies : list of (arrays, weight)
        Validated reply arrays (a subset of the global names) and their ``num-examples``.
    """
    totals: dict[str, float] = {}
    for arrays, weight in replies:
        for name in arrays:
            totals[name] = totals.get(name, 0.0) + weight
    out: dict[str, np.ndarray] = {}
    for name, current in global_arrays.items():
        total = totals.get(name, 0.0)
        if total <= 0:
            out[name] = current
            continue
        acc = None
        for arrays, weight in replies:
            if name in arrays:
                term = arrays[name] * (weight / total)
                acc = term if acc is None else acc + term
        out[name] = np.asarray(acc)
    return out


class DepthFedAvg(FedAvg):
    """FedAvg over depth sub-models (see the module docstring).

    Parameters
    ----------
    depths : list of int, optional
        Depths to draw from (default: every depth ``1..L`` found in the names).
    depth_probs : list of float, optional
        Probabilities of ``depths`` (default uniform).
    seed : int
        Seed of the depth draw.
    depth_pattern : str
        Regular expression whose group 1 is a name's depth.
    **kwargs
        Passed to Flower's ``FedAvg`` (``fraction_train``, ``min_available_nodes``, ...).
    """

    # Replies carry sub-models (fewer names than the global model): ``ReplyGuard`` leaves the
    # array checks to :meth:`check_reply`, which validates each against what the node was sent.
    validates_arrays = True

    def __init__(
        self,
        *,
        depths: Sequence[int] | None = None,
        depth_probs: Sequence[float] | None = None,
        seed: int = 0,
        depth_pattern: str = DEFAULT_DEPTH_PATTERN,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if depths is not None and (not depths or any(int(d) < 1 for d in depths)):
            raise ValueError(f"strategy.depths={depths} must be a non-empty list of depths >= 1")
        if depth_probs is not None:
            probs = [float(p) for p in depth_probs]
            if depths is None or len(probs) != len(depths) or any(p < 0 for p in probs) or sum(probs) <= 0:
                raise ValueError(f"strategy.depth_probs={depth_probs} must give one weight >= 0 per depth in {depths}")
        if re.compile(depth_pattern).groups < 1:
            raise ValueError(f"strategy.depth_pattern={depth_pattern!r} needs one capturing group (the depth)")
        self.depths = [int(d) for d in depths] if depths is not None else None
        self.depth_probs = [float(p) for p in depth_probs] if depth_probs is not None else None
        self.seed = int(seed)
        self.depth_pattern = depth_pattern
        self.assigned: dict[int, int] = {}  # node id -> drawn depth
        self.capacity: dict[int, int] = {}  # node id -> max-depth reported by the node
        self.sent: dict[int, int] = {}  # node id -> depth sent this round
        self._global: ArrayRecord | None = None
        self._depths: dict[str, int] = {}
        self._dropped = 0
        self._trained_depths: list[int] = []

    @property
    def num_depths(self) -> int:
        return max(self._depths.values(), default=0)

    def depth_for(self, node_id: int) -> int:
        """The depth that ``node_id`` is sent this round."""
        if node_id not in self.assigned:
            choices = self.depths or list(range(1, self.num_depths + 1))
            bad = [d for d in choices if d > self.num_depths]
            if bad:
                raise ValueError(f"strategy.depths={choices}: the model has only {self.num_depths} depths")
            probs = None
            if self.depth_probs is not None:
                probs = np.asarray(self.depth_probs) / sum(self.depth_probs)
            rng = np.random.default_rng([self.seed, int(node_id) % (2**63)])
            self.assigned[node_id] = int(rng.choice(choices, p=probs))
        return min(self.assigned[node_id], self.capacity.get(node_id, self.num_depths))

    def _sub_record(self, arrays: ArrayRecord, depth: int) -> ArrayRecord:
        return ArrayRecord({n: arrays[n] for n in submodel_names(self._depths, depth)})

    def _per_node(self, messages: Iterable[Message], arrays: ArrayRecord, message_type: str) -> list[Message]:
        """Replace each message's arrays by the sub-model of its node's depth."""
        self._global = arrays
        self._depths = name_depths(arrays.keys(), self.depth_pattern)
        if self.num_depths < 1:
            raise ValueError(f"no array name matches strategy.depth_pattern={self.depth_pattern!r}")
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            depth = self.depth_for(node)
            config = ConfigRecord(dict(msg.content.config_records[self.configrecord_key]))
            config[keys.SUBMODEL_DEPTH] = depth
            if message_type == MessageType.TRAIN:
                self.sent[node] = depth
            content = RecordDict({self.arrayrecord_key: self._sub_record(arrays, depth), self.configrecord_key: config})
            out.append(Message(content=content, message_type=message_type, dst_node_id=node))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample nodes as FedAvg does, then send each its depth's arrays only."""
        self.sent = {}
        messages = super().configure_train(server_round, arrays, config, grid)
        return self._per_node(messages, arrays, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = super().configure_evaluate(server_round, arrays, config, grid)
        return self._per_node(messages, arrays, MessageType.EVALUATE) if messages else []

    def check_reply(self, msg: Message) -> tuple[dict[str, np.ndarray], float]:
        """Validate one train reply; return its arrays and weight.

        Raises
        ------
        ValueError
            Naming why the reply cannot be aggregated.
        """
        node = msg.metadata.src_node_id
        if node not in self.sent or self._global is None:
            raise ValueError(f"node {node} was not sent a sub-model this round")
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            raise ValueError("a reply needs exactly one ArrayRecord and one MetricRecord")
        record = next(iter(content.array_records.values()))
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if isinstance(weight, (list, bool)) or weight is None or not math.isfinite(float(weight)) or float(weight) <= 0:
            raise ValueError(f"{self.weighted_by_key}={weight!r} must be a finite number > 0")
        sent = self.sent[node]
        names = set(record.keys())
        outside = names - set(submodel_names(self._depths, sent))
        if outside:
            raise ValueError(f"arrays outside its depth-{sent} sub-model: {sorted(outside)[:5]}")
        depth = max((self._depths[n] for n in names), default=0)
        if depth < 1 or names != set(submodel_names(self._depths, depth)):
            raise ValueError(f"the {len(names)} arrays are not a complete sub-model of any depth <= {sent}")
        arrays: dict[str, np.ndarray] = {}
        for name in names:
            ref = self._global[name]
            try:
                arr = record[name].numpy()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"array {name!r} cannot be decoded: {exc}") from exc
            if tuple(arr.shape) != tuple(ref.shape) or str(arr.dtype) != ref.dtype:
                raise ValueError(f"array {name!r}: {arr.dtype}{list(arr.shape)} != {ref.dtype}{list(ref.shape)}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"array {name!r} has non-finite values")
            arrays[name] = arr
        cap = metrics.get(keys.MAX_DEPTH, 0)
        if isinstance(cap, (int, float)) and cap >= 1:
            self.capacity[node] = int(cap)
        if depth < sent:  # the node trained less than it was sent: remember its capacity
            self.capacity[node] = depth
        return arrays, float(weight)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate every array by name over the accepted replies (see the module docstring)."""
        accepted: list[tuple[dict[str, np.ndarray], float]] = []
        contents: list[RecordDict] = []
        for msg in replies:
            if msg.has_error():
                log(logging.INFO, "node %d failed: %s", msg.metadata.src_node_id, msg.error.reason)
                continue
            try:
                arrays, weight = self.check_reply(msg)
            except ValueError as exc:
                self._dropped += 1
                log(logging.WARNING, "round %d: dropped the reply of node %d: %s", server_round, msg.metadata.src_node_id, exc)
                continue
            accepted.append((arrays, weight))
            contents.append(msg.content)
            self._trained_depths.append(max(self._depths[n] for n in arrays))
        if not accepted or self._global is None:
            return None, None
        current = {k: v.numpy() for k, v in self._global.items()}
        merged = aggregate_by_name(current, accepted)
        out = ArrayRecord({k: Array(np.asarray(v)) for k, v in merged.items()})
        return out, self._aggregate_metrics(contents)

    def _aggregate_metrics(self, contents: list[RecordDict]) -> MetricRecord | None:
        first = set(next(iter(contents[0].metric_records.values())).keys())
        same = [c for c in contents if set(next(iter(c.metric_records.values())).keys()) == first]
        return self.train_metrics_aggr_fn(same, self.weighted_by_key)

    def round_report(self) -> dict[str, Any]:
        """Replies dropped and nodes per trained depth since the last call."""
        counts = [self._trained_depths.count(d) for d in range(1, self.num_depths + 1)]
        report = {"clients_dropped": self._dropped, "nodes_per_depth": counts}
        self._dropped = 0
        self._trained_depths = []
        return report

    def summary(self) -> None:
        super().summary()
        log(logging.INFO, "DepthFedAvg: depths %s (probs %s), seed %d", self.depths or "all", self.depth_probs, self.seed)
