"""One entry point for every saliency method: :func:`explain`.

``explain(method, model, images, targets) -> Tensor[B, 1, H, W]`` in [0, 1], on the images' device.
Works with the classifiers of :func:`paper_code.load_model` and with any ``nn.Module`` that maps
``[B, 3, H, W]`` images in [0, 1] to logits (layer-based methods then need ``layer=``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from ..models.external import spatial_layers
from ..models.outputs import logits_of
from .base import check_images
from .hooks import FeatureLayer, ReshapeTransform
from .registry import get_method
from .targets import Target, resolve_targets


def resolve_layer(
    model: nn.Module,
    layer: str | nn.Module | FeatureLayer | None,
    reshape_transform: ReshapeTransform | None = None,
    method: str = "this method",
    images: torch.Tensor | None = None,
) -> FeatureLayer:
    """The feature layer to hook: a module, a dotted name in the model, or the model's default.

    ``paper_code`` classifiers resolve names in their ``net`` and default to the paper's layer (and
    carry their own ``reshape_transform`` for transformers); any other module resolves dotted names
    with ``get_submodule`` and has no default (given ``images``, the error then names the layers
    with spatial feature maps, last first).
    """
    if isinstance(layer, FeatureLayer):
        return layer
    if reshape_transform is None:
        reshape_transform = getattr(model, "reshape_transform", None)
    if hasattr(model, "get_layer"):
        return FeatureLayer(model.get_layer(layer), reshape_transform)
    if isinstance(layer, nn.Module):
        return FeatureLayer(layer, reshape_transform)
    if isinstance(layer, str):
        try:
            return FeatureLayer(model.get_submodule(layer), reshape_transform)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n][:20]
            raise ValueError(
                f"the model has no layer {layer!r}; its layers include: {', '.join(names)}"
            ) from None
    hint = ""
    if images is not None:
        found = [(n, shape) for n, shape, _ in spatial_layers(model, images[:1])][-3:][::-1]
        if found:
            hint = "; the last layers with spatial feature maps here: " + ", ".join(
                f"{name!r} {list(shape[1:])}" for name, shape in found
            )
    raise ValueError(
        f"{method} needs a feature layer: pass layer=<nn.Module or dotted name> for models that are "
        f"not paper_code classifiers (the paper uses the last convolutional block){hint}"
    )


def num_classes_of(model: nn.Module, images: torch.Tensor) -> int:
    """The number of classes: the model's ``num_classes`` or the width of its logits."""
    n = getattr(model, "num_classes", None)
    if n is None:
        with torch.no_grad():
            n = logits_of(model(images[:1])).shape[1]
    return int(n)


def explain(
    method: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | Target | None = None,
    *,
    layer: str | nn.Module | FeatureLayer | None = None,
    reshape_transform: ReshapeTransform | None = None,
    **options,
) -> torch.Tensor:
    """Saliency maps of ``method`` for ``images`` and their ``targets``.

    Args:
        method: an id of :data:`paper_code.methods.METHODS` (``python -m paper_code list`` shows them
            with their paper names and kinds).
        model: a :class:`paper_code.models.Classifier` or any ``nn.Module`` mapping ``[B, 3, H, W]``
            images in [0, 1] to logits ``[B, C]``, returned as a tensor, a tuple (logits first), a
            dict with ``"logits"`` or an object with ``.logits`` (Hugging Face); see
            :func:`paper_code.models.logits_of`. Works inside the caller's ``torch.no_grad()`` or
            ``torch.inference_mode()``: methods that need gradients turn them on themselves.
        images: ``[B, 3, H, W]`` float in [0, 1], on the model's device.
        targets: class indices (int, sequence or ``[B]`` tensor), ``None`` for the predicted class,
            or a target callable ``target(logits, index) -> scores`` (see
            :mod:`paper_code.methods.targets`).
        layer: the feature layer of layer-based methods (module or dotted name); default: the
            paper's layer of a ``paper_code`` classifier. Ignored by methods that need no layer.
        reshape_transform: turns the layer's output into ``[B, K, h, w]`` feature maps (e.g.
            :func:`paper_code.methods.hooks.tokens_to_grid` for ViT tokens); ``paper_code``
            transformers carry their own.
        **options: method-specific options (see each method's docstring).

    Returns:
        ``[B, 1, H, W]`` maps in [0, 1].

    >>> import torch, paper_code as pc
    >>> model = pc.load_model("tiny")
    >>> x = torch.rand(2, 3, 224, 224)
    >>> maps = pc.explain("opticam", model, x, [3, 7], iterations=5)
    >>> tuple(maps.shape), bool(maps.min() >= 0) and bool(maps.max() <= 1)
    ((2, 1, 224, 224), True)
    """
    spec = get_method(method)
    check_images(images, model)
    target = resolve_targets(model, images, targets, num_classes_of(model, images))
    family = getattr(model, "family", None)
    if family is not None and family not in spec.families:
        raise ValueError(
            f"{method} is not defined for {family} models (the paper runs it on: "
            f"{', '.join(spec.families)})"
        )
    feature_layer = (
        resolve_layer(model, layer, reshape_transform, method, images) if spec.needs_layer else None
    )
    params = inspect.signature(spec.fn).parameters
    if "progress" in options and "progress" not in params:
        options.pop("progress")  # single-pass methods have no loop to report on
    named = list(spec.defaults)  # its signature's options (and those it passes on, options_of)
    open_ended = spec.options_of is None and any(q.kind is q.VAR_KEYWORD for q in params.values())
    unknown = sorted(set(options) - set(named))
    if unknown and not open_ended:
        raise TypeError(
            f"{method} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(named) or 'none'}"
        )
    # Gradient and optimization methods need autograd even when the caller is in no_grad or
    # inference_mode (each method turns gradients on where it needs them); a tensor made under
    # inference_mode cannot enter an autograd graph, so it is copied.
    with torch.inference_mode(False):
        if images.is_inference():
            images = images.clone()
        maps = spec.fn(model, images, target, feature_layer, **options)
    check_output(method, maps, images)
    return maps


def check_output(method: str, maps: object, images: torch.Tensor) -> None:
    """Every method returns maps ``[B, 1, H, W]`` of the images' size with values in [0, 1] (the
    metrics multiply the image by them); anything else is named, with what is needed (the check a
    method from outside the package gets at every call)."""
    b, _, h, w = images.shape
    if not isinstance(maps, torch.Tensor):
        raise TypeError(
            f"method {method!r} returned {type(maps).__name__}, not a tensor [B, 1, H, W]"
        )
    if tuple(maps.shape) != (b, 1, h, w):
        raise ValueError(
            f"method {method!r} returned maps of shape {list(maps.shape)}; need [{b}, 1, {h}, {w}] "
            "(one map per image, at the images' size)"
        )
    if maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ValueError(f"method {method!r} returned maps with NaN or infinite values")
    if maps.numel() and (float(maps.min()) < -1e-4 or float(maps.max()) > 1 + 1e-4):
        raise ValueError(
            f"method {method!r} returned maps in [{float(maps.min()):.3g}, {float(maps.max()):.3g}]; "
            "maps must lie in [0, 1] (normalize them, e.g. paper_code.methods.maps.normalize_range)"
        )
