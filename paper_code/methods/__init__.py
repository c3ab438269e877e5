"""Layer 2: every saliency method behind one registry and one call, :func:`explain`.

Importing this package registers the methods of every family: Opti-CAM (:mod:`.opticam`), the CAM
baselines and Fake-CAM (:mod:`.cams`). :data:`METHODS` maps each id to its :class:`MethodSpec`
(paper name, kind, whether it needs a layer, default options); tables, notebooks and the command
line read it. :mod:`.base` holds the low-level helpers the metrics share (image, map and class
checks, batch sizes, chunks).
"""

from __future__ import annotations

from . import attention, cams, opticam, perturbation, sampling  # noqa: F401  (importing registers the methods)
from .base import check_images
from .explain import explain, resolve_layer
from .hooks import FeatureLayer, tokens_to_grid
from .plugins import PluginError, load_plugins, register
from .registry import (
    METHODS,
    MethodSpec,
    PaperNames,
    get_method,
    method_for_paper_name,
    paper_names,
)

#: ``{id: paper name}`` of every registered method, kept current (derived from :data:`METHODS`).
PAPER_NAMES = PaperNames()

__all__ = [
    "METHODS",
    "PAPER_NAMES",
    "FeatureLayer",
    "MethodSpec",
    "PluginError",
    "check_images",
    "explain",
    "get_method",
    "load_plugins",
    "method_for_paper_name",
    "paper_names",
    "register",
    "resolve_layer",
    "tokens_to_grid",
]
