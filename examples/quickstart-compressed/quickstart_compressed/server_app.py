"""ServerApp: KL-weighted FedAvg, malformed replies dropped, compressed replies decoded,
and the
global model broadcast compressed (both directions)."""

import json

from flwr.app import ArrayRecord
from flwr.app import ConfigRecord
from flwr.app import Context
from flwr.app import MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import ServerApp

from bouquet.strategies import Compressed
from bouquet.strategies import CompressedDownlink
from bouquet.strategies import KLWeightedFedAvg
from bouquet.strategies import ReplyGuard
from bouquet.strategies import scalar_metrics_mean
from quickstart_compressed.task import Net
from quickstart_compressed.task import evaluate
from quickstart_compressed.task import test_data

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rounds = int(context.run_config["num-server-rounds"])
    strategy = Compressed(
        ReplyGuard(
            KLWeightedFedAvg(  # three bouquet pieces, wrapped the documented way
                fraction_train=float(context.run_config["fraction-train"]),
                fraction_evaluate=0.0,
                train_metrics_aggr_fn=scalar_metrics_mean,
            )
        )
    )
    # outermost: broadcast STC steps of the global model (5% of each tensor) instead of
    # the model
    strategy = CompressedDownlink(strategy, "stc", alpha=0.05)
    x, y = test_data()

    def global_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = Net()
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(net, x, y)
        return MetricRecord({"loss": loss, "accuracy": acc})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=rounds,
        train_config=ConfigRecord(),
        evaluate_fn=global_eval,
    )
    out = str(context.run_config.get("out-file", ""))
    if out:
        with open(out, "w") as fh:
            json.dump(
                {
                    "train": {
                        str(r): dict(m)
                        for r, m in result.train_metrics_clientapp.items()
                    },
                    "eval": {
                        str(r): dict(m)
                        for r, m in result.evaluate_metrics_serverapp.items()
                    },
                },
                fh,
            )
