"""Saliency-map primitives shared by every method: upsampling and the normalizations n(.).

All functions are batched, pure torch and keep the device and dtype of their input.
Maps are ``[B, 1, h, w]`` (or ``[B, K, h, w]`` for per-channel normalization).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Guard added to the denominator of the range and max normalizations (SPEC "Defaults" 5).
#: Neither the paper nor the official code gives one; a constant map becomes 0, matching the
#: paper's convention n(0) := 0 (Section 3.1).
EPS = 1e-8

NORMALIZATIONS = ("range", "max", "sigmoid")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """up(.): bilinear upsampling to the input resolution, ``align_corners=False`` (SPEC "Defaults" 6)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def normalize_range(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    r"""Range normalization, eqs. (4) and (16): :math:`n(A) = (A - \min A) / (\max A - \min A + \epsilon)`.

    Min and max are taken per map (over the last two dimensions). The :math:`\epsilon` guard is a
    project choice (SPEC "Defaults" 5): a constant map gives 0 everywhere instead of NaN.
    """
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True).unsqueeze(-1)
    hi = flat.amax(-1, keepdim=True).unsqueeze(-1)
    return (maps - lo) / (hi - lo + eps)


def normalize_max(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    r"""Maximum normalization, eq. (17): :math:`n(A) = A / \max A` (per map, :math:`\epsilon`-guarded).

    For non-negative CNN maps the result is in [0, 1]; an all-zero map stays 0.
    """
    hi = maps.flatten(-2).amax(-1, keepdim=True).unsqueeze(-1)
    return maps / (hi + eps)


def normalize_sigmoid(maps: torch.Tensor) -> torch.Tensor:
    r"""Sigmoid normalization, eq. (18): element-wise :math:`n(a) = 1 / (1 + e^{-a})`.

    The official code computes it through tanh; :math:`\sigma(a) = (\tanh(a/2) + 1)/2` is the same function.
    """
    return torch.sigmoid(maps)


def normalize(maps: torch.Tensor, kind: str = "range") -> torch.Tensor:
    """Apply the normalization named ``kind`` (one of :data:`NORMALIZATIONS`)."""
    if kind == "range":
        return normalize_range(maps)
    if kind == "max":
        return normalize_max(maps)
    if kind == "sigmoid":
        return normalize_sigmoid(maps)
    raise ValueError(f"unknown normalization {kind!r}; valid choices: {', '.join(NORMALIZATIONS)}")


def weighted_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    r"""The CAM form :math:`\sum_k w_k A^k`: ``[B, K]`` weights times ``[B, K, h, w]`` features -> ``[B, 1, h, w]``."""
    return torch.einsum("bk,bkhw->bhw", weights, features).unsqueeze(1)
