"""Shared parts of the metrics: metadata (:data:`METRICS`), input checks, chunking, probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..methods.forward import evaluation_forward
from ..methods.hooks import channels_last
from ..models.outputs import logits_of

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric (Quantus-style).

    Attributes:
        name: display name used in the paper's tables.
        direction: ``"higher"`` or ``"lower"`` is better.
        unit: ``"%"``, ``"ratio"`` or ``"log-ratio"``.
        equation: equation number in the paper, or the section/reference that defines it.
        category: ``"faithfulness"``, ``"robustness"``, ``"complexity"`` or ``"localization"``.
        function: the function of this module that computes it (and the key it returns).
    """

    name: str
    direction: str
    unit: str
    equation: str
    category: str
    function: str


#: Every metric of the paper, keyed by the name used in the returned dicts.
METRICS: dict[str, MetricInfo] = {
    "AD": MetricInfo("Average Drop", "lower", "%", "13", "faithfulness", "classification"),
    "AG": MetricInfo("Average Gain", "higher", "%", "15", "faithfulness", "classification"),
    "AI": MetricInfo("Average Increase", "higher", "%", "14", "faithfulness", "classification"),
    "I": MetricInfo(
        "Insertion", "higher", "%", "§5.3.2 (RISE)", "faithfulness", "insertion_deletion"
    ),
    "D": MetricInfo(
        "Deletion", "lower", "%", "§5.3.2 (RISE)", "faithfulness", "insertion_deletion"
    ),
    "AOPC": MetricInfo("AOPC", "higher", "%", "§5.3.3 (Samek 2016)", "faithfulness", "aopc"),
    "MS": MetricInfo(
        "Max-Sensitivity", "lower", "ratio", "§5.3.3 (Yeh 2019)", "robustness", "max_sensitivity"
    ),
    # The paper's Table 4 header says ADCC ↓; ADCC is higher-is-better by construction (SPEC §3.4).
    "ADCC": MetricInfo("ADCC", "higher", "%", "§5.3.3 (Poppi 2021)", "complexity", "adcc"),
    "OM": MetricInfo("Official metric", "lower", "%", "App. B", "localization", "localization"),
    "LE": MetricInfo("Localization error", "lower", "%", "App. B", "localization", "localization"),
    "F1": MetricInfo("Pixel-wise F1", "higher", "%", "App. B", "localization", "localization"),
    "BoxAcc": MetricInfo("MaxBoxAccV2", "higher", "%", "App. B", "localization", "box_accuracy"),
    "SP": MetricInfo("Standard pointing", "higher", "%", "App. B", "localization", "localization"),
    "EP": MetricInfo("Energy pointing", "higher", "%", "App. B", "localization", "localization"),
    "SM": MetricInfo(
        "Saliency metric", "lower", "log-ratio", "App. B", "localization", "localization"
    ),
}

# --------------------------------------------------------------------------- helpers


def _check(images: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor | None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {list(images.shape)}")
    if maps is None:
        return None
    if maps.dim() != 4 or maps.shape[1] != 1 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must be [B, 1, H, W] with B = {images.shape[0]}, got {list(maps.shape)}"
        )
    if maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"maps are {tuple(maps.shape[-2:])} but images are {tuple(images.shape[-2:])}; "
            "upsample the maps to the input resolution first"
        )
    return maps.to(device=images.device, dtype=images.dtype)


def _as_classes(classes, b: int, device: torch.device) -> torch.Tensor:
    c = torch.as_tensor(classes, device=device).long().reshape(-1)
    if c.numel() == 1:
        c = c.expand(b)
    if c.numel() != b:
        raise ValueError(f"need one class per image ({b}), got {c.numel()}")
    return c


def _classes(
    model: nn.Module,
    images: torch.Tensor,
    classes,
    batch_size: int,
    compile: bool | str | None = None,
) -> torch.Tensor:
    """Class indices ``[B]`` on the images' device; ``None`` -> predicted class of the original image."""
    if classes is None:
        return class_probs(model, images, None, batch_size=batch_size, compile=compile)[1]
    return _as_classes(classes, images.shape[0], images.device)


def default_batch_size() -> int:
    """Images per forward pass when ``batch_size=None``: 64 with a GPU; 6 on a CPU, where
    EfficientNet-Lite0 runs fastest per image in small batches (measured on 2 cores for
    insertion/deletion: 4.6-4.9 ms per forward pass at 6, 5.1-5.4 at 4, 5.7-5.9 at 8)."""
    return 64 if torch.cuda.is_available() else 6


def _chunks(n: int, size: int | None, progress: bool, desc: str) -> Iterator[slice]:
    size = default_batch_size() if size is None else size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    starts = range(0, n, size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, total=math.ceil(n / size))
    for s in starts:
        yield slice(s, min(s + size, n))


def _cl(x: torch.Tensor) -> torch.Tensor:
    """Channels-last input: with the model's weights in channels-last (:func:`hooks.channels_last`)
    convolutions run markedly faster on CPU (oneDNN) and GPU; the math is unchanged."""
    return x.contiguous(memory_format=torch.channels_last)


def _probs_of(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return logits_of(logits).double().softmax(1).gather(1, classes[:, None].long())[:, 0]


def class_probs(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    compile: bool | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probability (float64) of ``classes`` (default: the argmax) -> ``(probs [B], classes [B])``.

    ``compile``: the forward passes under ``torch.compile`` with static shapes
    (:func:`paper_code.methods.forward.evaluation_forward`; every metric takes it)."""
    cls = None if classes is None else _as_classes(classes, images.shape[0], images.device)
    out_p, out_c = [], []
    net = evaluation_forward(model, compile)
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(images.shape[0], batch_size, progress, "probs"):
            logits = logits_of(net(_cl(images[sl])))
            c = logits.argmax(1) if cls is None else cls[sl]
            out_c.append(c)
            out_p.append(_probs_of(logits, c))
    return torch.cat(out_p), torch.cat(out_c)


#: Spaces in which a metric can perturb an image (substrates, masking): see :func:`space_origin`.
SPACES = ("pixel", "standardized")


def _check_choice(name: str, value: object, valid: Sequence[str]) -> None:
    """One-line ``ValueError`` naming the valid values of a string option."""
    if value not in valid:
        raise ValueError(f"{name} must be one of {tuple(valid)}, got {value!r}")


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
    """
    _check_choice("space", space, SPACES)
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
    r"""The explanation image :math:`x \odot S` in [0, 1] pixel space (the map broadcast over channels)."""
    return images * _check(images, maps)


def selectivity(maps: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Selectivity transform of Fig. A4: :math:`S^\alpha` (element-wise; maps in [0, 1] stay in [0, 1])."""
    return maps.clamp(min=0) ** alpha


def summarize(results: dict[str, torch.Tensor]) -> dict[str, float]:
    """Dataset-level numbers: the NaN-ignoring mean of each per-image ``[B]`` entry of ``results``."""
    return {
        k: float(v.double().nanmean())
        for k, v in results.items()
        if isinstance(v, torch.Tensor) and v.dim() == 1 and v.is_floating_point()
    }
