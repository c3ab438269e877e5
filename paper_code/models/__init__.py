"""Layer 1 (models): classifiers with their input standardization inside, and how to load them.

:func:`load_model` returns a :class:`Classifier` that takes ``[B, 3, H, W]`` images in [0, 1].
Modules: :mod:`~paper_code.models.base` (the classifier wrapper), :mod:`~paper_code.models.cnn` and
:mod:`~paper_code.models.vit` (the networks), :mod:`~paper_code.models.loading` (by name, weights).
"""

from __future__ import annotations

from ..imagenet import imagenet_categories
from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    Standardize,
    WeightsUnavailableError,
    without_standardization,
)
from .cnn import EFFLITE_MEAN, EFFLITE_STD
from .loading import (
    checkpoint_info,
    fold_batchnorm,
    fuse_for_inference,
    load_model,
    loaded_weights,
    save_random_weights,
    weights_identity,
)
from .outputs import logits_of
from .tokens import tokens_to_grid

__all__ = [
    "EFFLITE_MEAN",
    "EFFLITE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Classifier",
    "Standardize",
    "WeightsUnavailableError",
    "checkpoint_info",
    "fold_batchnorm",
    "fuse_for_inference",
    "imagenet_categories",
    "load_model",
    "loaded_weights",
    "save_random_weights",
    "logits_of",
    "tokens_to_grid",
    "weights_identity",
    "without_standardization",
]
