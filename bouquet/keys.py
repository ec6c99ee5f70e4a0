"""Record, metric and config keys shared by clients and strategies (defined once, kebab-case)."""

ARRAYS = "arrays"  # ArrayRecord key in train/evaluate messages (Flower's default)
CONFIG = "config"  # ConfigRecord key in train/evaluate messages (Flower's default)
METRICS = "metrics"  # MetricRecord key in replies
NUM_EXAMPLES = "num-examples"  # weight key (Flower's default `weighted_by_key`)
TRAIN_LOSS = "train-loss"
TRAIN_TIME = "train-time-s"
LABEL_HISTOGRAM = "label-histogram"  # list[int], counts per class of the client's data
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
SERVER_ROUND = "server-round"  # injected by Flower's strategies into the train config
LR = "lr"
LOCAL_EPOCHS = "local-epochs"
PARTITION_ID = "partition-id"  # node_config
NUM_PARTITIONS = "num-partitions"  # node_config
PROXIMAL_MU = "proximal-mu"  # sent by Flower's FedProx in the train config
