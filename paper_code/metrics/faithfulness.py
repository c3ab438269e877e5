r"""Faithfulness metrics: AD (eq. 13), AI (eq. 14), AG (eq. 15), insertion / deletion and AOPC (SPEC §3.2-3.4)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from ..methods.forward import evaluation_forward
from ..methods.hooks import channels_last
from .common import _check, _chunks, _cl, _classes, _probs_of, default_batch_size

# --------------------------------------------------------------------------- AD / AG / AI


def classification(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | int,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    compile: bool | str | None = None,
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

    ``compile``: the forward passes under ``torch.compile`` with static shapes
    (:func:`paper_code.methods.forward.evaluation_forward`); for GPUs.

    Returns:
        dict with ``AD``, ``AG``, ``AI`` (float64 ``[B]``, %), and ``p``, ``o`` (the probabilities).
    """
    maps = _check(images, maps)
    cls = _classes(model, images, targets, batch_size, compile)
    ps, os_ = [], []
    net = evaluation_forward(model, compile)
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(images.shape[0], batch_size, progress, "AD/AG/AI"):
            x = images[sl]
            ps.append(_probs_of(net(_cl(x)), cls[sl]))
            os_.append(_probs_of(net(_cl(x * maps[sl])), cls[sl]))
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
    compile: bool | str | None = None,
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
        compile: the forward passes under ``torch.compile`` with static shapes (``True``, a mode
            or a backend name; :func:`paper_code.methods.forward.evaluation_forward`): for GPUs.

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
    cls = _classes(model, images, classes, batch_size, compile)
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
    net = evaluation_forward(model, compile)
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
            probs[sl] = _probs_of(net(_cl(x)), cls[rows % b])
    curves = probs.view(len(modes), b, n_eval)
    out: dict[str, torch.Tensor] = {"classes": cls}
    for i, m in enumerate(modes):
        out[m] = _auc(curves[i]) * 100
        if return_curves:
            out[f"{m}_curve"] = curves[i]
    return out


# --------------------------------------------------------------------------- AOPC


AGGREGATIONS = ("samek", "quantus")


def aopc(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    patch: int = 14,
    regions: int = 10,
    baseline: str | float = "black",
    aggregation: str = "samek",
    seed: int = 0,
    batch_size: int | None = None,
    return_curves: bool = False,
    return_drops: bool = False,
    progress: bool = False,
    compile: bool | str | None = None,
) -> dict[str, torch.Tensor]:
    r"""AOPC of region perturbation, most relevant first (Samek et al. 2016; Section 5.3.3), per image, in %.

    The image is split into a grid of non-overlapping ``patch``×``patch`` regions (16×16 regions of 14×14
    at 224; a last partial row/column is kept). Regions are ranked by their summed saliency (descending;
    ties by raster index). :math:`x_k` replaces the :math:`k` most relevant regions by the baseline,
    cumulatively, :math:`k = 1..L` with :math:`L =` ``regions``, and :math:`x_0 = x`. With the drops
    :math:`d_k = f_c(x) - f_c(x_k)` (so :math:`d_0 = 0`):

    .. math::
        \mathrm{AOPC}_\text{samek} = \frac{1}{L+1}\sum_{k=0}^{L} d_k \cdot 100, \qquad
        \mathrm{AOPC}_\text{quantus} = \frac{1}{L}\sum_{k=1}^{L} d_k \cdot 100
        = \frac{L+1}{L}\,\mathrm{AOPC}_\text{samek}.

    ``aggregation="samek"`` (default) is Samek et al.'s definition (it
    averages over :math:`k = 0..L` and so includes the zero drop at :math:`k = 0`); we keep it as the
    default because it is the published definition of AOPC and the paper cites Samek for it.
    ``aggregation="quantus"`` is the mean of what Quantus' ``RegionPerturbation`` returns, the curve
    :math:`(d_1, \dots, d_L)` (Quantus 0.6 returns the curves and no AOPC scalar; its
    ``get_auc_score`` is the unnormalized trapezoid of the curve, another number again). The paper
    used Quantus (patch 14, 10 regions) without saying how it turned the curve into one number, so
    both are defensible; they differ by the factor :math:`11/10`.

    :math:`f_c` is the **softmax probability** of class :math:`c` (Quantus' ``RegionPerturbation``
    default ``softmax=True``); default class: the predicted class. Baselines (pixel space, before
    standardization): ``"black"`` (0), ``"min"`` (the per-image minimum over all channels and pixels,
    which is what Quantus 0.6's ``"black"`` actually is: ``arr.min()``, equal to 0 whenever the image
    has a 0 value; Quantus' current default, older versions used ``"uniform"``, SPEC §3.4), ``"mean"``
    (per-channel mean of the region), ``"uniform"`` (U(0, 1) noise from a CPU generator seeded with
    ``seed``), or a float constant.

    Differences from Quantus that can matter: Quantus orders regions with ``np.argsort(-sums)``
    (quicksort, not stable), so its order of **tied** regions is unspecified (ours: raster order);
    maps with tied region sums (e.g. large zero areas, constant maps) can differ. When
    ``patch`` does not divide the image, Quantus pads symmetrically (the grid is shifted) where we keep
    a partial last row/column; at 224 with patch 14 neither happens. Quantus works in float32; we
    compute probabilities in float64. ``tests/test_quantus_oracle.py`` checks the drops against Quantus.

    ``compile``: the forward passes under ``torch.compile`` with static shapes
    (:func:`paper_code.methods.forward.evaluation_forward`); for GPUs.

    Returns:
        dict with ``AOPC`` (float64 ``[B]``, %), ``classes``; with ``return_curves`` also
        ``AOPC_curve`` ``[B, L + 1]`` (probabilities :math:`f_c(x_k)`, :math:`k = 0..L`); with
        ``return_drops`` also ``AOPC_drops`` ``[B, L]`` (:math:`d_k`, :math:`k = 1..L`, as fractions:
        Quantus' curve).
    """
    maps = _check(images, maps)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    b, _, h, w = images.shape
    cls = _classes(model, images, classes, batch_size, compile)
    sums = nn.functional.avg_pool2d(maps, patch, patch, ceil_mode=True, divisor_override=1)
    gh, gw = sums.shape[-2:]
    pranks = saliency_ranks(sums).view(b, 1, gh, gw)
    pranks = pranks.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
    if baseline == "black":
        base = torch.zeros_like(images[:1]).expand_as(images)
    elif baseline == "min":
        base = images.amin(dim=(1, 2, 3), keepdim=True).expand_as(images)
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
            f"baseline must be 'black', 'min', 'mean', 'uniform' or a number, got {baseline!r}"
        )
    n_eval = regions + 1
    total = b * n_eval
    probs = torch.empty(total, dtype=torch.float64, device=images.device)
    net = evaluation_forward(model, compile)
    with channels_last(model), torch.inference_mode():
        for sl in _chunks(total, batch_size, progress, "AOPC"):
            e = torch.arange(sl.start, sl.stop, device=images.device)
            img, k = e // n_eval, e % n_eval
            x = torch.where(pranks[img] < k.view(-1, 1, 1, 1), base[img], images[img])
            probs[sl] = _probs_of(net(_cl(x)), cls[img])
    curve = probs.view(b, n_eval)
    drops = curve[:, :1] - curve  # [B, L + 1], d_0 = 0
    score = drops.mean(1) if aggregation == "samek" else drops[:, 1:].mean(1)
    out = {"AOPC": score * 100, "classes": cls}
    if return_curves:
        out["AOPC_curve"] = curve
    if return_drops:
        out["AOPC_drops"] = drops[:, 1:]
    return out
