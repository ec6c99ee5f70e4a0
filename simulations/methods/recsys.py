"""Federated product recommendation on MovieLens-100K (method S5 of the project's
seeds).

Selected by ``dataset.task_type: recommendation`` (``bouquet-sim dataset=movielens
model=mf``). Clients are groups of users (:mod:`bouquet.data.movielens`); each trains
biased matrix factorisation (:mod:`bouquet.models.recsys`) with
:class:`~bouquet.clients.recsys_client.RecsysClient`; only the item side (``shared.*``)
travels and is aggregated, dense or compressed.

**Where RMSE / HR@10 / NDCG@10 come from.** The server holds no ratings and no user
factors, so it cannot evaluate the recommender. Every round, after training,
:class:`FederatedEvaluation` sends the new global item side to the clients
(``eval_fraction`` of them, all by default); each scores its users' held-out ratings
with its private user factors and replies with its mean squared error, HR@10 and NDCG@10
weighted by its number of held-out ratings. The pooled values

.. math::

    \\mathrm{RMSE} = \\sqrt{\\frac{\\sum_c n_c\\,\\mathrm{MSE}_c}{\\sum_c n_c}}, \\qquad
    \\mathrm{HR@10} = \\frac{\\sum_c n_c\\,\\mathrm{HR}_c}{\\sum_c n_c}

go into ``metrics.jsonl`` as ``rmse``, ``hr_at_10``, ``ndcg_at_10`` (with
``eval_clients`` and ``eval_dropped``) through the strategy's ``round_report()``. Round
0 has no such values (nothing was evaluated yet) and the run has no
``accuracy``/``loss`` keys. The evaluation messages carry the dense item side, so they
add to ``bytes_down`` (not to ``bytes_up``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable
from functools import cached_property
from typing import Any
from typing import cast

import numpy as np
from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MessageType
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.client import NumPyClient
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from hydra.utils import instantiate

from bouquet import keys
from bouquet.clients.recsys_client import RecsysClient
from bouquet.data.movielens import RatingsSplit
from bouquet.data.movielens import group_users
from bouquet.data.movielens import load_movielens
from bouquet.data.movielens import sample_negatives
from bouquet.data.movielens import temporal_split
from bouquet.models.recsys import MatrixFactorization
from bouquet.models.recsys import build_recsys_model
from bouquet.models.recsys import shared_weights
from bouquet.simulations.methods.experiment import Experiment
from bouquet.strategies.compressed import Compressed
from bouquet.strategies.wrapper import StrategyWrapper

logger = logging.getLogger(__name__)

REPORT_KEYS = ("rmse", "hr_at_10", "ndcg_at_10")


class FederatedEvaluation(StrategyWrapper):
    """Wrap any strategy; run the recommendation evaluation on the clients every round.

    Training is the inner strategy's (decoding compressed updates included); evaluation
    is this wrapper's own (the inner strategy's ``configure_evaluate`` is not used).

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy.
    fraction : float
        Fraction of connected nodes asked to evaluate each round, in (0, 1].
    seed : int
        Seeds the node sample when ``fraction < 1``.
    """

    def __init__(
        self, strategy: Strategy, *, fraction: float = 1.0, seed: int = 0
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"dataset.eval_fraction={fraction} must be in (0, 1]")
        super().__init__(strategy)
        self.fraction = fraction
        self.seed = seed
        self._report: dict[str, Any] = {}

    def summary(self) -> None:
        self.strategy.summary()
        logger.info(
            "recommendation metrics: federated evaluation on %.0f%% of the clients "
            "each round "
            "(the inner strategy's fraction_evaluate is not used)",
            100 * self.fraction,
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        if self.fraction < 1.0:
            k = max(1, int(round(self.fraction * len(nodes))))
            nodes = sorted(
                random.Random(self.seed * 7919 + server_round).sample(nodes, k)
            )
        cfg = ConfigRecord({**dict(config), keys.SERVER_ROUND: server_round})
        content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: cfg})
        return [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n)
            for n in nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        report, record = pool_evaluation(list(replies))
        self._report = report
        return record

    def own_report(self) -> dict[str, Any]:
        """This round's pooled evaluation (``None`` values before any)."""
        own = self._report or {k: None for k in REPORT_KEYS}
        self._report = {}
        return own


def _check_eval_metrics(metrics: MetricRecord) -> str | None:
    n = metrics.get(keys.NUM_EXAMPLES)
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
        return f"{keys.NUM_EXAMPLES}={n!r} is not a finite count >= 0"
    for key, high in (
        (keys.EVAL_MSE, math.inf),
        (keys.EVAL_HR_AT_10, 1.0),
        (keys.EVAL_NDCG_AT_10, 1.0),
    ):
        v = metrics.get(key)
        if (
            not isinstance(v, (int, float))
            or not math.isfinite(v)
            or not 0.0 <= v <= high
        ):
            return f"{key}={v!r} is not a finite value in [0, {high}]"
    return None


def pool_evaluation(
    replies: list[Message],
) -> tuple[dict[str, Any], MetricRecord | None]:
    """Pool the clients' evaluation replies into RMSE, HR@10 and NDCG@10.

    Error replies and replies with missing or out-of-range metrics are dropped (logged,
    counted in ``eval_dropped``); they never change the pooled values of the others.
    """
    total, sums, dropped = 0.0, np.zeros(3), 0
    for msg in replies:
        if msg.has_error():
            dropped += 1
            continue
        records = list(msg.content.metric_records.values())
        why = (
            "expected one MetricRecord"
            if len(records) != 1
            else _check_eval_metrics(records[0])
        )
        if why is not None:
            logger.warning(
                "dropping evaluation reply from node %s: %s",
                msg.metadata.src_node_id,
                why,
            )
            dropped += 1
            continue
        m = records[0]
        # a number: checked by _check_eval_metrics
        n = float(cast(float, m[keys.NUM_EXAMPLES]))
        total += n
        sums += n * np.array(
            [m[keys.EVAL_MSE], m[keys.EVAL_HR_AT_10], m[keys.EVAL_NDCG_AT_10]],
            dtype=float,
        )
    report: dict[str, Any] = {
        "eval_clients": len(replies) - dropped,
        "eval_dropped": dropped,
    }
    if total <= 0:
        report.update({k: None for k in REPORT_KEYS})
        return report, None
    mse, hr, ndcg = sums / total
    values = {
        "rmse": float(math.sqrt(mse)),
        "hr_at_10": float(hr),
        "ndcg_at_10": float(ndcg),
    }
    report.update(values)
    return report, MetricRecord({**values, "eval-ratings": int(total)})


def _has_compressed(strategy: Strategy) -> bool:
    seen: Strategy | None = strategy
    while seen is not None:
        if isinstance(seen, Compressed):
            return True
        seen = getattr(seen, "__dict__", {}).get("strategy")
    return False


def wrap_recommendation_evaluation(
    cfg: dict[str, Any], exp: Experiment, strategy: Strategy
) -> Strategy:
    """Strategy wrapper (for ``STRATEGY_WRAPPERS``) of recommendation runs.

    Adds :class:`~bouquet.strategies.Compressed` when ``client.codec`` is set (with
    ``compression.server_lr`` / ``compression.fast_path`` as for image clients), then
    :class:`FederatedEvaluation`. Other experiments are returned unchanged.
    """
    if not isinstance(exp, RecsysExperiment):
        return strategy
    if (cfg.get("client") or {}).get("codec") and not _has_compressed(strategy):
        comp = cfg.get("compression") or {}
        strategy = Compressed(
            strategy,
            server_lr=float(comp.get("server_lr", 1.0)),
            fast_path=bool(comp.get("fast_path", True)),
        )
    frac = float(cfg["dataset"].get("eval_fraction", 1.0))
    return FederatedEvaluation(strategy, fraction=frac, seed=exp.seed)


class RecsysExperiment(Experiment):
    """MovieLens ratings, user groups as clients, biased MF, federated evaluation.

    The image ``partition`` group does not apply: clients are seeded groups of users
    (``dataset.max_users`` keeps a seeded subset of users for small runs).
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        ds = cfg["dataset"]
        self.test_per_user = int(ds.get("test_per_user", 5))
        self.num_negatives = int(ds.get("num_negatives", 99))
        max_users = ds.get("max_users")
        self.max_users = None if max_users is None else int(max_users)

    @cached_property
    def ratings(self):  # type: ignore[no-untyped-def]
        return load_movielens(self.cfg["dataset"].get("root"))

    @cached_property
    def dataset(self) -> RatingsSplit:  # type: ignore[override]
        return temporal_split(self.ratings, self.test_per_user)

    @cached_property
    def partitions(self) -> list[np.ndarray]:
        """User ids of every client (a seeded grouping)."""
        return group_users(
            self.ratings.num_users, self.num_clients, self.seed, self.max_users
        )

    def client_data(self, partition_id: int) -> tuple[np.ndarray, Any, Any]:  # type: ignore[override]
        """``(users, train, test)`` of one client: only its own users' ratings."""
        if not 0 <= partition_id < self.num_clients:
            raise ValueError(
                f"partition-id={partition_id} outside [0, {self.num_clients})"
            )
        users = self.partitions[partition_id]
        split = self.dataset
        return (
            users,
            split.train.subset(np.isin(split.train.user, users)),
            split.test.subset(np.isin(split.test.user, users)),
        )

    def label_histograms(self) -> np.ndarray:
        raise ValueError(
            "dataset.task_type=recommendation has no class labels (label histograms "
            "need classification)"
        )

    # ----------------------------------------------------------------- model
    def build_model(self, num_users: int = 0) -> MatrixFactorization:  # type: ignore[override]
        model_cfg = dict(self.cfg["model"])
        num_items = self.ratings.num_items
        # the image default; the recommendation default is MF
        if model_cfg.get("name") == "auto":
            return build_recsys_model(
                "mf", num_items=num_items, num_users=num_users, seed=self.seed
            )
        model = instantiate(model_cfg)(
            num_items=num_items, num_users=num_users, seed=self.seed
        )
        if not isinstance(model, MatrixFactorization):
            raise ValueError(
                f"model={model_cfg.get('name')!r} is not a recommendation model; use "
                "model=mf"
            )
        return model

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return dict(shared_weights(self.build_model()))

    def evaluate_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Nothing to evaluate on the server: it holds no ratings (see the module
        docstring)."""
        return {}

    # ---------------------------------------------------------------- client
    def client(self, context: Context) -> NumPyClient:
        pid = int(context.node_config.get(keys.PARTITION_ID, 0))
        users, train, test = self.client_data(pid)
        full = self.ratings.subset(np.isin(self.ratings.user, users))
        negatives = sample_negatives(full, users, self.num_negatives, self.seed)
        client_cfg = dict(self.cfg["client"])
        kwargs = dict(
            model=self.build_model(num_users=len(users)),
            users=users,
            train=train,
            test=test,
            negatives=negatives,
            seed=self.seed * 100_003 + pid * 1009,
        )
        factory = instantiate(client_cfg) if "_target_" in client_cfg else RecsysClient
        cls = getattr(factory, "func", factory)
        if not (isinstance(cls, type) and issubclass(cls, RecsysClient)):
            logger.warning(
                "client._target_=%s is not a RecsysClient; using RecsysClient "
                "defaults (client=recsys)",
                client_cfg.get("_target_"),
            )
            factory = RecsysClient
        return factory(**kwargs)
