"""What identifies a result: the network, the method and every option that changes its maps, and
the settings of the metric and the table (:func:`result_key`, hashed by :func:`config_id`).

Every notebook keys its per-image rows with these, so a rerun with any changed parameter
computes new rows instead of reusing stale ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..methods import get_method
from ..models import Classifier
from .results import key_hash


def model_key(model: Classifier) -> dict:
    """What identifies the network a result came from: architecture, weights, inference form and
    whether it standardizes its input (Table A.14 switches that off)."""
    return {
        "model": model.name,
        "weights": getattr(model, "weights_id", "unknown"),
        "fused": bool(getattr(model, "fused", False)),
        "standardized": bool(model.standardize.enabled),
    }


def method_options(
    params: Mapping[str, Any], method: str, iterations: int | None = None
) -> dict[str, Any]:
    """The options a notebook passes to ``method``: Opti-CAM's iteration count (``iterations``, else
    the ``iterations`` parameter; ``None`` in both: the method's own default, 100) and whatever the
    ``method_options`` parameter sets for it (e.g. fewer LIME samples in the ``smoke`` profile,
    ``{"lime": {"num_samples": 50}}``). Every option enters the cache key (:func:`map_key`)."""
    options: dict[str, Any] = {}
    if method == "opticam":
        n = iterations if iterations is not None else params.get("iterations")
        options["iterations"] = opticam_iterations(n)
    options.update((params.get("method_options") or {}).get(method, {}))
    return options


def opticam_iterations(iterations: int | None = None) -> int:
    """The iterations Opti-CAM runs: ``iterations``, or its default when ``None``
    (:data:`paper_code.methods.opticam.ITERATIONS`, 100 as in App. A), the value pages and profiles
    mean by ``iterations: null``."""
    from ..methods.opticam import ITERATIONS

    return ITERATIONS if iterations is None else int(iterations)


#: Options that only split work (chunks, progress bars): the maps do not depend on them, so they
#: stay out of the cache key.
WORK_OPTIONS = ("layer", "progress", "batch_size", "samples_per_pass")


def map_key(model: Classifier, method: str, target_rule: str, options: Mapping[str, Any]) -> dict:
    """What identifies a set of cached maps: the method and every option that changes its maps
    (iterations, objective, normalization, start layer, areas, ...), the class rule and the network
    (:func:`model_key`: weights file and inference form included).

    The options are the *effective* ones: the method's defaults (read from its signature,
    :attr:`paper_code.methods.MethodSpec.defaults`) updated with ``options``, so that maps computed
    under an earlier default are never reused when a default changes."""
    spec = get_method(method)
    effective = {**spec.defaults, **options}
    return {
        "method": method,
        **model_key(model),
        "layer": (options.get("layer") or model.target_layer_name) if spec.needs_layer else None,
        "target": target_rule,
        "options": {k: v for k, v in sorted(effective.items()) if k not in WORK_OPTIONS},
    }


def result_key(
    model: Classifier,
    method: str,
    target_rule: str = "ground_truth",
    options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict:
    """What identifies a row of a result table: the maps' key plus the settings of the metric and the
    table (``settings``, e.g. insertion step, noise samples, variant). Every notebook keys its rows
    with :func:`config_id` of this, so a rerun with any changed parameter computes new rows instead
    of reusing stale ones."""
    return {"maps": map_key(model, method, target_rule, dict(options or {})), "settings": settings}


def config_id(key: Mapping[str, Any]) -> str:
    """Short stable hash of a :func:`result_key` (the ``config`` column of the result tables)."""
    return key_hash(key, 12)


def per_model(
    params: Mapping[str, Any], parameter: str, model_name: str, example: str
) -> str | None:
    """The value for ``model_name`` of a per-model parameter (``weights``, ``cam_layers``): a
    mapping ``{model: value}``; models it does not name get ``None`` (the default). A key that is
    no model name is refused with the valid names (a typo would otherwise pass silently)."""
    from ..models.external import is_external
    from ..names import MODELS

    given = params.get(parameter)
    if given is None:
        return None
    if not isinstance(given, Mapping):
        raise ValueError(
            f"{parameter} must map model names to values, e.g. {example}; got {given!r}"
        )
    unknown = sorted(m for m in map(str, given) if m not in MODELS and not is_external(m))
    if unknown:
        raise ValueError(
            f"{parameter} names unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}"
        )
    value = given.get(model_name)
    return None if value is None else str(value)


def model_weights(params: Mapping[str, Any], model_name: str) -> str | None:
    """The weights file of ``model_name`` named by the ``weights`` parameter, the one place every
    page reads it: a mapping ``{model: file}`` (``"random"`` for random initialization); models
    it does not name load their published weights (``None``)."""
    return per_model(params, "weights", model_name, "{resnet50: /path/r50.pth}")


def model_layer(params: Mapping[str, Any], model_name: str) -> str | None:
    """The CAM layer of ``model_name`` named by the ``cam_layers`` parameter, the one place every
    page reads it: a mapping ``{model: dotted layer name in model.net}``; models it does not name
    keep the paper's layer (or, for a network from outside the package, the rule of
    :mod:`paper_code.models.external`). The layer is part of every map's key."""
    return per_model(params, "cam_layers", model_name, "{resnet50: layer4.1}")
