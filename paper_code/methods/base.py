"""Low-level helpers shared by the explainers (:mod:`paper_code.methods`) and the metrics
(:mod:`paper_code.metrics`): checks of images, maps and options, class indices, batch sizes and
chunks. Each exists once, here; callers whose defaults differ pass them as arguments.

Pure torch, no model logic: what an explainer or a metric does with a chunk is its own business.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = [
    "check_choice",
    "check_images",
    "check_maps",
    "chunks",
    "class_indices",
    "default_batch_size",
    "index_chunks",
    "positive_int",
    "resolve_batch_size",
]

# --------------------------------------------------------------------------- checks


def check_images(
    images: torch.Tensor, model: nn.Module | None = None, *, pixels: bool = True
) -> None:
    """Raise a clear error unless ``images`` is a ``[B, 3, H, W]`` tensor (Section 3.1 of the
    paper: RGB images, masked element-wise by maps at the input resolution).

    ``pixels=True`` (the explainers' contract) also requires floating point values in the [0, 1]
    pixel space, since every model of :mod:`paper_code.models` standardizes inside, as the
    official Opti-CAM code's wrapper does (hanwei0912/OptiCAM); the metrics pass ``False`` and
    accept any values (e.g. images shifted to test a baseline). With ``model``, the images must be
    on the device of its parameters.

    >>> check_images(torch.zeros(2, 3, 8, 8))
    >>> check_images(torch.zeros(3, 8, 8))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: images must have shape [B, 3, H, W] (a batch of RGB images), got [3, 8, 8]; ...
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape [B, 3, H, W] (a batch of RGB images), got {list(images.shape)}; "
            "add a batch dimension with images[None] for a single image"
        )
    if pixels and not images.is_floating_point():
        raise TypeError(
            f"images must be floating point in [0, 1], got dtype {images.dtype}; "
            "convert uint8 images with images.float() / 255"
        )
    if pixels and images.numel() and (images.min() < -1e-4 or images.max() > 1 + 1e-4):
        raise ValueError(
            f"images must be in [0, 1] pixel space (the model standardizes internally), got values in "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]; do not pass standardized tensors"
        )
    if model is not None:
        p = next(iter(model.parameters()), None)
        if p is not None and p.device != images.device:
            raise ValueError(
                f"images are on {images.device} but the model is on {p.device}; move them with .to()"
            )


def check_maps(maps: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
    r"""``maps`` checked to be ``[B, 1, H, W]`` and, given ``images``, one per image at the images'
    resolution (the paper's masking :math:`x \odot S`, Section 3.1, needs the upsampled map);
    returned on the images' device and in their dtype.

    >>> check_maps(torch.ones(2, 1, 8, 8, dtype=torch.float64), torch.zeros(2, 3, 8, 8)).dtype
    torch.float32
    """
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must be [B, 1, H, W], got {list(maps.shape)}")
    if images is None:
        return maps
    if maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must be [B, 1, H, W] with B = {images.shape[0]}, got {list(maps.shape)}"
        )
    if maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"maps are {tuple(maps.shape[-2:])} but images are {tuple(images.shape[-2:])}; "
            "upsample the maps to the input resolution first"
        )
    return maps.to(device=images.device, dtype=images.dtype)


def check_choice(name: str, value: object, valid: Sequence[object]) -> None:
    """One-line ``ValueError`` naming the valid values of an option.

    >>> check_choice("tie_break", "raster", ("raster", "numpy"))
    >>> check_choice("tie_break", "random", ("raster", "numpy"))
    Traceback (most recent call last):
    ...
    ValueError: tie_break must be one of ('raster', 'numpy'), got 'random'
    """
    if value not in valid:
        raise ValueError(f"{name} must be one of {tuple(valid)}, got {value!r}")


def positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (a bool is not), else a ``ValueError``.

    >>> positive_int("batch_size", 4)
    4
    >>> positive_int("n_samples", True)
    Traceback (most recent call last):
    ...
    ValueError: n_samples must be a positive int, got True
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- classes


def class_indices(
    classes: int | Sequence[int] | torch.Tensor,
    batch: int,
    device: torch.device | str,
    *,
    num_classes: int | None = None,
    strict: bool = True,
) -> torch.Tensor:
    """One class index per image, ``[batch]`` long on ``device``: the class :math:`c` of the
    paper's :math:`y_c` (Section 3.1). A single index (an int, a 1-element list or tensor) is
    repeated for every image; otherwise there must be exactly one per image.

    ``strict`` (the explainers' contract) rejects bools and floating-point indices; the metrics
    pass ``False`` and truncate any numeric input with ``.long()``. ``num_classes``: also check the
    range ``0 .. num_classes - 1``. The predicted class (``classes=None``) is not resolved here: it
    needs the caller's own forward pass.

    >>> class_indices(3, 2, "cpu").tolist(), class_indices([1, 4], 2, "cpu").tolist()
    ([3, 3], [1, 4])
    """
    if strict and isinstance(classes, bool):
        raise TypeError("targets must be class indices, not a bool")
    c = torch.as_tensor(classes)
    if strict and (c.is_floating_point() or c.dtype == torch.bool):
        raise TypeError(f"targets must be integer class indices, got dtype {c.dtype}")
    c = c.long().reshape(-1)
    if c.numel() == 1 and batch != 1:
        c = c.expand(batch).clone()
    if c.numel() != batch:
        raise ValueError(
            f"need one class per image: got {c.numel()} targets for a batch of {batch} images"
        )
    if num_classes is not None:
        bad = (c < 0) | (c >= num_classes)
        if bad.any():
            raise ValueError(
                f"target class {c[bad][0].item()} out of range: the model has {num_classes} "
                f"classes (valid 0..{num_classes - 1})"
            )
    return c.to(device)


# --------------------------------------------------------------------------- batches and chunks


def default_batch_size(cpu: int = 6, device: torch.device | str | None = None) -> int:
    """Images per forward pass when a caller's ``batch_size`` is ``None``: 64 with a GPU, ``cpu``
    on a CPU. ``device``: decide by that device; ``None``: by whether a GPU exists.

    The CPU values were measured on 2 cores with EfficientNet-Lite0 (``benchmarks/``): the
    metrics' and Score-CAM's forward passes are fastest per image in small batches (6 (the
    default): insertion/deletion 4.6-4.9 ms per forward pass, 5.1-5.4 at 4, 5.7-5.9 at 8;
    Score-CAM 2.3-2.5 s per image at 6, 2.6-2.7 at 4, 2.8-3.2 at 8, 7.8 at 64); Ablation-CAM runs
    only the layers after its layer and passes ``cpu=64`` (1.3 s per image at 8, 0.4 at 32); LIME
    passes ``cpu=10`` and its images' device.

    >>> default_batch_size(device="cpu"), default_batch_size(10, "cpu"), default_batch_size(6, "cuda")
    (6, 10, 64)
    """
    gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return 64 if gpu else cpu


def resolve_batch_size(
    batch_size: int | None, cpu: int = 6, device: torch.device | str | None = None
) -> int:
    """``batch_size`` checked by :func:`positive_int`, or :func:`default_batch_size` for ``None``.

    >>> resolve_batch_size(None, device="cpu"), resolve_batch_size(4)
    (6, 4)
    """
    if batch_size is None:
        return default_batch_size(cpu, device)
    return positive_int("batch_size", batch_size)


def chunks(n: int, size: int, *, progress: bool = False, desc: str = "") -> Iterator[slice]:
    """Consecutive slices of at most ``size`` of ``range(n)``, with a tqdm bar when ``progress``
    (the library prints nothing otherwise).

    >>> [(s.start, s.stop) for s in chunks(7, 3)]
    [(0, 3), (3, 6), (6, 7)]
    """
    size = positive_int("batch_size", size)
    starts: Iterator[int] | range = range(0, n, size)
    if progress:
        from tqdm import tqdm

        starts = iter(tqdm(starts, desc=desc, total=math.ceil(n / size)))
    for s in starts:
        yield slice(s, min(s + size, n))


def index_chunks(n: int, batch_size: int | None, device: torch.device | str) -> list[torch.Tensor]:
    """Index tensors of consecutive chunks of at most ``batch_size`` images; one chunk with all
    of them when ``batch_size`` is ``None`` (for methods that optimize every image on its own,
    where a chunk changes no result: Opti-CAM, Extremal Perturbation).

    >>> [c.tolist() for c in index_chunks(5, 2, "cpu")], len(index_chunks(5, None, "cpu"))
    ([[0, 1], [2, 3], [4]], 1)
    """
    idx = torch.arange(n, device=device)
    size = n if batch_size is None else positive_int("batch_size", batch_size)
    if size >= n:
        return [idx]
    return [idx[sl] for sl in chunks(n, size)]
