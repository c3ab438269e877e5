"""The ImageNet class names, shared by the models (their ``categories``) and the datasets (the
labels of the sample photos and of ILSVRC2012), which never import each other."""

from __future__ import annotations


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in torchvision order (ships with torchvision; no download).

    >>> names = imagenet_categories()
    >>> len(names), names[0], names[207]
    (1000, 'tench', 'golden retriever')
    """
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
