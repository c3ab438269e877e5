r"""Faithfulness metrics: AD (eq. 13), AI (eq. 14), AG (eq. 15) (Sections 4 and 5.3.1), insertion /
deletion (Section 5.3.2) and AOPC (Section 5.3.3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from ..methods.base import check_choice
from .base import Evaluation, MetricInfo, metric
from .common import SPACES, space_origin

# --------------------------------------------------------------------------- AD / AG / AI


#: AD and AI come from Grad-CAM++ (Chattopadhay et al., WACV 2018), AG from the Opti-CAM paper.
_AD_AI = "Chattopadhay et al. 2018 (Grad-CAM++); Zhang et al. 2024 (Opti-CAM), Section 4"


@metric(
    AD=MetricInfo("Average Drop", "lower", "%", "13", "faithfulness", reference=_AD_AI),
    AG=MetricInfo(
        "Average Gain", "higher", "%", "15", "faithfulness",
        reference="Zhang et al. 2024 (Opti-CAM), Section 4",
    ),
    AI=MetricInfo("Average Increase", "higher", "%", "14", "faithfulness", reference=_AD_AI),
)  # fmt: skip
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

    A map of ones leaves every image as it is, so nothing drops and nothing increases:

    >>> import paper_code
    >>> model = paper_code.load_model("tiny")
    >>> x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    >>> r = classification(model, x, torch.ones(2, 1, 224, 224), [3, 5])
    >>> sorted(r), r["AD"].tolist(), r["AG"].tolist(), r["AI"].tolist()
    (['AD', 'AG', 'AI', 'o', 'p'], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    """
    ev = Evaluation(model, images, maps, batch_size=batch_size, progress=progress, compile=compile)
    cls = ev.classes(targets)
    p = ev.probs(lambda sl: ev.images[sl], cls, desc="AD/AG/AI (p)")
    o = ev.probs(lambda sl: ev.images[sl] * ev.maps[sl], cls, desc="AD/AG/AI (o)")
    zero = torch.zeros_like(p)
    drop, gain = (p - o).clamp(min=0), (o - p).clamp(min=0)
    ad = torch.where(p > 0, drop / p.clamp(min=1e-300), zero) * 100
    ag = torch.where(p < 1, gain / (1 - p).clamp(min=1e-300), zero) * 100
    ai = (p < o).double() * 100
    return {"AD": ad, "AG": ag, "AI": ai, "p": p, "o": o}


# --------------------------------------------------------------------------- insertion / deletion


#: Insertion blur kernels: RISE's ``gkern`` (default) or a sampled Gaussian (torchvision's).
BLUR_KERNELS = ("rise", "sampled")
#: How the blur extends the image: zeros of the working space (RISE) or reflection (torchvision).
BLUR_PADDINGS = ("zeros", "reflect")
#: Order of pixels (regions) of equal saliency: row-major, or the reference code's numpy sort.
TIE_BREAKS = ("raster", "numpy")


def rise_kernel1d(kernel_size: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> torch.Tensor:
    r"""The 1-D factor :math:`u` of RISE's insertion kernel ``gkern(klen, nsig)``, float64 ``[klen]``.

    RISE ``evaluation.py`` (eclique/RISE) builds its kernel by filtering a ``klen``×``klen`` array
    that is 0 but for a 1 at the centre :math:`c = \lfloor klen/2 \rfloor` with
    ``scipy.ndimage.gaussian_filter(inp, nsig)``. That filter is separable and the delta is a product,
    so the 2-D kernel is :math:`u u^\top` with :math:`u` the 1-D filter of a 1-D delta:

    .. math::
        u_i = \sum_{j=-R}^{R} w_j\, \mathbb 1[\rho(i + j) = c], \qquad
        w_j = \frac{e^{-j^2/2\sigma^2}}{\sum_{|l|\le R} e^{-l^2/2\sigma^2}}, \qquad
        R = \lfloor \mathrm{truncate}\cdot\sigma + \tfrac12 \rfloor,

    where :math:`\rho` is scipy's default boundary mode ``"reflect"`` (half-sample symmetric,
    period :math:`2n`, :math:`n` = ``klen``): :math:`\rho(p) = q` if :math:`q < n`, else
    :math:`2n - 1 - q`, with :math:`q = p \bmod 2n`. With :math:`\sigma = 5` the window
    (:math:`R = 20`) is far wider than the 11 taps, so the Gaussian's tails fold back into them: the
    weights are 0.088-0.094, nearly a box filter, and they sum to 1. Computed here in float64 (no scipy
    at run time); ``tests/test_protocol_options.py`` checks it against scipy to 1e-12.

    >>> u = rise_kernel1d()
    >>> len(u), round(float(u.sum()), 12), round(float(u.min()), 3), round(float(u.max()), 3)
    (11, 1.0, 0.088, 0.094)
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    n, c = int(kernel_size), int(kernel_size) // 2
    radius = int(truncate * float(sigma) + 0.5)
    j = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 / (float(sigma) ** 2) * j**2)
    w = w / w.sum()
    q = (torch.arange(n)[:, None] + torch.arange(-radius, radius + 1)[None, :]) % (2 * n)
    src = torch.where(q < n, q, 2 * n - 1 - q)
    return (w[None, :] * (src == c)).sum(1)


def sampled_kernel1d(kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    r"""A Gaussian sampled at the ``kernel_size`` integer offsets and normalized to sum 1 (torchvision's
    ``gaussian_blur`` kernel), float64: :math:`u_i \propto e^{-i^2/2\sigma^2}`, :math:`|i| \le k/2`.

    >>> u = sampled_kernel1d()
    >>> len(u), round(float(u.sum()), 12), round(float(u[0]), 3), round(float(u[5]), 3)
    (11, 1.0, 0.066, 0.109)
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return pdf / pdf.sum()


def blur_substrate(
    images: torch.Tensor,
    kernel_size: int = 11,
    sigma: float = 5.0,
    *,
    kernel: str = "rise",
    padding: str = "zeros",
    pad_value: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    r"""Insertion start image :math:`\tilde x = g * x`, per channel (11×11, :math:`\sigma = 5` as RISE).

    The paper (Section 5.3.2) says "blurred" and gives no kernel; RISE's ``evaluation.py`` is the only
    source, so its kernel is the default.

    * ``kernel="rise"`` (default): :math:`g = u u^\top` with :math:`u` = :func:`rise_kernel1d`, RISE's
      ``gkern(11, 5)``, a 2-D convolution with the kernel in the images' dtype (RISE casts it to
      float32). It is close to an 11×11 box filter (1-D weights 0.088-0.094, 2-D 0.0077-0.0088).
    * ``kernel="sampled"``: :math:`u` = :func:`sampled_kernel1d`, the truncated sampled Gaussian of
      torchvision's ``gaussian_blur`` (1-D weights 0.066 at the ends to 0.109 at the centre):
      a milder blur.

    Padding (the image is extended by ``kernel_size // 2`` pixels):

    * ``padding="zeros"`` (default): RISE's ``conv2d(x, kern, padding=klen // 2)``, zero padding *in the
      working space*: :math:`\tilde x = g * (x - v) + v` with the constant extension 0, where
      :math:`v` = ``pad_value`` (per channel) is the pixel value of that space's zero
      (:func:`paper_code.metrics.common.space_origin`): black (:math:`v = 0`) in the [0, 1] pixel
      space, the mean colour in the standardized space. Pixels within 5 px of the border are pulled
      towards :math:`v` (darkened, in pixel space).
    * ``padding="reflect"``: reflection without repeating the edge (torchvision's and this package's
      choice before the option existed); no darkening, and :math:`v` plays no role.

    The combination ``kernel="sampled", padding="reflect"`` is torchvision's ``gaussian_blur``
    itself. What the choice changes: the start image of insertion, hence the first points of the
    insertion curve (the class probability of the fully blurred image) and the insertion score;
    the RISE kernel removes more detail, while zero padding adds dark (or grey) borders, so the sign
    of the change depends on the image (the protocol-choices page of the book gives measured
    values). Deletion does not use the blur.

    A constant image stays constant under reflection (the kernel sums to 1); zero padding darkens
    its border:

    >>> x = torch.full((1, 3, 16, 16), 0.5)
    >>> [round(float(v), 5) for v in blur_substrate(x, padding="reflect").aminmax()]
    [0.5, 0.5]
    >>> float(blur_substrate(x)[0, 0, 0, 0]) < 0.5
    True
    """
    check_choice("kernel", kernel, BLUR_KERNELS)
    check_choice("padding", padding, BLUR_PADDINGS)
    if kernel == "sampled" and padding == "reflect":
        return gaussian_blur(images, [kernel_size, kernel_size], [sigma, sigma])
    make = rise_kernel1d if kernel == "rise" else sampled_kernel1d
    u = make(kernel_size, sigma)
    c, r = images.shape[1], kernel_size // 2
    weight = torch.outer(u, u).to(device=images.device, dtype=images.dtype)
    weight = weight.expand(c, 1, kernel_size, kernel_size)
    if padding == "reflect":
        return F.conv2d(F.pad(images, (r, r, r, r), mode="reflect"), weight, groups=c)
    v = torch.as_tensor(pad_value, device=images.device, dtype=images.dtype)
    if not bool((v != 0).any()):
        return F.conv2d(images, weight, padding=r, groups=c)
    v = v.reshape(1, -1, 1, 1) if v.dim() <= 1 else v
    return F.conv2d(images - v, weight, padding=r, groups=c) + v


def saliency_ranks(maps: torch.Tensor, tie_break: str = "raster") -> torch.Tensor:
    r"""Rank of every pixel in decreasing-saliency order, ``[B, H*W]`` (0 = most salient).

    Pixels of equal saliency (ties) are ordered by ``tie_break``:

    * ``"raster"`` (default): stable sort, the pixel that comes first in row-major order first.
      Deterministic on every machine.
    * ``"numpy"``: RISE's order, ``np.flip(np.argsort(s.reshape(-1, HW), axis=1), axis=-1)``
      (RISE ``evaluation.py``), computed by numpy on the CPU in the maps' dtype. numpy's default sort
      is not stable, so ties come in numpy's order, reversed. **That order depends on the numpy
      version and on the CPU** (numpy ≥ 1.25 dispatches to SIMD sorts, x86-simd-sort / Highway,
      chosen at run time), so it is reproducible only on the same software and hardware.
    * ``"numpy_negated"``: Quantus' region order, ``np.argsort(-s, axis=1)`` (ties in numpy's
      order, not reversed; same caveat), used by :func:`aopc`.

    Maps without ties give the same ranks under all three. Maps with large tied areas (Fake-CAM:
    ones everywhere but one pixel; zero regions of ReLU-ed CAMs) are processed in a different order:
    e.g. a Fake-CAM deletion removes the image from the top row down under ``"raster"`` and, with
    numpy's order for such a map, roughly from the bottom row up under ``"numpy"``.

    >>> saliency_ranks(torch.tensor([[[[0.1, 0.9], [0.5, 0.5]]]])).tolist()
    [[3, 0, 1, 2]]
    """
    check_choice("tie_break", tie_break, (*TIE_BREAKS, "numpy_negated"))
    flat = maps.flatten(1)
    if tie_break == "raster":
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    else:
        a = flat.detach().cpu().numpy()
        idx = np.flip(np.argsort(a, axis=1), axis=-1) if tie_break == "numpy" else np.argsort(-a, 1)
        order = torch.from_numpy(np.ascontiguousarray(idx)).to(flat.device)
    ranks = torch.empty_like(order)
    ar = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, ar)


def _auc(curves: torch.Tensor) -> torch.Tensor:
    """Normalized trapezoidal area (Σ − first/2 − last/2)/(n − 1) along the last dim (RISE)."""
    n = curves.shape[-1]
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / (n - 1)


#: RISE's insertion/deletion (Petsiuk et al., BMVC 2018), the paper's Section 5.3.2.
_RISE = "Petsiuk et al. 2018 (RISE); eclique/RISE evaluation.py (CausalMetric)"


@metric(
    I=MetricInfo("Insertion", "higher", "%", "§5.3.2 (RISE)", "faithfulness", reference=_RISE),
    D=MetricInfo("Deletion", "lower", "%", "§5.3.2 (RISE)", "faithfulness", reference=_RISE),
)
def insertion_deletion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    step: int = 224,
    kernel_size: int = 11,
    sigma: float = 5.0,
    blur_kernel: str = "rise",
    blur_padding: str = "zeros",
    substrate_space: str = "pixel",
    tie_break: str = "raster",
    input_mean: Sequence[float] | None = None,
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

    * deletion: :math:`x_t = x \odot \mathbb{1}[\text{rank} \ge t\cdot\text{step}] + v \odot
      \mathbb{1}[\text{rank} < t\cdot\text{step}]`: processed pixels are set to the **zero** of the
      working space, :math:`v` (black in pixel space, see ``substrate_space``);
    * insertion: :math:`x_t = \tilde x \odot \mathbb{1}[\text{rank} \ge t\cdot\text{step}] + x \odot
      \mathbb{1}[\text{rank} < t\cdot\text{step}]` with :math:`\tilde x` the blurred image
      (:func:`blur_substrate`) or ``substrate``.

    The curve is the softmax probability :math:`y_t` of class :math:`c` (default: the **predicted** class
    of the original image, Section 5.3.2) and the score the normalized trapezoidal AUC of RISE's
    ``evaluation.py``

    .. math:: \mathrm{AUC} = \frac{1}{n}\Big(\sum_{t=0}^{n} y_t - \tfrac{y_0}{2} - \tfrac{y_n}{2}\Big)\cdot 100.

    The paper follows RISE's protocol but leaves four choices open; each is an option here, with RISE's
    ``CausalMetric`` (eclique/RISE ``evaluation.py``) reachable by its values:

    * ``blur_kernel`` (``"rise"`` default, or ``"sampled"``) and ``blur_padding`` (``"zeros"``
      default, or ``"reflect"``), with ``kernel_size`` 11 and ``sigma`` 5: the insertion start image,
      see :func:`blur_substrate`. Defaults: RISE's ``gkern(11, 5)`` and zero padding, because RISE's
      code is the only source for the kernel. Changes the insertion curve, not deletion.
    * ``substrate_space`` (``"pixel"`` default, or ``"standardized"``): the space whose zero fills
      deleted pixels and pads the blur (:func:`paper_code.metrics.common.space_origin`). RISE fills
      with ``torch.zeros_like`` of the tensor it receives: black when the model standardizes inside,
      as the official Opti-CAM wrapper does (so ``"pixel"``, the default: :math:`v = 0`); the mean
      colour when the data loader standardizes (``"standardized"``: :math:`v = \mu` of
      ``model.standardize``, or ``input_mean`` for a model without one). Changes deletion (black vs
      grey pixels) and, with zero padding, the blur's border.
    * ``tie_break`` (``"raster"`` default, or ``"numpy"``): the order of pixels of equal saliency, see
      :func:`saliency_ranks`. ``"numpy"`` is RISE's ``np.flip(np.argsort(...))`` order, which depends
      on the numpy version and CPU; ``"raster"`` is deterministic everywhere, hence the default.
      Changes the curves of maps with ties only (Fake-CAM, zero areas of CAMs).

    With ``blur_kernel="rise", blur_padding="zeros", substrate_space="standardized",
    tie_break="numpy"`` the curves equal RISE's ``CausalMetric`` run one image at a time on the
    standardized tensor (checked in ``tests/test_protocol_options.py``).

    All :math:`B\cdot(n+1)` perturbed images are built on the fly, ``batch_size`` at a time, from the rank
    maps (one comparison per chunk; no loop over steps or images). Speed: on a GPU use large chunks; on
    a 2-core CPU, EfficientNet-Lite0 in ``channels_last`` with ``batch_size`` 4–8 was fastest (large
    chunks fall out of cache; see ``benchmarks/bench_metrics.py``).

    Args:
        input_mean: the per-channel mean the network subtracts, for ``substrate_space="standardized"``
            with a model that has no ``standardize`` module.
        substrate: insertion start image ``[B, 3, H, W]`` or a callable ``images -> substrate``
            (replaces the blur; the blur options are then unused).
        modes: which of ``"I"`` and ``"D"`` to compute.
        compile: the forward passes under ``torch.compile`` with static shapes (``True``, a mode
            or a backend name; :func:`paper_code.methods.forward.evaluation_forward`): for GPUs.

    Returns:
        dict with ``I`` and/or ``D`` (float64 ``[B]``, %), ``classes`` ``[B]``; with ``return_curves``
        also ``I_curve`` / ``D_curve`` (float64 ``[B, n + 1]``, probabilities).

    Two steps of half the pixels each give three points per curve; the class defaults to the
    predicted one:

    >>> import paper_code
    >>> model = paper_code.load_model("tiny")
    >>> x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    >>> maps = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    >>> r = insertion_deletion(model, x, maps, step=224 * 112, return_curves=True)
    >>> sorted(r), tuple(r["I"].shape), tuple(r["D_curve"].shape)
    (['D', 'D_curve', 'I', 'I_curve', 'classes'], (2,), (2, 3))
    >>> r["classes"].tolist() == paper_code.metrics.class_probs(model, x)[1].tolist()
    True
    """
    ev = Evaluation(model, images, maps, batch_size=batch_size, progress=progress, compile=compile)
    maps = ev.maps
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    modes = tuple(modes)
    if not modes or any(m not in ("I", "D") for m in modes):
        raise ValueError(f"modes must be a non-empty subset of ('I', 'D'), got {modes}")
    check_choice("blur_kernel", blur_kernel, BLUR_KERNELS)
    check_choice("blur_padding", blur_padding, BLUR_PADDINGS)
    check_choice("substrate_space", substrate_space, SPACES)
    check_choice("tie_break", tie_break, TIE_BREAKS)
    b, _, h, w = images.shape
    origin = space_origin(model, substrate_space, images, input_mean)  # [1, 3, 1, 1]
    cls = ev.classes(classes)
    n_steps = math.ceil(h * w / step)
    n_eval = n_steps + 1
    ranks = saliency_ranks(maps, tie_break).view(b, 1, h, w).int()
    # Per (mode, image): the image at step 0 ("start") and what replaces processed pixels ("finish").
    starts, finishes = [], []
    for m in modes:
        if m == "D":
            starts.append(images)
            finishes.append(origin.expand_as(images))
        else:
            sub = substrate(images) if callable(substrate) else substrate
            if sub is None:
                sub = blur_substrate(
                    images,
                    kernel_size,
                    sigma,
                    kernel=blur_kernel,
                    padding=blur_padding,
                    pad_value=origin,
                )
            starts.append(sub.to(images))
            finishes.append(images)
    start, finish = torch.cat(starts), torch.cat(finishes)
    total = len(modes) * b * n_eval
    thresholds = (torch.arange(n_eval, device=images.device, dtype=torch.int32) * step).view(
        -1, 1, 1, 1
    )
    buf = torch.empty(
        (min(ev.batch_size, total), 3, h, w), dtype=images.dtype, device=images.device
    )

    def perturbed(sl: slice) -> torch.Tensor:
        # Evaluation e <-> (row = mode * B + image, step t); a chunk spans few rows, so we loop over
        # rows (not steps) and let broadcasting build all of a row's steps in the chunk at once.
        x = buf[: sl.stop - sl.start]
        e = sl.start
        while e < sl.stop:
            row, t0 = divmod(e, n_eval)
            t1 = min(n_eval, t0 + sl.stop - e)
            done = ranks[row % b] < thresholds[t0:t1]  # [T, 1, H, W]
            torch.where(done, finish[row], start[row], out=x[e - sl.start : e - sl.start + t1 - t0])
            e += t1 - t0
        return x

    rows = torch.arange(total, device=images.device) // n_eval
    probs = ev.probs(perturbed, cls[rows % b], n=total, desc="insertion/deletion")
    curves = probs.view(len(modes), b, n_eval)
    out: dict[str, torch.Tensor] = {"classes": cls}
    for i, m in enumerate(modes):
        out[m] = _auc(curves[i]) * 100
        if return_curves:
            out[f"{m}_curve"] = curves[i]
    return out


# --------------------------------------------------------------------------- AOPC


AGGREGATIONS = ("samek", "quantus")


@metric(
    AOPC=MetricInfo(
        "AOPC", "higher", "%", "§5.3.3 (Samek 2016)", "faithfulness",
        reference="Samek et al. 2016; Quantus RegionPerturbation",
    )
)  # fmt: skip
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
    tie_break: str = "raster",
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
    ties: ``tie_break``). :math:`x_k` replaces the :math:`k` most relevant regions by the baseline,
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
    has a 0 value; Quantus' current default, older versions used ``"uniform"``), ``"mean"``
    (per-channel mean of the region), ``"uniform"`` (U(0, 1) noise from a CPU generator seeded with
    ``seed``), or a float constant.

    Region order on ties (``tie_break``): ``"raster"`` (default) ranks regions of equal summed
    saliency in row-major order (stable sort), deterministic everywhere; ``"numpy"`` is Quantus'
    ``np.argsort(-sums, -1)`` (numpy's default sort, not stable, run on the CPU on our float32 sums),
    whose order of tied regions depends on the numpy version and the CPU (SIMD sorts), see
    :func:`saliency_ranks` (``"numpy_negated"``). Only maps with tied region sums (large zero areas,
    constant or Fake-CAM-like maps) are affected. Other differences from Quantus: when
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

    >>> import paper_code
    >>> model = paper_code.load_model("tiny")
    >>> x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    >>> maps = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(1))
    >>> r = aopc(model, x, maps, [3, 5], patch=56, regions=2, return_curves=True)
    >>> sorted(r), tuple(r["AOPC_curve"].shape), r["classes"].tolist()
    (['AOPC', 'AOPC_curve', 'classes'], (2, 3), [3, 5])
    """
    ev = Evaluation(model, images, maps, batch_size=batch_size, progress=progress, compile=compile)
    maps = ev.maps
    check_choice("aggregation", aggregation, AGGREGATIONS)
    check_choice("tie_break", tie_break, TIE_BREAKS)
    b, _, h, w = images.shape
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
    cls = ev.classes(classes)
    sums = nn.functional.avg_pool2d(maps, patch, patch, ceil_mode=True, divisor_override=1)
    gh, gw = sums.shape[-2:]
    order = "raster" if tie_break == "raster" else "numpy_negated"
    pranks = saliency_ranks(sums, order).view(b, 1, gh, gw)
    pranks = pranks.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :h, :w]
    n_eval = regions + 1
    e = torch.arange(b * n_eval, device=images.device)
    img_of, k_of = e // n_eval, e % n_eval  # evaluation e: image e // (L + 1), k = e % (L + 1)

    def perturbed(sl: slice) -> torch.Tensor:
        img, k = img_of[sl], k_of[sl]
        return torch.where(pranks[img] < k.view(-1, 1, 1, 1), base[img], images[img])

    probs = ev.probs(perturbed, cls[img_of], n=b * n_eval, desc="AOPC")
    curve = probs.view(b, n_eval)
    drops = curve[:, :1] - curve  # [B, L + 1], d_0 = 0
    score = drops.mean(1) if aggregation == "samek" else drops[:, 1:].mean(1)
    out = {"AOPC": score * 100, "classes": cls}
    if return_curves:
        out["AOPC_curve"] = curve
    if return_drops:
        out["AOPC_drops"] = drops[:, 1:]
    return out
