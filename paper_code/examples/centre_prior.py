"""An example plugin: a saliency method that is in no paper, registered from outside the package.

The **centre prior** ignores the network and the image: its map is a Gaussian bump at the image
centre. It is the baseline every saliency method should beat (photographers centre their
subject, so ImageNet objects sit near the middle of the crop), and it shows how a method of yours
enters the paper's protocol: importing this module registers it, so

- ``python -m paper_code run table1 -p plugins '[paper_code.examples.centre_prior]'`` adds its
  row to Table 1 (and to every comparison table: 2, 3, 4, A.7, A.8), marked as not in the paper,
  with its interval and its paired difference with Opti-CAM;
- ``python -m paper_code evaluate --method paper_code.examples.centre_prior:centre_prior ...``
  puts it beside the paper's baselines on your own images;
- from Python, ``import paper_code.examples.centre_prior`` then ``paper_code.explain("centre_prior",
  ...)``.

A package of yours registers its methods the same way, or through an entry point of the group
``paper_code.methods`` (``[project.entry-points."paper_code.methods"] mine = "mypkg.cams"``).

>>> import torch, paper_code as pc
>>> import paper_code.examples.centre_prior  # importing a plugin registers its methods
>>> maps = pc.explain("centre_prior", pc.load_model("tiny"), torch.rand(1, 3, 224, 224), [0])
>>> round(float(maps[0, 0, 112, 112]), 3), round(float(maps[0, 0, 0, 0]), 3)
(1.0, 0.0)
"""

from __future__ import annotations

import torch
from torch import nn

import paper_code

__all__ = ["centre_prior"]


@paper_code.register("centre_prior", paper_name="Centre prior", kind="sanity", needs_layer=False)
def centre_prior(
    model: nn.Module,
    images: torch.Tensor,
    target,
    layer: nn.Module | None = None,
    *,
    sigma: float = 0.25,
) -> torch.Tensor:
    r"""A Gaussian bump at the centre, :math:`S(u, v) = n\big(\exp(-\frac{u^2 + v^2}{2\sigma^2})\big)`
    with :math:`u, v \in [-1, 1]` the normalized coordinates and :math:`n` the range normalization
    (so the corners are 0 and the centre 1); the same map for every image and class.

    Args:
        sigma: the bump's standard deviation, as a fraction of the half-size of the image.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    b, _, h, w = images.shape
    v = torch.linspace(-1, 1, h, device=images.device).view(h, 1)
    u = torch.linspace(-1, 1, w, device=images.device).view(1, w)
    bump = torch.exp(-(u**2 + v**2) / (2 * sigma**2))
    bump = (bump - bump.min()) / (bump.max() - bump.min())
    return bump.expand(b, 1, h, w).clone()
