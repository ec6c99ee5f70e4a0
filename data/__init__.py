"""bouquet.data: offline loaders, partitioning and label histograms (numpy,
flwr-datasets)."""

from bouquet.data.loaders import DATASETS
from bouquet.data.loaders import DataMissingError
from bouquet.data.loaders import Dataset
from bouquet.data.loaders import data_root
from bouquet.data.loaders import load_dataset
from bouquet.data.loaders import read_idx
from bouquet.data.partition import PARTITIONERS
from bouquet.data.partition import label_histogram
from bouquet.data.partition import partition_indices
from bouquet.data.partition import split_server_holdout
from bouquet.data.partition import validate_partition_args
from bouquet.data.unbalanced import SIZE_RULES
from bouquet.data.unbalanced import unbalanced_sizes

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
