"""Overlay a saliency map on its image (for the CLI and the notebooks)."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image


def overlay(
    image: torch.Tensor, saliency: torch.Tensor, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """Blend ``image`` (``[3, H, W]`` in [0, 1]) with ``saliency`` (``[H, W]`` in [0, 1]) through ``cmap``."""
    img = image.detach().permute(1, 2, 0).clamp(0, 1).numpy()
    heat = colormaps[cmap](saliency.detach().clamp(0, 1).numpy())[..., :3]
    blend = (1 - alpha) * img + alpha * heat
    return Image.fromarray((blend * 255).round().astype(np.uint8))
