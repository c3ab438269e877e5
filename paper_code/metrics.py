r"""Evaluation metrics of the paper (SPEC §3), batched and in pure torch on the model's device.

Conventions shared by every metric:

* Images are ``[B, 3, H, W]`` in **[0, 1] pixel space** and maps ``[B, 1, H, W]`` in [0, 1]. Masking is
  :math:`x \odot S` on the [0, 1] image, *before* the model's own standardization (SPEC §3.1), so a
  masked pixel is black. Use :func:`paper_code.models.without_standardization` for Table A.14.
* Every function returns **per-image** values (a ``[B]`` tensor, or a dict of them); the paper's number
  is their mean (:func:`summarize`). Values are in % where the paper reports %.
* Probabilities are ``softmax`` of the model's logits, computed in float64 so that :math:`1 - p` stays
  accurate for confident predictions (a project choice; the paper is silent).
* Forward passes run in chunks of ``batch_size`` images under ``torch.inference_mode``; ``progress=True``
  shows a tqdm bar (off by default).
* :data:`METRICS` declares each metric's direction, unit and equation, Quantus-style.

Localization metrics (Appendix B) live in :mod:`paper_code.localization` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from .hooks import channels_last
from .localization import (
    box_accuracy,
    box_crop_probs,
    box_mask,
    box_variants,
    largest_component_box,
    localization,
    predicted_boxes,
    summarize_localization,
)

__all__ = [
    "METRICS",
    "MetricInfo",
    "adcc",
    "aopc",
    "blur_substrate",
    "box_accuracy",
    "box_crop_probs",
    "box_mask",
    "box_variants",
    "class_probs",
    "classification",
    "insertion_deletion",
    "largest_component_box",
    "localization",
    "mask_images",
    "max_sensitivity",
    "predicted_boxes",
    "selectivity",
    "summarize",
    "summarize_localization",
]

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


def _classes(model: nn.Module, images: torch.Tensor, classes, batch_size: int) -> torch.Tensor:
    """Class indices ``[B]`` on the images' device; ``None`` -> predicted class of the original image."""
    if classes is None:
        return class_probs(model, images, None, batch_size=batch_size)[1]
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
    return logits.double().softmax(1).gather(1, classes[:, None].long())[:, 0]


def class_probs(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probability (float64) of ``classes`` (default: the argmax) -> ``(probs [B], classes [B])``."""
    cls = None if classes is None else _as_classes(classes, images.shape[0], images.device)
    out_p, out_c = [], []
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(images.shape[0], batch_size, progress, "probs"):
            logits = model(_cl(images[sl]))
            c = logits.argmax(1) if cls is None else cls[sl]
            out_c.append(c)
            out_p.append(_probs_of(logits, c))
    return torch.cat(out_p), torch.cat(out_c)


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


# --------------------------------------------------------------------------- AD / AG / AI


def classification(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | int,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    r"""Average Drop, Average Increase and Average Gain, eqs. (13)–(15), per image, in %.

    With :math:`p_i` the softmax probability of the target class :math:`c` (the **ground truth**,
    Section 4) for image :math:`x_i` and :math:`o_i` the same for :math:`x_i \odot S_i`:

    .. math::
        \mathrm{AD}_i = \frac{[p_i - o_i]_+}{p_i}\cdot 100 \quad (13), \qquad
        \mathrm{AI}_i = \mathbb{1}[p_i < o_i]\cdot 100 \quad (14), \qquad
        \mathrm{AG}_i = \frac{[o_i - p_i]_+}{1 - p_i}\cdot 100 \quad (15).

    The paper's AD/AI/AG are the means over images. Why AG (Section 4): AD measures the *magnitude* of a
    probability loss, AI only the *frequency* of any gain, so they are not symmetric. A trivial map such
    as Fake-CAM (ones everywhere but one pixel) leaves :math:`o \approx p`: AD near 0 and AI near 50%,
    "beating" every real method on both. AG is the symmetric counterpart of AD (the positive part of
    :math:`o - p` over its largest possible value :math:`1 - p`); AD and AG compete, and Fake-CAM gets AG
    near 0. The paper's primary pair is (AD, AG); AI is secondary.

    Choices where the paper is silent: probabilities in float64; :math:`0/0 := 0` (AD when
    :math:`p = 0`, AG when :math:`p = 1`, both of which force a zero numerator).

    Returns:
        dict with ``AD``, ``AG``, ``AI`` (float64 ``[B]``, %), and ``p``, ``o`` (the probabilities).
    """
    maps = _check(images, maps)
    cls = _classes(model, images, targets, batch_size)
    ps, os_ = [], []
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(images.shape[0], batch_size, progress, "AD/AG/AI"):
            x = images[sl]
            ps.append(_probs_of(model(_cl(x)), cls[sl]))
            os_.append(_probs_of(model(_cl(x * maps[sl])), cls[sl]))
    p, o = torch.cat(ps), torch.cat(os_)
    zero = torch.zeros_like(p)
    drop, gain = (p - o).clamp(min=0), (o - p).clamp(min=0)
    ad = torch.where(p > 0, drop / p.clamp(min=1e-300), zero) * 100
    ag = torch.where(p < 1, gain / (1 - p).clamp(min=1e-300), zero) * 100
    ai = (p < o).double() * 100
    return {"AD": ad, "AG": ag, "AI": ai, "p": p, "o": o}


# --------------------------------------------------------------------------- insertion / deletion


def blur_substrate(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Insertion start image: Gaussian blur (11×11, σ = 5 as in RISE), per channel, in [0, 1] space.

    torchvision's ``gaussian_blur``: a sampled Gaussian normalized to sum 1, separable, **reflect**
    padding. Project choice: RISE blurs the *standardized* tensor with zero padding (i.e. mean-colour
    borders); blurring [0, 1] pixels with zero padding would darken the borders, so we reflect instead.
    """
    return gaussian_blur(images, [kernel_size, kernel_size], [sigma, sigma])


def saliency_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel in decreasing-saliency order, ``[B, H*W]`` (0 = most salient).

    Ties are broken deterministically by raster index (stable sort): among equal values, the pixel that
    comes first in row-major order is processed first.
    """
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ar = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, ar)


def _auc(curves: torch.Tensor) -> torch.Tensor:
    """Normalized trapezoidal area (Σ − first/2 − last/2)/(n − 1) along the last dim (RISE)."""
    n = curves.shape[-1]
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (n - 1)


def insertion_deletion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    step: int = 224,
    kernel_size: int = 11,
    sigma: float = 5.0,
    substrate: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
    modes: Sequence[str] = ("I", "D"),
    batch_size: int | None = None,
    return_curves: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    r"""Insertion (I, ↑) and deletion (D, ↓) of Petsiuk et al. (RISE), Section 5.3.2, per image, in %.

    Pixels are processed in decreasing saliency order (:func:`saliency_ranks`), ``step`` pixels per step,
    :math:`n = \lceil HW/\text{step}\rceil` steps (224 steps of 224 pixels at 224×224) and :math:`n + 1`
    evaluations (225). At step :math:`t` the processed pixels are those with rank :math:`< t\cdot`step:

    * deletion: :math:`x_t = x \odot \mathbb{1}[\text{rank} \ge t\cdot\text{step}]`, processed pixels set
      to **0 in [0, 1] space** (black), before standardization;
    * insertion: :math:`x_t = \tilde x \odot \mathbb{1}[\text{rank} \ge t\cdot\text{step}] + x \odot
      \mathbb{1}[\text{rank} < t\cdot\text{step}]` with :math:`\tilde x` the blurred image
      (:func:`blur_substrate`) or ``substrate``.

    The curve is the softmax probability :math:`y_t` of class :math:`c` (default: the **predicted** class
    of the original image, SPEC §3.3) and the score the normalized trapezoidal AUC

    .. math:: \mathrm{AUC} = \frac{1}{n}\Big(\sum_{t=0}^{n} y_t - \tfrac{y_0}{2} - \tfrac{y_n}{2}\Big)\cdot 100.

    All :math:`B\cdot(n+1)` perturbed images are built on the fly, ``batch_size`` at a time, from the rank
    maps (one comparison per chunk; no loop over steps or images). Speed: on a GPU use large chunks; on
    a 2-core CPU, EfficientNet-Lite0 in ``channels_last`` with ``batch_size`` 4–8 was fastest (large
    chunks fall out of cache; see ``benchmarks/bench_metrics.py``).

    Args:
        substrate: insertion start image ``[B, 3, H, W]`` or a callable ``images -> substrate``.
        modes: which of ``"I"`` and ``"D"`` to compute.

    Returns:
        dict with ``I`` and/or ``D`` (float64 ``[B]``, %), ``classes`` ``[B]``; with ``return_curves``
        also ``I_curve`` / ``D_curve`` (float64 ``[B, n + 1]``, probabilities).
    """
    maps = _check(images, maps)
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    modes = tuple(modes)
    if not modes or any(m not in ("I", "D") for m in modes):
        raise ValueError(f"modes must be a non-empty subset of ('I', 'D'), got {modes}")
    b, _, h, w = images.shape
    cls = _classes(model, images, classes, batch_size)
    n_steps = math.ceil(h * w / step)
    n_eval = n_steps + 1
    ranks = saliency_ranks(maps).view(b, 1, h, w).int()
    # Per (mode, image): the image at step 0 ("start") and what replaces processed pixels ("finish").
    starts, finishes = [], []
    for m in modes:
        if m == "D":
            starts.append(images)
            finishes.append(torch.zeros_like(images[:1]).expand_as(images))
        else:
            sub = substrate(images) if callable(substrate) else substrate
            sub = blur_substrate(images, kernel_size, sigma) if sub is None else sub
            starts.append(sub.to(images))
            finishes.append(images)
    start, finish = torch.cat(starts), torch.cat(finishes)
    total = len(modes) * b * n_eval
    probs = torch.empty(total, dtype=torch.float64, device=images.device)
    thresholds = (torch.arange(n_eval, device=images.device, dtype=torch.int32) * step).view(
        -1, 1, 1, 1
    )
    batch_size = default_batch_size() if batch_size is None else batch_size
    buf = torch.empty((min(batch_size, total), 3, h, w), dtype=images.dtype, device=images.device)
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(total, batch_size, progress, "insertion/deletion"):
            # Evaluation e <-> (row = mode * B + image, step t); a chunk spans few rows, so we loop over
            # rows (not steps) and let broadcasting build all of a row's steps in the chunk at once.
            x = buf[: sl.stop - sl.start]
            e = sl.start
            while e < sl.stop:
                row, t0 = divmod(e, n_eval)
                t1 = min(n_eval, t0 + sl.stop - e)
                done = ranks[row % b] < thresholds[t0:t1]  # [T, 1, H, W]
                torch.where(
                    done, finish[row], start[row], out=x[e - sl.start : e - sl.start + t1 - t0]
                )
                e += t1 - t0
            rows = torch.arange(sl.start, sl.stop, device=images.device) // n_eval
            probs[sl] = _probs_of(model(_cl(x)), cls[rows % b])
    curves = probs.view(len(modes), b, n_eval)
    out: dict[str, torch.Tensor] = {"classes": cls}
    for i, m in enumerate(modes):
        out[m] = _auc(curves[i]) * 100
        if return_curves:
            out[f"{m}_curve"] = curves[i]
    return out


# --------------------------------------------------------------------------- AOPC


def aopc(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    patch: int = 14,
    regions: int = 10,
    baseline: str | float = "black",
    seed: int = 0,
    batch_size: int | None = None,
    return_curves: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    r"""AOPC of region perturbation, most relevant first (Samek et al. 2016; Section 5.3.3), per image, in %.

    The image is split into a grid of non-overlapping ``patch``×``patch`` regions (16×16 regions of 14×14
    at 224; a last partial row/column is kept). Regions are ranked by their summed saliency (descending;
    ties by raster index). :math:`x_k` replaces the :math:`k` most relevant regions by the baseline,
    cumulatively, :math:`k = 1..L` with :math:`L =` ``regions``, and :math:`x_0 = x`:

    .. math:: \mathrm{AOPC} = \frac{1}{L+1}\sum_{k=0}^{L}\big(f_c(x) - f_c(x_k)\big)\cdot 100,

    where :math:`f_c` is the **softmax probability** of class :math:`c` (a choice: Quantus scores whatever
    the model outputs; we use probabilities, in %, like every other metric here). Default class: the
    predicted class. Baselines (pixel space, before standardization): ``"black"`` (0; the current
    Quantus default, SPEC §3.4), ``"mean"`` (per-channel mean of the region), ``"uniform"`` (U(0, 1)
    noise from a CPU generator seeded with ``seed``), or a float constant. Quantus may evaluate
    overlapping windows; we use the grid.

    Returns:
        dict with ``AOPC`` (float64 ``[B]``, %), ``classes``; with ``return_curves`` also
        ``AOPC_curve`` ``[B, L + 1]`` (probabilities :math:`f_c(x_k)`).
    """
    maps = _check(images, maps)
    b, _, h, w = images.shape
    cls = _classes(model, images, classes, batch_size)
    sums = nn.functional.avg_pool2d(maps, patch, patch, ceil_mode=True, divisor_override=1)
    gh, gw = sums.shape[-2:]
    pranks = saliency_ranks(sums).view(b, 1, gh, gw)
    pranks = pranks.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
    if baseline == "black":
        base = torch.zeros_like(images[:1]).expand_as(images)
    elif baseline == "uniform":
        gen = torch.Generator().manual_seed(seed)
        base = torch.rand(images.shape, generator=gen, dtype=images.dtype).to(images.device)
    elif baseline == "mean":
        means = nn.functional.avg_pool2d(images, patch, patch, ceil_mode=True)
        base = means.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
    elif isinstance(baseline, (int, float)):
        base = torch.full_like(images, float(baseline))
    else:
        raise ValueError(
            f"baseline must be 'black', 'mean', 'uniform' or a number, got {baseline!r}"
        )
    n_eval = regions + 1
    total = b * n_eval
    probs = torch.empty(total, dtype=torch.float64, device=images.device)
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(total, batch_size, progress, "AOPC"):
            e = torch.arange(sl.start, sl.stop, device=images.device)
            img, k = e // n_eval, e % n_eval
            x = torch.where(pranks[img] < k.view(-1, 1, 1, 1), base[img], images[img])
            probs[sl] = _probs_of(model(_cl(x)), cls[img])
    curve = probs.view(b, n_eval)
    out = {"AOPC": (curve[:, :1] - curve).mean(1) * 100, "classes": cls}
    if return_curves:
        out["AOPC_curve"] = curve
    return out


# --------------------------------------------------------------------------- Max-Sensitivity


def _explain_chunks(
    explainer: Explainer,
    x: torch.Tensor,
    c: torch.Tensor,
    bs: int | None,
    progress: bool = False,
    desc: str = "",
) -> torch.Tensor:
    return torch.cat([explainer(x[sl], c[sl]) for sl in _chunks(x.shape[0], bs, progress, desc)])


def uniform_perturbation(
    images: torch.Tensor, radius: float, generator: torch.Generator, clamp: bool = True
) -> torch.Tensor:
    """x + U(−r, r) noise, drawn on the CPU from ``generator`` (device-independent), clamped to [0, 1]."""
    noise = (
        torch.rand(images.shape, generator=generator, dtype=images.dtype) * (2 * radius) - radius
    )
    out = images + noise.to(images.device)
    return out.clamp(0, 1) if clamp else out


def max_sensitivity(
    explainer: Explainer,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    *,
    radius: float = 0.2,
    samples: int = 10,
    seed: int = 0,
    clamp: bool = True,
    maps: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Max-Sensitivity (Yeh et al. 2019; Section 5.3.3), per image (a ratio, not %; lower is better).

    .. math:: \mathrm{MS}(x) = \max_{s=1..N} \frac{\lVert S(x) - S(x + \epsilon_s)\rVert_F}
              {\lVert S(x)\rVert_F}, \qquad \epsilon_s \sim \mathcal U[-r, r]^{3\times H\times W},

    with :math:`r` = ``radius`` (Quantus "lower bound" 0.2) and :math:`N` = ``samples`` (10), and the map
    recomputed by ``explainer(images, classes) -> maps [B, 1, H, W]`` for the *same* classes.

    Choices where the paper is silent: the noise is added in [0, 1] pixel space (before the model's
    standardization; r = 0.2 is about 0.9 standard deviations of ImageNet pixels) and the result is
    clamped to [0, 1] (``clamp=False`` reproduces Quantus'/Captum's unclamped noise); the noise comes
    from a CPU generator seeded with ``seed``, sample by sample, each sample drawing one
    ``[B, 3, H, W]`` tensor; the normalization by :math:`\lVert S(x)\rVert_F` is Quantus' and Captum's
    default, and a zero map uses denominator 1 (as Captum). Maps are not re-normalized (explainers
    already return maps in [0, 1]). ``maps`` may pass precomputed :math:`S(x)`.
    """
    _check(images)
    cls = _as_classes(classes, images.shape[0], images.device)
    # The explainer runs with autograd enabled: gradient methods and Opti-CAM need it.
    s0 = _explain_chunks(explainer, images, cls, batch_size) if maps is None else maps
    with torch.no_grad():
        s0 = s0.detach().to(images.device).flatten(1).double()
        denom = s0.norm(dim=1)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        gen = torch.Generator().manual_seed(seed)
        # All samples are drawn first (same draws, same order as one sample at a time) and explained
        # together in chunks of batch_size: no chunk is smaller than it has to be.
        xs = torch.cat([uniform_perturbation(images, radius, gen, clamp) for _ in range(samples)])
        b = images.shape[0]
        with torch.enable_grad():
            s1 = _explain_chunks(
                explainer, xs, cls.repeat(samples), batch_size, progress, "Max-Sensitivity"
            ).detach()
        s1 = s1.flatten(1).view(samples, b, -1)
        best = torch.zeros_like(denom)
        for s in range(samples):
            best = torch.maximum(best, (s0 - s1[s].double()).norm(dim=1) / denom)
    return best


# --------------------------------------------------------------------------- ADCC


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp(min=1e-300), torch.zeros_like(den))


def adcc(
    model: nn.Module,
    explainer: Explainer,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    r"""ADCC of Poppi et al. (2021), Section 5.3.3, per image, in % (**higher** is better).

    .. math::
        \mathrm{ADCC} = \frac{3}{\frac{1}{\mathrm{Coh}} + \frac{1}{1-\mathrm{Com}} + \frac{1}{1-\mathrm{AD}}}
        \cdot 100,\quad
        \mathrm{Coh} = \frac{\rho(S, S') + 1}{2},\quad \mathrm{Com} = \frac{\lVert S\rVert_1}{HW},\quad
        \mathrm{AD} = \frac{[p - o]_+}{p},

    a harmonic mean, with :math:`\rho` the Pearson correlation of the flattened maps,
    :math:`S' =` ``explainer(x ⊙ S, c)``, and :math:`p, o` the softmax probabilities of class :math:`c`
    for :math:`x` and :math:`x\odot S`. :math:`c` defaults to the **predicted** class of :math:`x`
    (ADCC's convention; ``maps`` should explain that class). AD here is a fraction, not %. The paper's
    Table 4 arrow (↓) is a misprint (SPEC §3.4).

    Choices where the paper and ADCC are silent: a constant map has no defined correlation, we set
    :math:`\rho := 0` (Coh = 0.5); when any component is 0 (e.g. Com = 1 or AD = 1) the harmonic mean is
    its limit, 0.

    Returns:
        dict with ``ADCC`` (%), ``coherency``, ``complexity``, ``AD`` (fractions), all float64 ``[B]``.
    """
    maps = _check(images, maps)
    cls = _classes(model, images, classes, batch_size)
    masked = images * maps
    # The explainer runs with autograd enabled: gradient methods and Opti-CAM need it.
    s2 = _explain_chunks(explainer, masked, cls, batch_size).detach().to(images.device)
    s1f, s2f = maps.flatten(1).double(), s2.flatten(1).double()
    coherency = (_pearson(s1f, s2f) + 1) / 2
    complexity = s1f.abs().mean(1)
    ad = (
        classification(model, images, maps, cls, batch_size=batch_size, progress=progress)["AD"]
        / 100
    )
    comps = torch.stack([coherency, 1 - complexity, 1 - ad])
    harmonic = 3 / (1 / comps.clamp(min=1e-300)).sum(0)
    score = torch.where((comps > 0).all(0), harmonic, torch.zeros_like(harmonic)) * 100
    return {"ADCC": score, "coherency": coherency, "complexity": complexity, "AD": ad}
