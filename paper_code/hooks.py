"""Context-managed forward hooks on a target layer.

Hooks live only inside a ``with`` block and are always removed on exit, so repeated calls never
accumulate hooks or keep activations alive (pytorch-grad-cam issue #78 style leaks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
