"""ClientApp: Flower's quickstart shape; bouquet's compression_mod compresses the train
reply."""

from flwr.app import ArrayRecord
from flwr.app import Context
from flwr.app import Message
from flwr.app import MetricRecord
from flwr.app import RecordDict
from flwr.clientapp import ClientApp

from bouquet.clients import compression_mod
from bouquet.clients import downlink_mod
from quickstart_compressed.task import Net
from quickstart_compressed.task import histogram
from quickstart_compressed.task import load_data
from quickstart_compressed.task import train

# downlink_mod rebuilds the model from the server's compressed broadcast (outermost,
# first); compression_mod uploads the top-5% of every tensor's update, error feedback in
# context.state
app = ClientApp(mods=[downlink_mod, compression_mod("topk", alpha=0.05)])


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
    )
    loss = train(
        net,
        x,
        y,
        int(context.run_config["local-epochs"]),
        float(context.run_config["lr"]),
    )
    metrics = MetricRecord(
        {"train-loss": loss, "num-examples": len(y), "label-histogram": histogram(y)}
    )
    return Message(
        RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
        reply_to=msg,
    )
