"""The one activation-capture path of every layer-based method (Opti-CAM, gradient CAMs, Score-CAM,
Ablation-CAM), with context-managed forward hooks.

Hooks live only inside a ``with`` block and are always removed on exit, so repeated calls never
accumulate hooks or keep activations alive (pytorch-grad-cam issue #78 style leaks).

A layer is given as an ``nn.Module`` or as a :class:`FeatureLayer`, which adds a
``reshape_transform``: a function from the layer's raw output to feature maps ``[B, K, h, w]``
(for a vision transformer, tokens ``[B, 1 + h*w, D]`` to ``[B, D, h, w]`` with the class token
dropped: :func:`tokens_to_grid`). Every capture checks that the hooked layer ran exactly once in
the forward pass: a module shared by several places of the network (EfficientNet's ReLU6 is used by
the stem and the head) cannot be hooked unambiguously.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..models.outputs import logits_of
from ..models.tokens import tokens_to_grid  # noqa: F401  (re-exported: the ViT reshape)

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureLayer:
    """A layer to hook and how to turn its output into feature maps ``[B, K, h, w]``."""

    module: nn.Module
    reshape_transform: ReshapeTransform | None = None


def as_feature_layer(
    layer: nn.Module | FeatureLayer | None, method: str = "this method"
) -> FeatureLayer:
    """``layer`` as a :class:`FeatureLayer` (a clear error if it is neither a module nor one)."""
    if isinstance(layer, FeatureLayer):
        return layer
    if isinstance(layer, nn.Module):
        return FeatureLayer(layer)
    raise ValueError(
        f"{method} needs a feature layer (an nn.Module or a dotted name in the model), "
        f"got {type(layer).__name__}"
    )


class LayerCapture:
    """Holds what a hooked layer produced during the last forward pass."""

    def __init__(self, detach_for_grad: bool = False) -> None:
        self.detach_for_grad = detach_for_grad
        self.output: torch.Tensor | None = None
        self.calls = 0
        self.replacement: torch.Tensor | None = None

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"target layer {type(module).__name__} returned {type(output).__name__}; "
                "choose a layer whose output is a single tensor [B, K, h, w]"
            )
        self.calls += 1
        if self.replacement is not None:
            # Downstream layers see the replacement (used by Ablation-CAM); it may have another batch size.
            self.output = self.replacement
            return self.replacement
        if self.detach_for_grad:
            # Cut the graph at the layer: gradients w.r.t. the activation need no backward pass through
            # the layers before it, and work even when the network's weights are frozen.
            out = output.detach().requires_grad_(True)
            self.output = out
            return out
        self.output = output
        return None


@contextmanager
def capture(layer: nn.Module, detach_for_grad: bool = False) -> Iterator[LayerCapture]:
    """Record ``layer``'s output while the block runs; the hook is removed on exit, even on error."""
    cap = LayerCapture(detach_for_grad=detach_for_grad)
    handle = layer.register_forward_hook(cap.hook)
    try:
        yield cap
    finally:
        handle.remove()
        cap.output = None
        cap.replacement = None


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Freeze all weights (``requires_grad=False``) and switch to eval mode; restore both on exit.

    Opti-CAM and the gradient CAMs only need gradients w.r.t. the input or an activation, never
    w.r.t. weights: freezing them skips weight-gradient computation and memory.
    """
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


@contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run the block with the model's 4-D weights in channels-last memory format, then restore them.

    On CPU (oneDNN) and on GPU (cuDNN) convolutions are markedly faster in channels-last; results are
    equal up to floating-point summation order.
    """
    if not enabled:
        yield model
        return
    restore = [
        p
        for p in list(model.parameters()) + list(model.buffers())
        if p.dim() == 4
        and p.is_contiguous()
        and not p.is_contiguous(memory_format=torch.channels_last)
    ]
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for p in restore:
            p.data = p.data.contiguous()


def _activation(cap: LayerCapture, layer: FeatureLayer) -> torch.Tensor:
    """The captured output as feature maps ``[B, K, h, w]``; checks the layer ran exactly once."""
    if cap.calls != 1 or cap.output is None:
        raise ValueError(
            f"the target layer {type(layer.module).__name__} ran {cap.calls} times in one forward "
            "pass; choose a layer that runs exactly once (a module shared by several places in the "
            "network cannot be hooked unambiguously)"
        )
    acts = cap.output
    if layer.reshape_transform is not None:
        acts = layer.reshape_transform(acts)
    if acts.dim() != 4:
        raise ValueError(
            f"the target layer must output feature maps [B, K, h, w], got shape {list(acts.shape)}"
            "; pass a reshape_transform for token layers (e.g. paper_code.methods.hooks.tokens_to_grid)"
        )
    return acts


def forward_features(
    model: nn.Module, images: torch.Tensor, layer: nn.Module | FeatureLayer
) -> tuple[torch.Tensor, torch.Tensor]:
    """One clean forward pass: feature maps :math:`A_\\ell(x)` ``[B, K, h, w]`` and the logits (no grad)."""
    layer = as_feature_layer(layer)
    with torch.no_grad(), capture(layer.module) as cap:
        logits = logits_of(model(images))
        acts = _activation(cap, layer).detach()
    return acts, logits


def forward_with_gradients(
    model: nn.Module,
    images: torch.Tensor,
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    layer: nn.Module | FeatureLayer,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Activations :math:`A` and gradients :math:`g = \partial y_c / \partial A`, both ``[B, K, h, w]``.

    The activation is detached at the layer, so the backward pass stops there. With a
    ``reshape_transform`` the gradient is taken w.r.t. the raw output and reshaped the same way (the
    transform only selects and permutes entries, so this is the gradient w.r.t. the reshaped map).
    """
    layer = as_feature_layer(layer)
    with torch.enable_grad(), capture(layer.module, detach_for_grad=True) as cap:
        logits = logits_of(model(images))
        _activation(cap, layer)  # checks
        raw = cap.output
        index = torch.arange(images.shape[0], device=logits.device)
        scores = target(logits, index).sum()
        grads = None
        if scores.requires_grad:
            (grads,) = torch.autograd.grad(scores, raw, allow_unused=True)
    if grads is None:  # the score does not depend on the layer
        grads = torch.zeros_like(raw)
    reshape = layer.reshape_transform or (lambda t: t)
    return reshape(raw.detach()), reshape(grads.detach())
