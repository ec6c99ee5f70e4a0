"""bouquet.data: offline loaders, partitioning and label histograms (numpy,
flwr-datasets)."""

from bouquet.data.loaders import (
    DATASETS,
    DataMissingError,
    Dataset,
    data_root,
    load_dataset,
    read_idx,
)
from bouquet.data.partition import (
    PARTITIONERS,
    SIZE_RULES,
    label_histogram,
    partition_indices,
    split_server_holdout,
    unbalanced_sizes,
    validate_partition_args,
)

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "SIZE_RULES",
    "DataMissingError",
    "Dataset",
    "data_root",
    "label_histogram",
    "load_dataset",
    "partition_indices",
    "read_idx",
    "split_server_holdout",
    "unbalanced_sizes",
    "validate_partition_args",
]
