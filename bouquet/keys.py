"""Record, metric and config keys shared by clients and strategies (defined once,
kebab-case)."""

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
LOCAL_STEPS = "local-steps"
PARTITION_ID = "partition-id"  # node_config
NUM_PARTITIONS = "num-partitions"  # node_config
PROXIMAL_MU = "proximal-mu"  # sent by Flower's FedProx in the train config
# async: global model version sent in the train config, echoed in the reply
MODEL_VERSION = "model-version"
SPEED_FACTOR = "speed-factor"  # simulated compute-time factor reported by SlowClient
RECSYS_USER_STATE = (
    "recsys-user-state"  # context.state ArrayRecord: a node's private user factors
)
EVAL_MSE = (
    "eval-mse"  # recommendation: mean squared error on the client's held-out ratings
)
EVAL_HR_AT_10 = (
    "eval-hr-at-10"  # recommendation: hit rate at 10 against sampled negatives
)
EVAL_NDCG_AT_10 = (
    "eval-ndcg-at-10"  # recommendation: NDCG at 10 against sampled negatives
)
# context.state ArrayRecord: a node's error-feedback residual (never sent)
EF_RESIDUAL = "ef-residual"
# context.state ArrayRecord: a node's DGC momentum u_t, masked where sent (never sent)
DGC_MOMENTUM = "dgc-momentum"
# train config: depth of the sub-model sent to a node (early exits)
SUBMODEL_DEPTH = "submodel-depth"
# node_config / reply metric: deepest sub-model a node can train (0 = no limit)
MAX_DEPTH = "max-depth"
TRAINED_DEPTH = "trained-depth"  # reply metric: depth of the sub-model the node trained
# query config: asks a node for its partition-id and max-depth (early exits)
NODE_INFO = "node-info"
RUN_OVERRIDES = (
    "overrides"  # run config ([tool.flwr.app.config]): Hydra overrides for `flwr run`
)
# run config: the ServerApp's output directory ("" = ~/.cache/bouquet/runs/...)
RUN_DIR = "run-dir"
# Asynchronous FedAvg, learner-side sliding window (S4): sent in every train config,
# echoed in the reply staleness of this node's previous applied update (absent before
# the first)
PREV_STALENESS = "prev-staleness"
# how many of this node's updates the server applied (a new sample when it grows)
APPLIED_UPDATES = "applied-updates"
LR_SCALE = "lr-scale"  # reply metric: the learning-rate scale the learner trained with
STALENESS_WINDOW = (
    "staleness-window"  # context.state ConfigRecord: a node's recent staleness samples
)
# Compressed downlink (CompressedDownlink + downlink_mod)
# ConfigRecord in train messages (version, base, digest, kind) and in replies (digest)
DOWNLINK = "bouquet-downlink"
DOWNLINK_STEP_PREFIX = (
    "bouquet-downlink-step-"  # + version: ArrayRecord of one broadcast step
)
DOWNLINK_HELD = (
    "bouquet-downlink-held"  # context.state ArrayRecord: the model this node holds
)
DOWNLINK_VERSION = (
    "bouquet-downlink-version"  # context.state ConfigRecord: its version and digest
)
# aggregated train metric: replies trained from another model
SYNC_MISMATCHES = "bouquet-sync-mismatches"
# aggregated train metric: bytes of multi-step catch-ups sent
CATCHUP_BYTES = "bouquet-catchup-bytes"
# starts a client's error reason when it cannot rebuild the broadcast model
DOWNLINK_RESYNC = "bouquet-downlink-resync"
# aggregated train metric: Array bytes of the train messages the downlink built
BYTES_DOWN = "bouquet-bytes-down"
# aggregated train metric: the same messages with the dense model
DENSE_BYTES_DOWN = "bouquet-dense-bytes-down"
# Shared-support uploads and secure aggregation (client=shared_topk, privacy=secagg)
SHARED_SEED = "bouquet-shared-seed"  # train config: seed of the round's coordinates
SHARED_K = "bouquet-shared-k"  # train config: how many coordinates
SECAGG_QUERY = "bouquet-secagg-keys"  # query config: the round whose key is asked for
# train config: node ids of the round's peers (this node included)
SECAGG_PEERS = "bouquet-secagg-peers"
SECAGG_PUBLIC = (
    "bouquet-secagg-public"  # query reply / train config: X25519 public key(s)
)
SHARED_ARRAY = "bouquet-shared"  # the reply's one array
