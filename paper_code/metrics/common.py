"""What several metrics share beyond the template (:mod:`paper_code.metrics.base`): the space in
which a metric perturbs an image (:func:`space_origin`), the explanation image
(:func:`mask_images`), the selectivity transform of Fig. A4 and the dataset-level mean
(:func:`summarize`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..methods.base import check_choice, check_images, check_maps

#: Spaces in which a metric can perturb an image (substrates, masking): see :func:`space_origin`.
SPACES = ("pixel", "standardized")


def space_origin(
    model: nn.Module,
    space: str,
    images: torch.Tensor,
    input_mean: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""The [0, 1] pixel value, per channel ``[1, C, 1, 1]``, of the **zero** of the space ``space``.

    A metric that sets pixels to 0, multiplies them by a map or pads a blur with zeros does so in one
    space, and the zero of that space is a colour:

    * ``"pixel"``: the [0, 1] image the metric receives (the official Opti-CAM wrapper standardizes
      inside the model, so reference code fed such a model sees these tensors): zero is **black**,
      the origin is 0.
    * ``"standardized"``: the tensor the network itself receives, :math:`z = (x - \mu)/\sigma`
      (what reference code sees when the data loader standardizes): zero is the **mean colour**
      :math:`\mu`. Read from ``model.standardize.mean`` of a :class:`paper_code.models.Classifier`
      (0 when its standardization is switched off, Table A.14: the network then receives [0, 1]
      pixels), or given as ``input_mean`` for any other module. Only :math:`\mu` is needed: the
      operations are affine per channel, so :math:`\sigma` cancels (e.g.
      :math:`\sigma\,(z \odot S) + \mu = (x - \mu) \odot S + \mu`).

    The metrics keep working on [0, 1] images and feed them to the model as usual; an operation made
    "in the standardized space" is written in pixel space around this origin :math:`v`: set to 0
    becomes set to :math:`v`, :math:`z \odot S` becomes :math:`(x - v) \odot S + v`, and a blur with
    zero padding becomes :math:`\mathrm{blur}_0(x - v) + v`.

    >>> import paper_code
    >>> model, x = paper_code.load_model("tiny"), torch.zeros(1, 3, 4, 4)
    >>> [round(v, 3) for v in space_origin(model, "standardized", x).flatten().tolist()]
    [0.485, 0.456, 0.406]
    >>> space_origin(model, "pixel", x).flatten().tolist()
    [0.0, 0.0, 0.0]
    """
    check_choice("space", space, SPACES)
    zeros = torch.zeros(1, images.shape[1], 1, 1, dtype=images.dtype, device=images.device)
    if space == "pixel":
        return zeros
    if input_mean is not None:
        mean = torch.as_tensor(input_mean, dtype=images.dtype, device=images.device).reshape(-1)
        if mean.numel() != images.shape[1]:
            raise ValueError(f"input_mean needs {images.shape[1]} values, got {mean.numel()}")
        return mean.view(1, -1, 1, 1)
    standardize = getattr(model, "standardize", None)
    mean = getattr(standardize, "mean", None)
    if not isinstance(mean, torch.Tensor):
        raise ValueError(
            f"the standardized space needs the mean the network subtracts: {type(model).__name__} "
            "has no standardize.mean (a paper_code.models.Classifier has one); pass input_mean"
        )
    if not getattr(standardize, "enabled", True):
        return zeros
    return mean.to(device=images.device, dtype=images.dtype).reshape(1, -1, 1, 1)


def mask_images(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    r"""The explanation image :math:`x \odot S` in [0, 1] pixel space (the map broadcast over
    channels), the masked input :math:`o^c` of eqs. (13)-(15) is computed on (Section 4).

    >>> mask_images(torch.ones(1, 3, 2, 2), torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]))[0, 0].tolist()
    [[0.0, 0.5], [1.0, 1.0]]
    """
    check_images(images, pixels=False)
    return images * check_maps(maps, images)


def selectivity(maps: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Selectivity transform of Fig. A4: :math:`S^\alpha` (element-wise; maps in [0, 1] stay in
    [0, 1]).

    >>> selectivity(torch.tensor([0.5, 1.0]), 2).tolist()
    [0.25, 1.0]
    """
    return maps.clamp(min=0) ** alpha


def summarize(results: dict[str, torch.Tensor]) -> dict[str, float]:
    """Dataset-level numbers, the paper's table entries (the mean over images of eqs. 13-15 and of
    every other metric): the NaN-ignoring mean of each per-image ``[B]`` entry of ``results``.

    >>> summarize({"AD": torch.tensor([1.0, 3.0, float("nan")]), "classes": torch.tensor([1, 2])})
    {'AD': 2.0}
    """
    return {
        k: float(v.double().nanmean())
        for k, v in results.items()
        if isinstance(v, torch.Tensor) and v.dim() == 1 and v.is_floating_point()
    }
