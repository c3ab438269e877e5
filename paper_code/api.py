"""One entry point for every saliency method: :func:`explain`.

``explain(method, model, images, targets) -> Tensor[B, 1, H, W]`` in [0, 1], on the images' device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .names import PAPER_NAMES  # noqa: F401  (re-exported)
from .targets import Target, resolve_targets

#: Registered methods: name -> function(model, images, target, layer, **options) -> maps [B,1,H,W].
METHODS: dict[str, Callable[..., torch.Tensor]] = {}


def register(name: str) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        METHODS[name] = fn
        return fn

    return deco


def _load_methods() -> None:
    # Importing the modules registers their methods.
    from . import cams, opticam  # noqa: F401


def check_images(images: torch.Tensor, model: nn.Module | None = None) -> None:
    """Raise a clear error unless ``images`` is a float ``[B, 3, H, W]`` tensor in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape [B, 3, H, W] (a batch of RGB images), got {list(images.shape)}; "
            "add a batch dimension with images[None] for a single image"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floating point in [0, 1], got dtype {images.dtype}; "
            "convert uint8 images with images.float() / 255"
        )
    if images.numel() and (images.min() < -1e-4 or images.max() > 1 + 1e-4):
        raise ValueError(
            f"images must be in [0, 1] pixel space (the model standardizes internally), got values in "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]; do not pass standardized tensors"
        )
    if model is not None:
        p = next(iter(model.parameters()), None)
        if p is not None and p.device != images.device:
            raise ValueError(
                f"images are on {images.device} but the model is on {p.device}; move them with .to()"
            )


def explain(
    method: str,
    model: nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | Target | None = None,
    *,
    layer: str | nn.Module | None = None,
    **options,
) -> torch.Tensor:
    """Saliency maps of ``method`` for ``images`` and their ``targets``.

    Args:
        method: one of :data:`METHODS` (``opticam``, ``fakecam``, ``gradcam``, ``gradcampp``,
            ``xgradcam``, ``layercam``, ``hirescam``, ``scorecam``, ``ablationcam``).
        model: a :class:`paper_code.models.Classifier` (or any module taking [0, 1] images; then
            ``layer`` must be a module).
        images: ``[B, 3, H, W]`` float in [0, 1], on the model's device.
        targets: class indices (int, sequence or ``[B]`` tensor), ``None`` for the predicted class,
            or a target callable (see :mod:`paper_code.targets`).
        layer: the feature layer (module or dotted name in ``model.net``); default: the paper's layer.
        **options: method-specific options (see each method's docstring).

    Returns:
        ``[B, 1, H, W]`` maps in [0, 1].
    """
    _load_methods()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(sorted(METHODS))}")
    check_images(images, model)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(images[:1]).shape[1]
    target = resolve_targets(model, images, targets, num_classes)
    if hasattr(model, "get_layer"):
        layer_module = model.get_layer(layer)
    elif isinstance(layer, nn.Module):
        layer_module = layer
    elif method == "fakecam":
        layer_module = None
    else:
        raise ValueError("pass layer=<nn.Module> for models that are not paper_code Classifiers")
    fn = METHODS[method]
    if "progress" in options and "progress" not in inspect.signature(fn).parameters:
        options.pop("progress")  # single-pass methods have no loop to report on
    return fn(model, images, target, layer_module, **options)
