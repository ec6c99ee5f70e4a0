"""scalar_metrics_mean: Flower's weighted mean of the scalar metrics, lists left out."""

from __future__ import annotations

import pytest
from conftest import make_reply
from flwr.serverapp.strategy import FedAvg

from bouquet.strategies.metrics import scalar_metrics_mean


def test_scalar_mean_matches_flower_and_drops_lists():
    replies = [
        make_reply(None, 10, {"train-loss": 1.0, "label-histogram": [5, 5]}, node_id=1),
        make_reply(
            None, 30, {"train-loss": 3.0, "label-histogram": [1, 29]}, node_id=2
        ),
    ]
    contents = [m.content for m in replies]
    ours = scalar_metrics_mean(contents, "num-examples")
    flower = FedAvg().train_metrics_aggr_fn(contents, "num-examples")
    assert "label-histogram" in flower and "label-histogram" not in ours
    assert (
        ours["train-loss"] == pytest.approx(flower["train-loss"]) == pytest.approx(2.5)
    )
    assert "num-examples" not in ours
