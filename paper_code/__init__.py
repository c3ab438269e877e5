"""paper_code: a faithful, batched, pure-torch reimplementation of Opti-CAM (Zhang et al., CVIU 2024).

Layers (each imports only the layers below it; ``tests/test_layers.py`` checks it):

0. :mod:`paper_code.names`, :mod:`paper_code.layout`, :mod:`paper_code.repository`,
   :mod:`paper_code.runtime`, :mod:`paper_code.imagenet` -- names, paths, settings and the ImageNet
   class names, importing nothing of the package's other layers (no torch);
1. :mod:`paper_code.models`, :mod:`paper_code.data` -- networks and datasets (never importing each
   other);
2. :mod:`paper_code.methods` -- every explainer behind one registry;
3. :mod:`paper_code.metrics` -- every evaluation metric of the paper;
4. :mod:`paper_code.experiments` -- the protocol run on a network and a dataset: the resumable
   loop, result storage, tables, claim checks, the report and the sensitivity analysis;
5. :mod:`paper_code.book` -- runs the book's notebooks and builds the site (never imports torch);
6. :mod:`paper_code.cli` and :mod:`paper_code.finetune` on top.

Main entry points:

- :func:`load_model` -- classifiers taking [0, 1] images, standardization inside.
- :func:`load_dataset` -- the offline ``sample`` photos, ILSVRC2012 val, or any image folder.
- :func:`explain` -- Opti-CAM and every baseline, one call.
- :mod:`paper_code.metrics` -- every evaluation metric of the paper.

Attributes are imported lazily, so ``python -m paper_code reproduce`` (which only drives papermill)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .names import MODELS

__version__ = "0.1.0"

_LAZY = {
    "explain": ("methods", "explain"),
    "register": ("methods", "register"),
    "load_plugins": ("methods", "load_plugins"),
    "METHODS": ("methods", "METHODS"),
    "PAPER_NAMES": ("methods", "PAPER_NAMES"),
    "load_model": ("models", "load_model"),
    "load_dataset": ("data", "load_dataset"),
    "metrics": ("metrics", None),
    "methods": ("methods", None),
    "models": ("models", None),
    "data": ("data", None),
}

__all__ = [
    "METHODS",
    "MODELS",
    "PAPER_NAMES",
    "explain",
    "load_dataset",
    "load_model",
    "load_plugins",
    "metrics",
    "register",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'paper_code' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value
