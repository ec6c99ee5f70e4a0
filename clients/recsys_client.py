"""A NumPyClient for federated matrix factorisation: item side shared, user side
private.

Federated collaborative filtering (Ammad-ud-din et al., arXiv:1901.09888, 2019) with the
biased MF of :mod:`bouquet.models.recsys`. The client

* receives only the ``shared.*`` arrays (global bias, item biases, item factors);
* keeps its users' factors and biases (``private.*``) in the node's ``context.state``
  under :data:`bouquet.keys.RECSYS_USER_STATE`, so they persist across rounds on that
  node and are never put into a reply;
* trains on its users' training ratings (MSE + L2 on the factors of each batch) and
  returns the shared arrays, ``num-examples`` (training ratings) and ``train-loss``;
* evaluates (``evaluate``) the received shared arrays with its own user factors on its
  users' held-out ratings: mean squared error of the clipped prediction, and HR@10 /
  NDCG@10 of every held-out item against the user's sampled negatives. Sums weighted by
  ``num-examples`` (held-out ratings) give the exact pooled values over all clients.

With ``codec`` set (``ternary``, ``stc``, ``topk``; see :mod:`bouquet.codecs`) the
upload is the update of the shared arrays,
:math:`u = w_{\\text{local}} - w_{\\text{received}}`, encoded by
:func:`bouquet.clients.compressed.compress_update` (error-feedback residual, if the
codec keeps one, in ``context.state`` under :data:`bouquet.keys.EF_RESIDUAL`); the
server decodes it with :class:`bouquet.strategies.Compressed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array
from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.common import NDArrays

from bouquet import keys
from bouquet.clients.bridge import Arrays
from bouquet.clients.bridge import EvaluateResult
from bouquet.clients.bridge import FitResult
from bouquet.clients.bridge import dense_arrayrecord
from bouquet.clients.compressed import compress_for
from bouquet.clients.torch_client import check_training_args
from bouquet.codecs import UpdateCompressor
from bouquet.codecs import make_compressor
from bouquet.data.movielens import Ratings
from bouquet.data.movielens import rank_metrics
from bouquet.models.recsys import PRIVATE_PREFIX
from bouquet.models.recsys import SHARED_PREFIX
from bouquet.models.recsys import MatrixFactorization
from bouquet.models.recsys import load_partial
from bouquet.models.recsys import private_weights
from bouquet.models.recsys import shared_weights

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")


class RecsysClient(NumPyClient):
    """Train biased MF on the ratings of a group of users (see module docstring).

    Parameters
    ----------
    model : MatrixFactorization
        Model with ``num_users == len(users)``.
    users : numpy.ndarray
        Sorted global ids of this client's users (row ``k`` of the private tables is
        ``users[k]``).
    train, test : Ratings
        This client's training and held-out ratings (global user ids, all in ``users``).
    negatives : numpy.ndarray
        ``len(users) x n`` sampled unrated items per user (HR@10 / NDCG@10).
    local_epochs, batch_size, lr : training settings (``lr`` and ``local-epochs`` may be
        overridden by the server's train config).
    optimizer : str
        ``adam`` or ``sgd`` (plain SGD), a fresh optimizer every round.
    reg : float
        L2 coefficient :math:`\\lambda` on the factors of each batch.
    rating_range : tuple of float
        Predictions are clipped to this range for the RMSE.
    seed : int
        Seeds the private initialisation and the batch order (``seed + server_round``).
    torch_threads : int
        ``torch.set_num_threads`` for this client.
    codec : str, optional
        Upload codec of :func:`bouquet.codecs.make_compressor` (``ternary``, ``stc``,
        ``topk``, ``dense``); ``None`` uploads the plain shared arrays.
    codec_args : dict, optional
        Keyword arguments of that codec (e.g. ``alpha`` for ``stc``/``topk``).
    """

    def __init__(
        self,
        model: MatrixFactorization,
        users: np.ndarray,
        train: Ratings,
        test: Ratings,
        negatives: np.ndarray,
        *,
        local_epochs: int = 1,
        batch_size: int = 256,
        lr: float = 0.01,
        optimizer: str = "adam",
        reg: float = 0.05,
        rating_range: tuple[float, float] = (1.0, 5.0),
        seed: int = 0,
        torch_threads: int = 1,
        codec: str | None = None,
        codec_args: dict[str, Any] | None = None,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"client.optimizer={optimizer!r} is unknown; allowed: "
                f"{', '.join(OPTIMIZERS)}"
            )
        check_training_args(local_epochs, batch_size, lr)
        if reg < 0:
            raise ValueError(f"client.reg={reg} must be >= 0")
        if len(negatives) != len(users):
            raise ValueError(
                f"negatives has {len(negatives)} rows for {len(users)} users"
            )
        if model.private.user_emb.shape[0] != len(users):
            raise ValueError(
                f"model holds {model.private.user_emb.shape[0]} users, client has "
                f"{len(users)}"
            )
        self.model = model
        self.users = np.asarray(users, dtype=np.int64)
        self.train_u = self._local(train.user)
        self.train_i = train.item
        self.train_r = train.rating.astype(np.float32)
        self.test_u = self._local(test.user)
        self.test_i = test.item
        self.test_r = test.rating.astype(np.float32)
        self.negatives = negatives
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.reg = reg
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))
        self.seed = seed
        self.torch_threads = torch_threads
        self.shared_names = list(shared_weights(model))
        self.compressor: UpdateCompressor | None = (
            None if codec is None else make_compressor(codec, **(codec_args or {}))
        )
        self.server_round = 0
        self.context: Context | None = None
        self._private: dict[str, np.ndarray] | None = (
            None  # used only without a node context
        )

    def _local(self, global_users: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.users, global_users)
        if len(global_users) and (
            idx.max() >= len(self.users) or np.any(self.users[idx] != global_users)
        ):
            raise ValueError("ratings contain users that this client does not hold")
        return idx.astype(np.int64)

    # ---------------------------------------------------------------- state
    def _load_private(self) -> None:
        stored: dict[str, np.ndarray] | None = self._private
        if (
            self.context is not None
            and keys.RECSYS_USER_STATE in self.context.state.array_records
        ):
            record = self.context.state.array_records[keys.RECSYS_USER_STATE]
            stored = {k: v.numpy() for k, v in record.items()}
        if stored is None:
            stored = self.model.init_private(self.seed)
        load_partial(self.model, stored, PRIVATE_PREFIX)

    def _save_private(self) -> None:
        arrays = private_weights(self.model)
        if self.context is not None:
            self.context.state[keys.RECSYS_USER_STATE] = ArrayRecord(
                {k: Array(v) for k, v in arrays.items()}
            )
        else:
            self._private = dict(arrays)

    def _load_shared(self, parameters: list[np.ndarray]) -> None:
        if len(parameters) != len(self.shared_names):
            raise ValueError(
                f"got {len(parameters)} arrays, expected the shared {self.shared_names}"
            )
        load_partial(
            self.model,
            dict(zip(self.shared_names, parameters, strict=True)),
            SHARED_PREFIX,
        )

    # ------------------------------------------------------------- NumPyClient
    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return list(shared_weights(self.model).values())

    def fit(self, parameters: NDArrays, config: dict[str, Any]) -> FitResult:
        torch.set_num_threads(self.torch_threads)
        self._load_shared(parameters)
        self._load_private()
        server_round = int(config.get(keys.SERVER_ROUND, 0))
        self.server_round = server_round
        epochs = int(config.get(keys.LOCAL_EPOCHS, self.local_epochs))
        lr = float(config.get(keys.LR, self.lr))
        start = time.perf_counter()
        loss = self._train(epochs, lr, seed=self.seed + server_round)
        self._save_private()
        metrics = {
            keys.TRAIN_LOSS: loss if np.isfinite(loss) else 0.0,
            keys.TRAIN_TIME: time.perf_counter() - start,
        }
        return self.get_parameters({}), len(self.train_r), metrics

    def _train(self, epochs: int, lr: float, seed: int) -> float:
        params = list(self.model.parameters())
        opt: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=lr)
            if self.optimizer == "adam"
            else torch.optim.SGD(params, lr=lr)
        )
        rng = np.random.default_rng(seed)
        u_all, i_all, r_all = (
            torch.from_numpy(a) for a in (self.train_u, self.train_i, self.train_r)
        )
        self.model.train()
        last = float("nan")
        for _ in range(epochs):
            total, count = 0.0, 0
            for idx in np.array_split(
                rng.permutation(len(r_all)), max(1, -(-len(r_all) // self.batch_size))
            ):
                if len(idx) == 0:
                    continue
                ix = torch.from_numpy(idx)
                u, i, r = u_all[ix], i_all[ix], r_all[ix]
                mse = torch.mean((self.model(u, i) - r) ** 2)
                loss = mse + self.reg * self.model.regulariser(u, i)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += mse.item() * len(idx)
                count += len(idx)
            last = total / count if count else float("nan")
        return last

    def encode_train_reply(
        self, names: Sequence[str], received: Arrays, returned: Arrays
    ) -> ArrayRecord:
        """The reply arrays: plain shared arrays, or their update encoded by
        ``codec``."""
        if self.compressor is None:
            return dense_arrayrecord(names, returned)
        return compress_for(self, names, received, returned)

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]) -> EvaluateResult:
        torch.set_num_threads(self.torch_threads)
        self._load_shared(parameters)
        self._load_private()
        mse, hr, ndcg = self.test_metrics()
        return (
            mse,
            len(self.test_r),
            {keys.EVAL_MSE: mse, keys.EVAL_HR_AT_10: hr, keys.EVAL_NDCG_AT_10: ndcg},
        )

    @torch.no_grad()
    def test_metrics(self) -> tuple[float, float, float]:
        """MSE (clipped predictions), HR@10 and NDCG@10 on this client's held-out
        ratings."""
        if len(self.test_r) == 0:
            return 0.0, 0.0, 0.0
        self.model.eval()
        u, i = torch.from_numpy(self.test_u), torch.from_numpy(self.test_i)
        pred = self.model(u, i).clamp(*self.rating_range).numpy()
        mse = float(np.mean((pred - self.test_r) ** 2))
        pos = self.model(u, i).numpy()
        neg = self.model.score_items(
            u, torch.from_numpy(self.negatives[self.test_u])
        ).numpy()
        hits, ndcg = rank_metrics(pos, neg, k=10)
        return mse, float(hits.mean()), float(ndcg.mean())
