"""Depth-heterogeneous FedAvg: each node trains the sub-model of its depth.

Method S2 (cloud-edge training with NAS), federated part: branch models of an early-exit
network are assigned to edge devices and aggregated by federated learning (DepthFL, Kim
et al., ICLR 2023, "DepthFL: Depthwise Federated Learning for Heterogeneous Clients";
HeteroFL, Diao et al., ICLR 2021, for name-wise partial averaging).

Every array name carries a depth tag read by a regular expression (default
``^(?:stages|exits)\\.d(\\d+)\\.``; names without a tag, such as the stem, have depth 0
and go to every node). The depth-``d`` sub-model is the set of names whose tag is ``<=
d``; no code is specific to an architecture and nothing is matched by list position.

Depth of a node
    Drawn at random from ``depths`` (probabilities ``depth_probs``) by a generator
    seeded with ``(seed, round, partition-id)``: with ``assignment="per_round"`` (the
    default, the method's reading: branch models are reassigned at random every round) a
    node gets a new depth every round; with ``assignment="fixed"`` the round is left out
    and a node keeps its depth. The ``partition-id`` (not Flower's node id, which
    changes from run to run) makes two runs with the same seed draw the same depths. The
    server asks each node once, before its first train message, with a ``query`` message
    (config ``node-info``) answered by bouquet's ClientApp with the node's
    ``partition-id`` and ``max-depth`` (its capacity; 0 = no limit). A node that does
    not answer (another ClientApp, a timeout) is drawn by its node id instead, logged at
    WARNING. The capacity is also read from every train reply: a client whose capacity
    is below the depth it received trains and returns only its capacity's sub-model. A
    node is sent ``min(drawn, capacity)``.

Aggregation, for every name :math:`k` over the accepted replies :math:`S_k` that carry
it:

.. math::

    w_k \\leftarrow \\sum_{i \\in S_k} \\frac{n_i}{\\sum_{j \\in S_k} n_j} w_{k,i},
    \\qquad w_k \\text{ unchanged if } S_k = \\emptyset.

With every node at full depth this is FedAvg's weighted mean, computed in the same order
with the same operations (bit-identical to Flower's ``aggregate_arrayrecords``).

A reply is rejected (dropped, logged, counted in ``round_report()["clients_dropped"]``)
if it carries a name outside the sub-model it was sent, is not a complete sub-model of
some depth, has a wrong shape or dtype, a non-finite value, or a bad ``num-examples``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from bouquet import keys
from bouquet.strategies.depth_math import DEFAULT_DEPTH_PATTERN
from bouquet.strategies.depth_math import aggregate_by_name
from bouquet.strategies.depth_math import check_depth_settings
from bouquet.strategies.depth_math import name_depths
from bouquet.strategies.depth_math import node_info
from bouquet.strategies.depth_math import submodel_arrays
from bouquet.strategies.depth_math import submodel_depth
from bouquet.strategies.depth_math import submodel_names
from bouquet.strategies.reports import truncate_reason
from bouquet.strategies.screening import node_label

logger = logging.getLogger(__name__)


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
    assignment : {"per_round", "fixed"}
        Redraw every node's depth every round (default) or draw it once per node.
    node_info_timeout : float
        Seconds to wait for the nodes' ``node-info`` answers.
    depth_pattern : str
        Regular expression whose group 1 is a name's depth.
    **kwargs
        Passed to Flower's ``FedAvg`` (``fraction_train``, ``min_available_nodes``,
        ...).
    """

    # Replies carry sub-models (fewer names than the global model): ``ReplyGuard``
    # leaves the array checks to :meth:`check_reply`, which validates each against what
    # the node was sent.
    validates_arrays = True

    def __init__(
        self,
        *,
        depths: Sequence[int] | None = None,
        depth_probs: Sequence[float] | None = None,
        seed: int = 0,
        assignment: str = "per_round",
        node_info_timeout: float = 120.0,
        depth_pattern: str = DEFAULT_DEPTH_PATTERN,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_depth_settings(
            depths, depth_probs, assignment, node_info_timeout, depth_pattern
        )
        self.depths = [int(d) for d in depths] if depths is not None else None
        self.depth_probs = (
            [float(p) for p in depth_probs] if depth_probs is not None else None
        )
        self.seed = int(seed)
        self.depth_pattern = depth_pattern
        self.assignment = assignment
        self.node_info_timeout = float(node_info_timeout)
        # node id -> depth drawn for the current round
        self.assigned: dict[int, int] = {}
        # node id -> partition-id it reported (None: no answer)
        self.partition: dict[int, int | None] = {}
        self.capacity: dict[int, int] = {}  # node id -> max-depth reported by the node
        self._round = 0
        self.sent: dict[int, int] = {}  # node id -> depth sent this round
        self._global: ArrayRecord | None = None
        self._depths: dict[str, int] = {}
        self._dropped = 0
        self._trained_depths: list[int] = []

    @property
    def num_depths(self) -> int:
        return max(self._depths.values(), default=0)

    def draw(self, partition_id: int, server_round: int) -> int:
        """The depth drawn for ``partition_id`` in ``server_round`` (before any capacity
        cap)."""
        return self._draw([0, int(partition_id)], server_round)

    def _draw(self, ident: list[int], server_round: int) -> int:
        choices = self.depths or list(range(1, self.num_depths + 1))
        bad = [d for d in choices if d > self.num_depths]
        if bad:
            raise ValueError(
                f"strategy.depths={choices}: the model has only {self.num_depths} "
                "depths"
            )
        probs = None
        if self.depth_probs is not None:
            probs = np.asarray(self.depth_probs) / sum(self.depth_probs)
        rnd = int(server_round) if self.assignment == "per_round" else 0
        rng = np.random.default_rng([self.seed, rnd, *ident])
        return int(rng.choice(choices, p=probs))

    def depth_for(self, node_id: int) -> int:
        """The depth that ``node_id`` is sent this round (drawn on first use in the
        round)."""
        if node_id not in self.assigned:
            pid = self.partition.get(node_id)
            ident = [0, pid] if pid is not None else [1, int(node_id) % (2**63)]
            self.assigned[node_id] = self._draw(ident, self._round)
        return min(self.assigned[node_id], self.capacity.get(node_id, self.num_depths))

    def learn_nodes(self, node_ids: Iterable[int], grid: Grid) -> None:
        """Ask every node not asked before for its ``partition-id`` and ``max-depth``
        (one query).

        Answers are client bytes: a ``partition-id`` must be an int in ``[0, 2**31)``
        and a ``max-depth`` an int in ``[0, 1000]``; anything else counts as no answer.
        """
        unknown = [int(n) for n in node_ids if int(n) not in self.partition]
        if not unknown:
            return
        query = [
            Message(
                RecordDict({self.configrecord_key: ConfigRecord({keys.NODE_INFO: 1})}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in unknown
        ]
        answered: set[int] = set()
        for reply in grid.send_and_receive(query, timeout=self.node_info_timeout):
            node = int(reply.metadata.src_node_id)
            info = node_info(reply) if node in unknown else None
            if info is None:
                continue
            pid, cap = info
            self.partition[node] = pid
            if cap >= 1:
                self.capacity[node] = cap
            answered.add(node)
        missing = [n for n in unknown if n not in answered]
        for node in missing:
            self.partition[node] = None
        if missing:
            log(
                logging.WARNING,
                "DepthFedAvg: %d node(s) did not report a partition-id (%s): their "
                "depths are "
                "drawn by node id, which differs from run to run",
                len(missing),
                missing[:5],
            )

    def _sub_record(self, arrays: ArrayRecord, depth: int) -> ArrayRecord:
        return ArrayRecord({n: arrays[n] for n in submodel_names(self._depths, depth)})

    def _per_node(
        self, messages: Iterable[Message], arrays: ArrayRecord, message_type: str
    ) -> list[Message]:
        """Replace each message's arrays by the sub-model of its node's depth."""
        self._global = arrays
        self._depths = name_depths(arrays.keys(), self.depth_pattern)
        if self.num_depths < 1:
            raise ValueError(
                f"no array name matches strategy.depth_pattern={self.depth_pattern!r}"
            )
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            depth = self.depth_for(node)
            config = ConfigRecord(
                dict(msg.content.config_records[self.configrecord_key])
            )
            config[keys.SUBMODEL_DEPTH] = depth
            if message_type == MessageType.TRAIN:
                self.sent[node] = depth
            content = RecordDict(
                {
                    self.arrayrecord_key: self._sub_record(arrays, depth),
                    self.configrecord_key: config,
                }
            )
            out.append(
                Message(content=content, message_type=message_type, dst_node_id=node)
            )
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes as FedAvg does, then send each its depth's arrays only."""
        self.sent = {}
        if self.assignment == "per_round":
            self.assigned = {}
        self._round = server_round
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.learn_nodes([m.metadata.dst_node_id for m in messages], grid)
        return self._per_node(messages, arrays, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        if messages:
            self.learn_nodes([m.metadata.dst_node_id for m in messages], grid)
        return (
            self._per_node(messages, arrays, MessageType.EVALUATE) if messages else []
        )

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
            raise ValueError(
                "a reply needs exactly one ArrayRecord and one MetricRecord"
            )
        record = next(iter(content.array_records.values()))
        metrics = next(iter(content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if (
            isinstance(weight, (list, bool))
            or weight is None
            or not math.isfinite(float(weight))
            or float(weight) <= 0
        ):
            raise ValueError(
                f"{self.weighted_by_key}={weight!r} must be a finite number > 0"
            )
        sent = self.sent[node]
        names = set(record.keys())
        depth = submodel_depth(names, self._depths, sent)
        arrays = submodel_arrays(record, names, self._global)
        cap = metrics.get(keys.MAX_DEPTH, 0)
        if isinstance(cap, (int, float)) and cap >= 1:
            self.capacity[node] = int(cap)
        if depth < sent:  # the node trained less than it was sent: its capacity
            self.capacity[node] = depth
        return arrays, float(weight)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate every array by name over the accepted replies (see the module
        docstring)."""
        accepted: list[tuple[dict[str, np.ndarray], float]] = []
        contents: list[RecordDict] = []
        for msg in replies:
            if msg.has_error():
                log(
                    logging.INFO,
                    "node %s failed: %s",
                    node_label(msg),
                    truncate_reason(str(msg.error.reason)),
                )
                continue
            try:
                arrays, weight = self.check_reply(msg)
            except ValueError as exc:
                self._dropped += 1
                log(
                    logging.WARNING,
                    "round %d: dropped the reply of node %s: %s",
                    server_round,
                    node_label(msg),
                    truncate_reason(str(exc)),
                )
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
        same = [
            c
            for c in contents
            if set(next(iter(c.metric_records.values())).keys()) == first
        ]
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
        log(
            logging.INFO,
            "\t├──> DepthFedAvg: depths %s (probs %s), seed %d, assignment %s",
            self.depths or "all",
            self.depth_probs,
            self.seed,
            self.assignment,
        )
