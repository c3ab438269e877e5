"""paper_code: a faithful, batched, pure-torch reimplementation of Opti-CAM (Zhang et al., CVIU 2024).

Main entry points:

- :func:`load_model` -- classifiers taking [0, 1] images, standardization inside.
- :func:`load_dataset` -- the offline ``sample`` photos, ILSVRC2012 val, or any image folder.
- :func:`explain` -- Opti-CAM and the CAM baselines, one call.
- :mod:`paper_code.metrics` -- every evaluation metric of the paper.
"""

from . import metrics
from .data import load_dataset
from .explain import METHODS, PAPER_NAMES, explain
from .models import MODELS, load_model

__version__ = "0.1.0"

__all__ = ["METHODS", "MODELS", "PAPER_NAMES", "explain", "load_dataset", "load_model", "metrics"]
