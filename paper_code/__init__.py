"""paper_code: a faithful, batched, pure-torch reimplementation of Opti-CAM (Zhang et al., CVIU 2024).

Main entry points:

- :func:`load_model` -- classifiers taking [0, 1] images, standardization inside.
- :func:`load_dataset` -- the offline ``sample`` photos, ILSVRC2012 val, or any image folder.
- :func:`explain` -- Opti-CAM and the CAM baselines, one call.
- :mod:`paper_code.metrics` -- every evaluation metric of the paper.

Attributes are imported lazily, so ``python -m paper_code reproduce`` (which only drives papermill)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .names import MODELS, PAPER_NAMES

__version__ = "0.1.0"

_LAZY = {
    "explain": ("api", "explain"),
    "METHODS": ("api", "METHODS"),
    "load_model": ("models", "load_model"),
    "load_dataset": ("data", "load_dataset"),
    "metrics": ("metrics", None),
}

__all__ = ["METHODS", "MODELS", "PAPER_NAMES", "explain", "load_dataset", "load_model", "metrics"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'paper_code' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(f".{module}", __name__)
    if name == "METHODS":
        mod._load_methods()  # registering happens when the method modules are imported
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value
