"""What every classifier of :mod:`paper_code.models` shares: :class:`Classifier` (the input
standardization as its first layer), the ImageNet statistics, and reading a weights file.

Every model returned by :func:`paper_code.models.load_model` takes images ``[B, 3, 224, 224]`` in
**[0, 1] pixel space** and applies its own input standardization as its first layer. Masks therefore
multiply the [0, 1] image *before* standardization, as in the official Opti-CAM code
(hanwei0912/OptiCAM, whose model wrapper normalizes inside; Section 5.2 and App. H of the paper):
a masked pixel is black.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline)."""


class Standardize(nn.Module):
    """(x - mean) / std per channel. ``enabled=False`` passes [0, 1] images through unchanged
    (the paper's "without normalization" setting, Table A.14)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``standardize`` then ``net``. Carries the metadata every method and notebook needs.

    Attributes:
        net: the wrapped network (layer names such as ``"layer4.2"`` are relative to it).
        target_layer: the paper's layer for this architecture.
        target_layer_name: its dotted name in ``net``.
        transform: PIL image -> ``[3, 224, 224]`` float tensor in [0, 1] (Resize 256, CenterCrop 224).
        categories: class names, index = class id.
        family: ``"cnn"`` or ``"vit"`` (methods declare the families they run on).
        reshape_transform: turns the target layer's output into ``[B, K, h, w]`` feature maps
            (``None`` for CNNs; tokens to a grid for transformers).
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        standardize: Standardize,
        target_layer_name: str,
        categories: Sequence[str],
        input_size: int = 224,
        family: str = "cnn",
        reshape_transform=None,
    ) -> None:
        super().__init__()
        self.name = name
        #: Identity of the weights (set by :func:`load_model`; part of every cache key).
        self.weights_id = "unknown"
        self.family = family
        self.reshape_transform = reshape_transform
        self.standardize = standardize
        self.net = net
        self.target_layer_name = target_layer_name
        self.categories = list(categories)
        self.input_size = input_size
        self.transform = transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(input_size), transforms.ToTensor()]
        )
        self.eval()

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def fused(self) -> bool:
        """True when no batch norm is left (:func:`fuse_for_inference`, the default of load_model)."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.net.modules())

    @property
    def target_layer(self) -> nn.Module:
        return self.get_layer(self.target_layer_name)

    def get_layer(self, layer: str | nn.Module | None) -> nn.Module:
        """Resolve a layer given as a module, a dotted name in ``net`` (``"features.42"``) or None (default)."""
        if layer is None:
            return self.target_layer
        if isinstance(layer, nn.Module):
            return layer
        names = dict(self.net.named_modules())
        if layer not in names or layer == "":
            close = [n for n in names if n and (n.startswith(layer.split(".")[0]))][:10]
            raise ValueError(
                f"model {self.name!r} has no layer {layer!r}; "
                f"default is {self.target_layer_name!r}; similar names: {close}"
            )
        return names[layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


@contextmanager
def without_standardization(model: Classifier) -> Iterator[Classifier]:
    """Temporarily feed [0, 1] images to the network unstandardized (Table A.14)."""
    old = model.standardize.enabled
    model.standardize.enabled = False
    try:
        yield model
    finally:
        model.standardize.enabled = old


def read_state_dict(path: str | os.PathLike) -> dict:
    """The state dict saved in ``path`` (``torch.load`` with ``weights_only=True``; a checkpoint
    that nests it under ``"state_dict"`` is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
