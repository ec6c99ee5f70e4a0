"""bouquet.models: torch models and the shared train / evaluate loops."""

from bouquet.models.small import MLP, MODELS, LeNet, build_model
from bouquet.models.training import evaluate, get_weights, set_weights, train

__all__ = [
    "MLP",
    "MODELS",
    "LeNet",
    "build_model",
    "evaluate",
    "get_weights",
    "set_weights",
    "train",
]
