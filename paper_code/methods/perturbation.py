r"""Extremal Perturbation (Fong, Patrick & Vedaldi, ICCV 2019), the paper's "ExPerturbation" baseline.

Written from the paper, with every setting at the default of TorchRay's ``extremal_perturbation``
(facebookresearch/TorchRay, ``torchray/attribution/extremal_perturbation.py``: the implementation
the Opti-CAM paper ran; no code reused: TorchRay is CC BY-NC). For an image :math:`x`, a class
score :math:`\Phi` and a target area :math:`a`, the *extremal perturbation* is the smooth mask of
area :math:`a` that keeps the score highest when everything outside it is blurred ("preserve"
variant):

.. math::
    m_a = \arg\max_{m} \; \Phi(m \otimes x) - \lambda\, R_a(m), \qquad
    R_a(m) = \tfrac{1}{N}\,\lVert \mathrm{vecsort}(m) - r_a \rVert^2 ,

where

- :math:`m \otimes x` is the *blur perturbation*: pixel :math:`u` of the image blurred with a
  Gaussian of standard deviation :math:`\sigma_{\max}(1 - m(u))` (:func:`blur_pyramid`, :func:`perturb`);
- :math:`m` is a *smooth mask*: a smooth max of kernel-weighted parameters on a coarse grid
  (:class:`SmoothMask`, :func:`smooth_max`);
- :math:`R_a` is the ranking area loss: the sorted mask values against :math:`r_a`, a vector of
  :math:`\lfloor N(1-a) \rfloor` zeros followed by ones (:func:`area_loss`);
- :math:`\lambda` grows geometrically during the optimization, so the area becomes a hard
  constraint; the parameters are updated by SGD with momentum and clamped to [0, 1].

Unlike TorchRay (one image at a time), :func:`optimize` runs a whole batch, and several areas per
image, as one set of rows on the model's device; every row is optimized independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..models.outputs import logits_of
from .base import index_chunks
from .hooks import channels_last, frozen
from .registry import register
from .targets import SubsetTarget, Target

#: TorchRay's defaults (``extremal_perturbation`` signature and body, facebookresearch/TorchRay).
AREAS = (0.1,)
ITERATIONS = 800
NUM_LEVELS = 8
MAX_BLUR = 20.0
STEP = 7
SIGMA = 21.0
COLDNESS = 20.0
LR = 0.01
MOMENTUM = 0.9
REGUL_WEIGHT = 300.0
REGUL_GROWTH = 1.0035

PERTURBATIONS = ("blur", "fade")
VARIANTS = ("preserve", "delete", "dual")


# --------------------------------------------------------------------------- perturbation pyramid


def gaussian_kernel1d(
    sigma: float, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""The 1-D Gaussian :math:`f_i \propto \exp(-i^2 / 2\sigma^2)`, :math:`i = -W..W`, :math:`W = \lceil 4\sigma \rceil`.

    Normalized to sum to 1 (TorchRay's ``imsmooth``). :math:`\sigma = 0` gives the identity ``[1]``.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    width = math.ceil(4 * sigma)
    if width == 0:
        return torch.ones(1, device=device, dtype=dtype)
    i = torch.arange(-width, width + 1, device=device, dtype=torch.float64)
    f = torch.exp(-(i**2) / (2 * sigma**2))
    return (f / f.sum()).to(dtype)


def gaussian_blur(
    images: torch.Tensor, sigma: float, pad_value: float | Sequence[float] = 0.0
) -> torch.Tensor:
    r""":math:`g_\sigma * x`: separable Gaussian blur (:func:`gaussian_kernel1d`), same size as ``images``.

    The image is extended by the constant ``pad_value`` (per channel if a sequence); TorchRay pads with
    zeros. Implemented as :math:`g_\sigma * (x - v) + v` with zero padding, which is the same because
    the kernel sums to 1.
    """
    f = gaussian_kernel1d(sigma, images.device, images.dtype)
    w = f.numel() // 2
    if w == 0:
        return images.clone()
    c = images.shape[1]
    v = torch.as_tensor(pad_value, device=images.device, dtype=images.dtype).reshape(-1, 1, 1)
    x = images - v if bool((v != 0).any()) else images
    x = F.conv2d(x, f.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(w, 0), groups=c)
    x = F.conv2d(x, f.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, w), groups=c)
    return x + v if bool((v != 0).any()) else x


def blur_pyramid(
    images: torch.Tensor,
    num_levels: int = NUM_LEVELS,
    max_blur: float = MAX_BLUR,
    perturbation: str = "blur",
    pad_value: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    r"""The perturbation pyramid :math:`y_l`, ``[B, L, C, H, W]``, from most (l = 0) to least perturbed.

    Blur (the paper's perturbation, Sec. 3 "perturbations"): :math:`y_l = g_{\sigma_l} * x` with
    :math:`\sigma_l = \sigma_{\max}(1 - l/(L-1))`, so :math:`y_{L-1} = x` and :math:`y_0` is blurred
    with :math:`\sigma_{\max}` (20 px by default). Fade (TorchRay's alternative):
    :math:`y_l = x \cdot l/(L-1)`. The sigmas are TorchRay's ``linspace`` levels in float32.
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(
            f"unknown perturbation {perturbation!r}; valid choices: {', '.join(PERTURBATIONS)}"
        )
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    if max_blur <= 0:
        raise ValueError(f"max_blur must be > 0, got {max_blur}")
    levels = torch.linspace(0, 1, num_levels).tolist()  # float32 grid, as TorchRay's
    with torch.no_grad():
        if perturbation == "blur":
            ys = [gaussian_blur(images, (1 - s) * max_blur, pad_value) for s in levels]
        else:
            ys = [images * s for s in levels]
    return torch.stack(ys, dim=1)


def perturb(pyramid: torch.Tensor, masks: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    r""":math:`m \otimes x`: each pixel reads the pyramid at level :math:`t = m(u)(L-1)`, interpolated linearly.

    With :math:`k = \lfloor t \rfloor` and :math:`w = t - k`:
    :math:`(m \otimes x)(u) = (1 - w)\, y_k(u) + w\, y_{\min(k+1, L-1)}(u)`. A mask value of 1 keeps
    the pixel, 0 gives the most perturbed level; :math:`m = k/(L-1)` gives level :math:`k` exactly.

    Args:
        pyramid: ``[B, L, C, H, W]`` (:func:`blur_pyramid`).
        masks: ``[N, 1, H, W]`` in [0, 1].
        index: ``[N]`` long, the image of the batch each mask belongs to.

    Returns:
        ``[N, C, H, W]``, differentiable w.r.t. ``masks``.
    """
    b, levels, c, h, w = pyramid.shape
    n = masks.shape[0]
    t = masks.reshape(n, h * w) * (levels - 1)
    k = t.detach().floor().clamp(0, levels - 1).long()
    frac = t - k
    flat = pyramid.reshape(b * levels, c, h * w).transpose(0, 1)  # [C, B*L, HW] view
    base = index.to(pyramid.device).long()[:, None] * levels
    with torch.no_grad():
        y0 = torch.gather(flat, 1, (base + k)[None].expand(c, n, h * w))
        y1 = torch.gather(flat, 1, (base + (k + 1).clamp(max=levels - 1))[None].expand(c, n, h * w))
        y0, y1 = y0.transpose(0, 1), y1.transpose(0, 1)  # [N, C, HW]
    out = y0 + frac[:, None] * (y1 - y0)
    return out.reshape(n, c, h, w)


# --------------------------------------------------------------------------- smooth masks


def smooth_max(values: torch.Tensor, dim: int, coldness: float = COLDNESS) -> torch.Tensor:
    r"""The smooth max of the paper (Sec. 3 "smooth masks"), :math:`\sum_k v_k\, e^{c v_k} / \sum_k e^{c v_k}`.

    :math:`c` is the coldness (1 / temperature; TorchRay's 20). It is the mean for :math:`c = 0` and
    tends to :math:`\max_k v_k` as :math:`c \to \infty`.
    """
    return (values * torch.softmax(coldness * values, dim=dim)).sum(dim)


def mask_kernel(z: torch.Tensor) -> torch.Tensor:
    r"""TorchRay's mask kernel :math:`k(z) = \exp(-2 \max(z - 1/2, 0)^2)`, :math:`z` = distance / :math:`\sigma`.

    Flat (= 1) within half a sigma of the grid point, then a Gaussian fall-off.
    """
    return torch.exp(-2 * (z - 0.5).clamp(min=0) ** 2)


class _SmoothMaxPool(torch.autograd.Function):
    r"""Smooth max over K kernel-weighted neighbours, memory-light.

    ``pu`` is ``[N, K, mh, mw]`` (parameter of neighbour k of each grid cell), ``weight`` is
    ``[K, s, s]`` (kernel value of neighbour k at each offset inside a cell). With
    :math:`v_k = \mathrm{weight}_k\, pu_k`, the output ``[N, mh, s, mw, s]`` is :func:`smooth_max` over k.
    Only the inputs and the output are kept for backward, where :math:`v` and the softmax weights
    :math:`p_k` are recomputed; the gradient is :math:`\partial o / \partial v_k = p_k (1 + c (v_k - o))`.
    The softmax is shifted by :math:`c \max_k \max(pu_k, 0) \ge c \max_k v_k` (the kernel is at most 1).
    """

    @staticmethod
    def _weights(pu, weight, coldness):
        v = pu[:, :, :, None, :, None] * weight[None, :, None, :, None, :]
        shift = pu.amax(1).clamp_min(0)[:, None, :, None, :, None]
        e = torch.exp((v - shift).mul_(coldness))
        den = e.sum(1, keepdim=True)
        return v, e, den

    #: Rows per chunk: the intermediates are ``81 * 266 * 266`` floats (23 MB) per row at 224 px;
    #: one row at a time keeps them in cache (batch 8 in one piece was 1.3x slower per image than
    #: one image at a time on a 2-core CPU). On a GPU the whole batch goes at once.
    CPU_CHUNK = 1

    @staticmethod
    def _rows(pu: torch.Tensor) -> list[slice]:
        n = pu.shape[0]
        step = n if pu.is_cuda else _SmoothMaxPool.CPU_CHUNK
        return [slice(i, min(i + step, n)) for i in range(0, n, max(step, 1))]

    @staticmethod
    def forward(ctx, pu: torch.Tensor, weight: torch.Tensor, coldness: float) -> torch.Tensor:
        outs = []
        for sl in _SmoothMaxPool._rows(pu):
            v, e, den = _SmoothMaxPool._weights(pu[sl], weight, coldness)
            outs.append(e.mul_(v).sum(1) / den[:, 0])
        out = torch.cat(outs)
        ctx.save_for_backward(pu, weight, out)
        ctx.coldness = coldness
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pu, weight, out = ctx.saved_tensors
        c = ctx.coldness
        grads = []
        for sl in _SmoothMaxPool._rows(pu):
            v, e, den = _SmoothMaxPool._weights(pu[sl], weight, c)
            e.div_(den)  # softmax weights p_k
            g = v.sub_(out[sl, None]).mul_(c).add_(1).mul_(e).mul_(grad[sl, None])
            g.mul_(weight[None, :, None, :, None, :])
            grads.append(g.sum((3, 5)))
        return torch.cat(grads), None, None


class SmoothMask:
    r"""Smooth masks from parameters on a coarse grid (paper Sec. 3 "smooth masks"; TorchRay geometry).

    Parameter :math:`\bar m_j` sits at grid point :math:`c_j = \mathrm{margin} + \mathrm{step}\cdot j`
    of the full mask, which extends the image by a margin of :math:`\sigma` pixels on each side
    (the image is the crop :math:`[\mathrm{round}(\sigma), \mathrm{round}(\sigma) + H)`). The mask is

    .. math::
        m(u) = \mathrm{clamp}_{[0,1]}\Big(\operatorname{smax}_{j \in \mathcal N(u)}\;
               k\big(\lVert u - c_j \rVert / \sigma\big)\, \bar m_j\Big)

    with :func:`mask_kernel` :math:`k`, :func:`smooth_max` (coldness 20) and :math:`\mathcal N(u)` the
    :math:`(2r+1)^2` grid points around the cell of :math:`u` (parameters outside the grid count as 0).
    Geometry as TorchRay's: ``shape_in`` = :math:`\lceil H/\mathrm{step} \rceil`, padding
    :math:`P = 1 + \lceil 2\sigma/\mathrm{step} \rceil`, radius :math:`r = 1 + \lceil \sigma/\mathrm{step} \rceil`,
    full size ``shape_out`` = :math:`\mathrm{step}(\mathrm{shape\_in} + 2P - 2r) - \mathrm{step} + 1`
    (260 x 260 for 224 x 224 images, with 32 x 32 parameters, :math:`P = 7`, :math:`r = 4`). Cell
    indices are computed with integer division (TorchRay multiplies by a float32 reciprocal; same
    result at these sizes).
    """

    def __init__(
        self,
        size: tuple[int, int],
        step: int = STEP,
        sigma: float = SIGMA,
        coldness: float = COLDNESS,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if int(step) != step or step < 1:
            raise ValueError(f"step must be a positive integer, got {step}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.size = (int(size[0]), int(size[1]))
        self.step = s = int(step)
        self.sigma = float(sigma)
        self.coldness = float(coldness)
        self.margin = self.sigma
        self.crop = round(self.margin)
        self.padding = 1 + math.ceil((self.margin + self.sigma) / s)
        self.radius = 1 + math.ceil(self.sigma / s)
        self.shape_in = tuple(math.ceil(z / s) for z in self.size)
        self.shape_mid = tuple(z + 2 * self.padding - 2 * self.radius for z in self.shape_in)
        self.shape_out = tuple(s * z - s + 1 for z in self.shape_mid)
        # Offset of pixel u from grid point c_j along one axis, for neighbour slot k and offset o = u mod s:
        # u - margin - s * (u // s + k - P) = o - margin + s * (P - k)   (independent of the cell).
        k = torch.arange(2 * self.radius + 1, dtype=torch.float64)
        o = torch.arange(s, dtype=torch.float64)
        d = o[None, :] - self.margin + s * (self.padding - k[:, None])  # [2r+1, s]
        dist = torch.sqrt(d[:, None, :, None] ** 2 + d[None, :, None, :] ** 2)  # [ky, kx, oy, ox]
        self.weight = (
            mask_kernel(dist / self.sigma).reshape(-1, s, s).to(device=device, dtype=dtype)
        )

    @property
    def full_pixels(self) -> int:
        """N, the number of pixels of the full mask (the area constraint counts these)."""
        return self.shape_out[0] * self.shape_out[1]

    def __call__(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``params`` ``[N, 1, *shape_in]`` -> (mask cropped to the image ``[N, 1, H, W]``, full mask)."""
        if tuple(params.shape[-2:]) != self.shape_in:
            raise ValueError(
                f"mask parameters must be [N, 1, {self.shape_in[0]}, {self.shape_in[1]}], "
                f"got {list(params.shape)}"
            )
        n = params.shape[0]
        kk = 2 * self.radius + 1
        mh, mw = self.shape_mid
        pu = F.unfold(params, (kk, kk), padding=self.padding).reshape(n, kk * kk, mh, mw)
        pooled = _SmoothMaxPool.apply(pu, self.weight, self.coldness)
        full = pooled.reshape(n, 1, mh * self.step, mw * self.step)
        full = full[:, :, : self.shape_out[0], : self.shape_out[1]].clamp(0, 1)
        m, (h, w) = self.crop, self.size
        return full[:, :, m : m + h, m : m + w], full


# --------------------------------------------------------------------------- area constraint


def area_reference(n: int, areas: torch.Tensor) -> torch.Tensor:
    r""":math:`r_a`: for each area, :math:`\lfloor n(1-a) \rfloor` zeros followed by ones, ``[R, n]``."""
    zeros = (n * (1 - areas.double())).floor().long()  # TorchRay: int(max_area * (1 - a))
    pos = torch.arange(n, device=areas.device)
    return (pos[None, :] >= zeros[:, None].to(areas.device)).float()


def area_loss(full_masks: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    r"""Ranking area loss (paper Sec. 3 "area constraint"): :math:`R_a(m) = \frac1N \lVert \mathrm{vecsort}(m) - r_a \rVert^2`.

    ``full_masks`` ``[R, 1, h, w]``, ``reference`` ``[R, N]`` (:func:`area_reference`); returns ``[R]``.
    It is 0 exactly when the mask is binary with :math:`N - \lfloor N(1-a) \rfloor` ones.
    """
    flat = full_masks.reshape(full_masks.shape[0], -1)
    if flat.shape[1] != reference.shape[1]:
        raise ValueError(f"masks have {flat.shape[1]} pixels, reference {reference.shape[1]}")
    return ((flat.sort(dim=1).values - reference) ** 2).mean(1)


# --------------------------------------------------------------------------- optimization


@dataclass
class ExtremalResult:
    """Everything one Extremal Perturbation run produces.

    Attributes:
        maps: ``[B, 1, H, W]`` in [0, 1]: :math:`\\frac{1}{|A|}\\sum_{a\\in A} m_a`, the (smoothed)
            masks summed over the areas as TorchRay's benchmark does, divided by the number of areas.
        masks: ``[B, A, H, W]``: one mask per area, as TorchRay returns them.
        reward: ``[T, B, A]`` reward :math:`\\Phi` at each iteration.
        area_loss: ``[T, B, A]`` :math:`R_a` at each iteration (before the weight :math:`\\lambda`).
    """

    maps: torch.Tensor
    masks: torch.Tensor
    reward: torch.Tensor
    area_loss: torch.Tensor


def _check_areas(areas: float | Sequence[float]) -> tuple[float, ...]:
    out = (float(areas),) if isinstance(areas, (int, float)) else tuple(float(a) for a in areas)
    if not out:
        raise ValueError("areas must hold at least one area")
    bad = [a for a in out if not 0 < a < 1]
    if bad:
        raise ValueError(f"areas must lie in (0, 1), got {bad}")
    return out


def optimize(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    areas: float | Sequence[float] = AREAS,
    iterations: int = ITERATIONS,
    perturbation: str = "blur",
    num_levels: int = NUM_LEVELS,
    max_blur: float = MAX_BLUR,
    step: int = STEP,
    sigma: float = SIGMA,
    coldness: float = COLDNESS,
    jitter: bool = True,
    variant: str = "preserve",
    lr: float = LR,
    momentum: float = MOMENTUM,
    regul_weight: float = REGUL_WEIGHT,
    regul_growth: float = REGUL_GROWTH,
    smooth: float = 0.0,
    pad_value: float | Sequence[float] = 0.0,
    use_channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> ExtremalResult:
    r"""Extremal perturbations of every image of the batch for every area, optimized jointly.

    Rows: image i and area a form row :math:`i A + a`; each row has its own parameters
    :math:`\bar m` (``[1, 32, 32]`` at 224 px, all 1 at the start) and is independent of the others.
    Iteration t (TorchRay's loop, batched):

    1. :math:`m, m_{\mathrm{full}}` = :class:`SmoothMask` (:math:`\bar m`);
    2. :math:`\tilde x` = :func:`perturb` (:math:`m`) for "preserve", of :math:`1 - m` for "delete",
       both for "dual"; with ``jitter``, :math:`\tilde x` is flipped horizontally when t is even;
    3. reward :math:`\Phi` = ``target(model(x~))`` (the logit by default); "delete" uses
       :math:`-\Phi(1-m)`, "dual" :math:`\Phi(m) - \Phi(1-m)`;
    4. energy :math:`E = \sum_{\mathrm{rows}} \Phi - \lambda_t R_a(m_{\mathrm{full}})`
       (:func:`area_loss`), :math:`\lambda_t = 300 \cdot 1.0035^t`;
    5. one SGD step on :math:`-E` (lr 0.01, momentum 0.9, dampening 0.9), then
       :math:`\bar m \leftarrow \mathrm{clamp}_{[0,1]}(\bar m)`.

    As in TorchRay, the returned mask is the :math:`m` of the last iteration's forward pass (before
    its update), optionally blurred with :math:`\sigma = \mathrm{smooth} \cdot \min(H, W)` (zero
    padding; :func:`gaussian_blur`).

    Several areas (``areas`` a list :math:`A`). TorchRay's benchmark (``torchray/benchmark``) runs
    ``extremal_perturbation`` with ``areas=[0.025, 0.05, 0.1, 0.2]`` (VOC; ``[0.018, 0.025, 0.05,
    0.1]`` on COCO) and ``smooth=0.09``, and **sums** the returned masks into one saliency map. The
    sum lies in :math:`[0, |A|]`; this package's maps must lie in [0, 1] (they multiply the image in
    AD/AG/AI), so ``maps`` is the sum divided by :math:`|A|`, its largest possible value:

    .. math:: S = \frac{1}{|A|}\sum_{a \in A} m_a .

    A constant factor: every rank-based metric (insertion/deletion, pointing, AOPC's order) sees the
    benchmark's map exactly, and one area gives the mask itself. (Range normalization would instead
    stretch each map to [0, 1] by its own min and max; with ``smooth > 0`` the masks' maxima drop
    below 1, and the two differ by a per-image factor.) Each area's mask is a separate row of the
    optimization, identical to a run with that area alone (up to float summation order in the
    batched network); ``masks`` keeps them. The default stays one area, 0.1, and ``smooth=0``: the
    function's defaults, since the Opti-CAM paper gives no Extremal Perturbation setting.

    Args:
        areas: target areas a, fractions of the *full* mask (image plus a ``sigma`` margin: 260² px
            at 224², as in TorchRay), default ``(0.1,)``; TorchRay's benchmark uses
            ``(0.025, 0.05, 0.1, 0.2)`` with ``smooth=0.09``.
        iterations: SGD steps (TorchRay's ``max_iter``, 800).
        perturbation: ``blur`` (default) or ``fade``; num_levels (8), max_blur (20): the pyramid.
        step (7), sigma (21), coldness (20): the smooth mask (:class:`SmoothMask`).
        jitter: flip the perturbed image horizontally on even iterations (TorchRay; deterministic).
        variant: ``preserve`` (default), ``delete`` or ``dual``.
        lr, momentum, regul_weight, regul_growth: TorchRay's hard-coded 0.01, 0.9, 300, 1.0035.
        smooth: final blur of the masks, as a fraction of the image side (TorchRay default 0;
            its benchmark 0.09).
        pad_value: constant the image is extended by when blurred (TorchRay: 0 in the model's input
            space; pass the ImageNet mean (0.485, 0.456, 0.406) to match TorchRay on a standardized
            input, whose zero is the mean colour).
        use_channels_last: run the network in channels-last memory format (faster; same math).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the forward passes under autocast (GPU).
        progress: show a tqdm bar over iterations.
    """
    area_list = _check_areas(areas)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid choices: {', '.join(VARIANTS)}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
    b, _, h, w = images.shape
    na = len(area_list)
    device = images.device
    rows = b * na
    index = torch.arange(b, device=device).repeat_interleave(na)
    gen = SmoothMask((h, w), step, sigma, coldness, device=device, dtype=images.dtype)
    reference = area_reference(
        gen.full_pixels, torch.tensor(area_list, dtype=torch.float64).repeat(b)
    ).to(device=device, dtype=images.dtype)
    pyramid = blur_pyramid(images, num_levels, max_blur, perturbation, pad_value)
    params = torch.ones(rows, 1, *gen.shape_in, device=device, dtype=images.dtype)
    params.requires_grad_(True)
    opt = torch.optim.SGD([params], lr=lr, momentum=momentum, dampening=momentum)
    rewards = torch.zeros(iterations, rows, device=device)
    regs = torch.zeros(iterations, rows, device=device)
    lam = float(regul_weight)
    fmt = torch.channels_last if use_channels_last else torch.contiguous_format
    mask = gen(params.detach())[0]
    with frozen(model), channels_last(model, use_channels_last), torch.enable_grad():
        bar = tqdm(range(iterations), desc="ExPerturbation", disable=not progress, leave=False)
        for t in bar:
            mask, full = gen(params)
            if variant == "preserve":
                x, idx = perturb(pyramid, mask, index), index
            elif variant == "delete":
                x, idx = perturb(pyramid, 1 - mask, index), index
            else:
                x = torch.cat([perturb(pyramid, mask, index), perturb(pyramid, 1 - mask, index)])
                idx = torch.cat([index, index])
            if jitter and t % 2 == 0:
                x = x.flip(3)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                scores = target(logits_of(model(x.contiguous(memory_format=fmt))), idx).float()
            if variant == "preserve":
                reward = scores
            elif variant == "delete":
                reward = -scores
            else:
                reward = scores[:rows] - scores[rows:]
            reg = area_loss(full, reference)
            energy = (reward - lam * reg).sum()
            opt.zero_grad(set_to_none=True)
            (-energy).backward()
            opt.step()
            with torch.no_grad():
                params.clamp_(0, 1)
            rewards[t] = reward.detach()
            regs[t] = reg.detach()
            lam *= regul_growth
        bar.close()
    masks = mask.detach()
    if smooth > 0:
        masks = gaussian_blur(masks, smooth * min(h, w))
    masks = masks.reshape(b, na, h, w)
    return ExtremalResult(
        maps=masks.mean(1, keepdim=True).clamp(0, 1).contiguous(),
        masks=masks,
        reward=rewards.reshape(iterations, b, na),
        area_loss=regs.reshape(iterations, b, na),
    )


@register(
    "extremal",
    paper_name="ExPerturbation",
    kind="perturbation",
    needs_layer=False,
    options_of=optimize,
    differentiable=True,
)
def extremal(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: nn.Module | None = None,
    *,
    areas: float | Sequence[float] = AREAS,
    iterations: int = ITERATIONS,
    batch_size: int | None = None,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    r"""Extremal Perturbation maps ``[B, 1, H, W]`` in [0, 1] (Fong et al. 2019; TorchRay defaults).

    :math:`S = \frac{1}{|A|}\sum_{a \in A} m_a`: the optimized smooth masks of the ``areas``
    :math:`A` summed, as TorchRay's benchmark does, and divided by :math:`|A|` to lie in [0, 1]
    (one area, 0.1, and ``smooth=0`` by default, the function's defaults; the benchmark's setting is
    ``areas=[0.025, 0.05, 0.1, 0.2], smooth=0.09``); see :func:`optimize` for the algorithm and
    every option. ``layer`` is ignored (the method needs
    none). ``batch_size`` splits the batch into chunks of that many images (same maps: rows are
    optimized independently).
    """
    chunks = index_chunks(images.shape[0], batch_size, images.device)
    out = []
    for idx in chunks:
        res = optimize(
            model,
            images[idx],
            SubsetTarget(target, idx),
            areas=areas,
            iterations=iterations,
            progress=progress,
            **options,
        )
        out.append(res.maps)
    return torch.cat(out)
