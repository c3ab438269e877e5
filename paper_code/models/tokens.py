"""Vision-transformer tokens as feature maps: what the CAM methods and Opti-CAM read from a ViT."""

from __future__ import annotations

import math

import torch


def tokens_to_grid(tokens: torch.Tensor, prefix_tokens: int = 1) -> torch.Tensor:
    """Vision-transformer tokens ``[B, prefix + h*w, D]`` -> feature maps ``[B, D, h, w]`` (square grid).

    The first ``prefix_tokens`` tokens (the class token; DeiT's distillation token makes 2) are
    dropped, as in pytorch-grad-cam's ViT tutorial.
    """
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens [B, N, D], got shape {list(tokens.shape)}")
    b, n, d = tokens.shape
    side = math.isqrt(n - prefix_tokens)
    if side * side != n - prefix_tokens:
        raise ValueError(
            f"{n} tokens minus {prefix_tokens} prefix token(s) do not form a square grid"
        )
    return tokens[:, prefix_tokens:].reshape(b, side, side, d).permute(0, 3, 1, 2)
