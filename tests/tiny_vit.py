"""The tiny random ViT of the transformer tests (one definition for all of them)."""

from __future__ import annotations

import pytest
import torch

from paper_code.models import Classifier
from paper_code.models.vit import wrap_timm_vit


def tiny_vit(depth: int = 3, seed: int = 0, affine: bool = True) -> Classifier:
    """A random 64x64 ViT: patch 8 (8x8 grid + class token), width 32, 2 heads, 10 classes.

    ``affine``: non-trivial LayerNorm affine parameters (timm initializes them to 1 and 0), so
    that a method that mishandles them gives other maps."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=64, patch_size=8, embed_dim=32,
        depth=depth, num_heads=2, num_classes=10,
    )  # fmt: skip
    if affine:
        with torch.no_grad():
            for mod in net.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.normal_(0.0, 0.2)
    return wrap_timm_vit("tiny_vit", net)
