"""bouquet.models: torch models and the shared train / evaluate loops."""

from bouquet.models.small import MLP
from bouquet.models.small import MODELS
from bouquet.models.small import LeNet
from bouquet.models.small import build_model
from bouquet.models.training import evaluate
from bouquet.models.training import get_weights
from bouquet.models.training import set_weights
from bouquet.models.training import train

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
