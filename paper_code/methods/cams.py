r"""The CAM baselines of the paper (Section 5.2): Fake-CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM,
HiRes-CAM, Score-CAM and Ablation-CAM, batched and in pure torch.

Every method is registered in :data:`paper_code.methods.METHODS` as
``fn(model, images, target, layer, **options) -> Tensor[B, 1, H, W]`` and is normally called through
:func:`paper_code.methods.explain`.

Common pipeline (all CAMs except Fake-CAM):

1. :func:`cam_lowres` computes the raw map at feature resolution,
   :math:`S^c_\ell(x) = h\big(\sum_k w^c_k A^k_\ell\big)` (or the element-wise variants of Layer-CAM and
   HiRes-CAM), with :math:`h = \mathrm{ReLU}`, shape ``[B, 1, h, w]``.
2. The final map is :math:`n(\mathrm{up}(S))`: bilinear upsampling to the input size
   (``align_corners=False``) *then* range normalization per image with an :math:`\epsilon` guard
   (:func:`paper_code.methods.maps.normalize_range`), the same order as Opti-CAM. A constant map gives all zeros.

Conventions shared with the rest of the project:

- The network is frozen (:func:`paper_code.methods.hooks.frozen`: ``requires_grad=False`` and eval mode, both
  restored afterwards). Hooks exist only inside ``with capture(...)``.
- Gradients :math:`g^k = \partial y_c / \partial A^k` are taken with ``torch.autograd.grad`` w.r.t. the
  captured activation, which is detached at the layer (``detach_for_grad=True``): no weight gradients and
  no backward pass through the layers before it. The score is ``target(logits, arange(B))`` summed over
  the batch; each image's score depends only on its own activation (eval mode), so the gradient of the
  sum gives every image its own gradient.
- Images are ``[B, 3, H, W]`` in [0, 1]; masks multiply the [0, 1] image (the model standardizes inside).

Differences from pytorch-grad-cam (the usual reference implementation, used as a test oracle) that hold
for every method: pytorch-grad-cam copies activations and gradients to numpy, applies the ReLU, then
normalizes each map *at feature resolution* (``x - min``, ``/ (max + 1e-7)``) and resizes it with
``cv2.resize`` (and normalizes once more), i.e. it returns :math:`\mathrm{up}(n(S))` where this module
returns :math:`n(\mathrm{up}(S))`. The raw low-resolution maps are the same (tested); the final maps
differ slightly because bilinear upsampling with ``align_corners=False`` does not attain the interior
extremes of the low-resolution map. Method-specific differences are listed in each docstring.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.outputs import logits_of
from .base import chunks, resolve_batch_size
from .forward import evaluation_forward
from .hooks import (
    as_feature_layer,
    capture,
    channels_last,
    forward_features,
    forward_with_gradients,
    frozen,
)
from .maps import EPS, normalize_range, upsample, weighted_sum
from .registry import register
from .targets import ClassLogits, Target

__all__ = ["LOWRES", "cam_lowres", "finish", "forward_with_gradients", "forward_features"]

#: name -> function(model, images, target, layer, **options) -> raw low-resolution maps [B, 1, h, w].
LOWRES: dict[str, Callable[..., torch.Tensor]] = {}


# --------------------------------------------------------------------------- shared helpers


def finish(lowres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:math:`n(\\mathrm{up}(S))`: bilinear upsampling (``align_corners=False``), then range normalization."""
    return normalize_range(upsample(lowres, size))


def cam_lowres(
    method: str,
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: nn.Module,
    **options,
) -> torch.Tensor:
    """Raw map :math:`S = h(\\sum_k w_k A^k)` of ``method`` at feature resolution, ``[B, 1, h, w]``.

    No upsampling, no normalization (the ReLU ``h`` is applied). ``target`` is a target callable
    (see :mod:`paper_code.targets`); ``layer`` a module. The model is frozen while it runs.
    """
    if method not in LOWRES:
        raise ValueError(
            f"no low-resolution map for method {method!r}; valid: {', '.join(sorted(LOWRES))}"
        )
    layer = as_feature_layer(layer, method)
    with frozen(model):
        return LOWRES[method](model, images, target, layer, **options)


def _cam(
    name: str, paper_name: str, families: tuple[str, ...] = ("cnn", "vit")
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register a low-resolution CAM function and the full method ``n(up(lowres))`` under ``name``."""

    def deco(lowres_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        LOWRES[name] = lowres_fn

        @functools.wraps(lowres_fn)
        def method(model, images, target, layer, **options):
            raw = cam_lowres(name, model, images, target, layer, **options)
            return finish(raw, tuple(images.shape[-2:]))

        register(
            name,
            paper_name=paper_name,
            kind="cam",
            needs_layer=True,
            families=families,
            differentiable=name not in ("scorecam", "ablationcam"),
        )(method)
        return method

    return deco


# --------------------------------------------------------------------------- Fake-CAM


@register("fakecam", paper_name="Fake-CAM", kind="sanity", needs_layer=False)
def fakecam(model, images, target=None, layer=None, **options) -> torch.Tensor:
    r"""Fake-CAM (Poppi et al., 2021, "Revisiting the evaluation of class activation mapping for
    explainability"): :math:`S_{ij} = 1` everywhere except :math:`S_{00} = 0` (the top-left pixel).

    A trivial map that ignores the model, the class and the layer (Section 5.2 of the Opti-CAM
    paper; the value 1 follows Poppi et al.). Masking with it removes a single pixel, which exposes
    the weakness of AD/AI. Not part of pytorch-grad-cam.
    """
    if options:
        raise TypeError(f"fakecam takes no options, got {sorted(options)}")
    b, _, h, w = images.shape
    maps = torch.ones(b, 1, h, w, dtype=images.dtype, device=images.device)
    maps[:, :, 0, 0] = 0
    return maps


# --------------------------------------------------------------------------- gradient CAMs


@_cam("gradcam", "Grad-CAM")
def gradcam(model, images, target, layer) -> torch.Tensor:
    r"""Grad-CAM (Selvaraju et al., ICCV 2017).

    .. math:: w^c_k = \frac{1}{hw} \sum_{ij} \frac{\partial y_c}{\partial A^k_{ij}}, \qquad
              S^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big).

    pytorch-grad-cam ``GradCAM``: same weights and raw map (it differs only in the common
    normalize-then-resize order and numpy copies described in the module docstring).
    """
    acts, grads = forward_with_gradients(model, images, target, layer)
    weights = grads.mean(dim=(2, 3))
    return weighted_sum(weights, acts).relu()


@_cam("gradcampp", "Grad-CAM++")
def gradcampp(model, images, target, layer, eps: float = 0.0) -> torch.Tensor:
    r"""Grad-CAM++ (Chattopadhay et al., WACV 2018), closed form for the exponential score
    :math:`Y^c = \exp(y_c)` (their eq. 19), with :math:`g = \partial y_c / \partial A`:

    .. math:: \alpha^{kc}_{ij} = \frac{(g^k_{ij})^2}{2 (g^k_{ij})^2 + \sum_{ab} A^k_{ab}\,(g^k_{ij})^3},
              \qquad w^c_k = \sum_{ij} \alpha^{kc}_{ij}\, \mathrm{ReLU}(g^k_{ij}),
              \qquad S^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big).

    :math:`\alpha := 0` where :math:`g = 0` or the denominator is 0 (the paper's 0/0 case).

    Options:
        eps: added to the denominator of :math:`\alpha`. Default 0: the formula as published.
            pytorch-grad-cam ``GradCAMPlusPlus`` uses ``eps=1e-6``. This is **not** negligible: the
            numerator is :math:`g^2`, and with small gradients (e.g. :math:`|g| \sim 10^{-3}`, typical
            when the layer is followed by global average pooling over 14x14 cells) :math:`2g^2` is of the
            order of ``1e-6``, so pytorch-grad-cam's weights are noticeably shrunk and re-weighted across
            channels. ``eps=1e-6`` reproduces pytorch-grad-cam exactly (tested).
    """
    acts, grads = forward_with_gradients(model, images, target, layer)
    g2 = grads * grads
    g3 = g2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    denom = 2 * g2 + sum_acts * g3 + eps
    ok = (grads != 0) & (denom != 0)
    alpha = torch.where(
        ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g2)
    )
    weights = (alpha * grads.relu()).sum(dim=(2, 3))
    return weighted_sum(weights, acts).relu()


@_cam("xgradcam", "XGrad-CAM")
def xgradcam(model, images, target, layer, eps: float = 0.0) -> torch.Tensor:
    r"""XGrad-CAM (Fu et al., BMVC 2020, "Axiom-based Grad-CAM").

    .. math:: w^c_k = \sum_{ij} \frac{A^k_{ij}}{\sum_{ab} A^k_{ab}}\,
              \frac{\partial y_c}{\partial A^k_{ij}}, \qquad
              S^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big).

    A channel with :math:`\sum_{ab} A^k_{ab} = 0` gets :math:`w_k = 0` (for a ReLU layer it is all
    zeros and does not contribute anyway).

    Options:
        eps: added to :math:`\sum_{ab} A^k_{ab}`. Default 0 (the formula as published);
            pytorch-grad-cam ``XGradCAM`` uses ``1e-7``, a relative change of ``1e-7 / sum A`` per
            channel (negligible unless a channel is almost all zeros).
    """
    acts, grads = forward_with_gradients(model, images, target, layer)
    sum_acts = acts.sum(dim=(2, 3), keepdim=True) + eps
    ok = sum_acts != 0
    share = torch.where(ok, acts / torch.where(ok, sum_acts, torch.ones_like(sum_acts)), 0.0)
    weights = (share * grads).sum(dim=(2, 3))
    return weighted_sum(weights, acts).relu()


@_cam("layercam", "Layer-CAM")
def layercam(model, images, target, layer) -> torch.Tensor:
    r"""Layer-CAM (Jiang et al., IEEE TIP 2021): element-wise positive gradients as weights,

    .. math:: S^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g^k) \odot A^k\Big),
              \quad g^k = \partial y_c / \partial A^k.

    pytorch-grad-cam ``LayerCAM``: same raw map.
    """
    acts, grads = forward_with_gradients(model, images, target, layer)
    return (grads.relu() * acts).sum(dim=1, keepdim=True).relu()


@_cam("hirescam", "HiRes-CAM")
def hirescam(model, images, target, layer) -> torch.Tensor:
    r"""HiRes-CAM (Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations"):

    .. math:: S^c = \mathrm{ReLU}\Big(\sum_k g^k \odot A^k\Big), \quad g^k = \partial y_c / \partial A^k.

    pytorch-grad-cam ``HiResCAM``: same raw map. When the layer is followed only by global average
    pooling and a linear classifier, :math:`g^k` is spatially constant and HiRes-CAM equals Grad-CAM.
    """
    acts, grads = forward_with_gradients(model, images, target, layer)
    return (grads * acts).sum(dim=1, keepdim=True).relu()


# --------------------------------------------------------------------------- Score-CAM


def scorecam_weights(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    acts: torch.Tensor,
    batch_size: int | None = None,
    align_corners: bool = False,
    progress: bool = False,
    compile: bool | str | None = None,
) -> torch.Tensor:
    r"""Score-CAM weights ``[B, K]``: :math:`\mathrm{softmax}_k\, y_c(x \odot n(\mathrm{up}(A^k)))`.

    The ``B * K`` masked images are scored ``batch_size`` at a time; only one chunk of masked copies
    exists at any moment. Runs under ``torch.no_grad``. A target that returns ``[N, R]`` scores (R
    classes per image, :class:`paper_code.methods.targets.ClassLogits`) gives weights ``[B, K, R]`` from the
    same forward passes.
    """
    batch_size = resolve_batch_size(batch_size)
    b, k = acts.shape[:2]
    size = tuple(images.shape[-2:])
    flat = acts.reshape(b * k, 1, *acts.shape[-2:])
    # A constant channel normalizes to the all-zero mask (eps guard), so its masked image is the
    # black image, whatever the image: score it once instead of once per channel (exact; on
    # EfficientNet-Lite0's head 30-65% of the channels are constant, mostly zero).
    lo_hi = flat.flatten(1)
    varying = (lo_hi.amax(1) > lo_hi.amin(1)).nonzero()[:, 0]
    net = evaluation_forward(model, compile)
    with torch.no_grad(), channels_last(model):
        # (one forward per call: eager, so that it compiles no graph of its own size)
        black = logits_of(
            model(torch.zeros_like(images[:1]).contiguous(memory_format=torch.channels_last))
        )
        all_idx = torch.arange(b * k, device=acts.device) // k
        scores = target(black.expand(b * k, -1), all_idx).to(acts.dtype)
        for sl in chunks(varying.numel(), batch_size, progress=progress, desc="Score-CAM"):
            pairs = varying[sl]
            img_idx = pairs // k
            if align_corners:
                up = F.interpolate(flat[pairs], size=size, mode="bilinear", align_corners=True)
            else:
                up = upsample(flat[pairs], size)
            masks = normalize_range(up)  # per channel, eps-guarded: a constant channel gives 0
            masked = (images[img_idx] * masks).contiguous(memory_format=torch.channels_last)
            scores[pairs] = target(logits_of(net(masked)), img_idx).to(acts.dtype)
    return scores.view(b, k, *scores.shape[1:]).softmax(dim=1)


@_cam("scorecam", "Score-CAM")
def scorecam(
    model,
    images,
    target,
    layer,
    batch_size: int | None = None,
    align_corners: bool = False,
    progress: bool = False,
    compile: bool | str | None = None,
) -> torch.Tensor:
    r"""Score-CAM (Wang et al., CVPR-W 2020), with the paper's notation (Section 3.1):

    .. math:: u^c_k = f\big(x \odot n(\mathrm{up}(A^k))\big)_c - f(x_b)_c, \qquad
              w^c = \mathrm{softmax}(u^c), \qquad S^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big),

    with baseline :math:`x_b = 0`. The baseline term is the same for every channel, and the softmax is
    invariant to adding a constant, so it is not computed. :math:`n` is the range normalization per
    channel with the :math:`\epsilon` guard (a constant channel gives an all-zero mask, never NaN).
    The mask multiplies the [0, 1] image (standardization happens inside the model).

    Options:
        batch_size: masked images per forward pass (default 64 on a GPU, 6 on a CPU). The ``B * K``
            masked copies are never materialized at once; chunks may span several images.
        align_corners: ``False`` (default, the project's ``up``). ``True`` reproduces
            pytorch-grad-cam, whose ``ScoreCAM`` upsamples with ``nn.UpsamplingBilinear2d``, i.e.
            ``align_corners=True`` -- a genuine difference in the masks and hence in the weights.
        progress: show a tqdm progress bar over chunks.
        compile: the masked forward passes under ``torch.compile`` with static shapes
            (:func:`paper_code.methods.forward.evaluation_forward`; for GPUs, where they are
            Score-CAM's whole cost).

    Other pytorch-grad-cam differences: it builds all ``K`` masked copies of every image at once
    (memory ``B*K*3*H*W``), loops over images, copies every score to the CPU one at a time; its
    normalization epsilon (``1e-8``) equals this project's.
    """
    acts, _ = forward_features(model, images, layer)
    weights = scorecam_weights(
        model, images, target, acts, batch_size, align_corners, progress, compile
    )
    return weighted_sum(weights, acts).relu()


def scorecam_classes(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor,
    layer: nn.Module,
    batch_size: int | None = None,
    align_corners: bool = False,
    progress: bool = False,
    compile: bool | str | None = None,
) -> torch.Tensor:
    r"""Score-CAM maps of several classes per image, ``[B, R, H, W]`` for ``classes`` ``[B, R]``.

    The masked images :math:`x \odot n(\mathrm{up}(A^k))` do not depend on the class, so one pass over
    them gives the logits of every class: map ``r`` equals ``scorecam`` for ``classes[:, r]`` (tested)
    at the cost of a single Score-CAM run (Table A.9 explains four classes per image).
    """
    layer = as_feature_layer(layer, "scorecam")
    with frozen(model):
        acts, _ = forward_features(model, images, layer)
        target = ClassLogits(classes.to(images.device))
        weights = scorecam_weights(
            model, images, target, acts, batch_size, align_corners, progress, compile
        )
    size = tuple(images.shape[-2:])
    maps = [
        finish(weighted_sum(weights[..., r], acts).relu(), size) for r in range(classes.shape[1])
    ]
    return torch.cat(maps, dim=1)


# --------------------------------------------------------------------------- Ablation-CAM


def ablation_scores(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: nn.Module,
    acts: torch.Tensor,
    batch_size: int | None = None,
    progress: bool = False,
    fast: bool = True,
) -> tuple[torch.Tensor, bool]:
    r"""Scores :math:`y_c^{(k)}` ``[B, K]`` with channel ``k`` of the layer output set to 0.

    Returns ``(scores, used_fast_path)``. The fast path runs each chunk's images once and lets the
    capture hook substitute a batch of ablated activations ``[n, K, h, w]`` (row ``r`` = the
    activation of its image with one channel zeroed); the layers after the hook then run on ``n`` rows
    while the layers before it ran on the (fewer) distinct images of the chunk. This is only valid when
    nothing computed *before* the layer is used *after* it (no skip connection across the layer): such a
    model raises a shape error (or returns the wrong number of rows), and the computation falls back to
    repeating each image once per ablated channel, with the replacement then having the same batch size
    as the activations it replaces (skip paths carry the un-ablated earlier tensors, as they should).
    """
    batch_size = resolve_batch_size(batch_size, cpu=64)
    layer = as_feature_layer(layer, "ablationcam").module
    b, k = acts.shape[:2]
    scores = torch.empty(b * k, dtype=acts.dtype, device=acts.device)
    with torch.no_grad(), capture(layer) as cap:
        for sl in chunks(b * k, batch_size, progress=progress, desc="Ablation-CAM"):
            lo, hi = sl.start, sl.stop
            pairs = torch.arange(lo, hi, device=acts.device)
            img_idx, chan_idx = pairs // k, pairs % k
            rows = torch.arange(hi - lo, device=acts.device)
            ablated = acts[img_idx].clone()
            ablated[rows, chan_idx] = 0
            cap.replacement = ablated
            logits = None
            if fast:
                first, last = lo // k, (hi - 1) // k
                try:
                    logits = logits_of(model(images[first : last + 1]))
                    if logits.shape[0] != hi - lo:
                        logits = None
                except RuntimeError:
                    logits = None
                if logits is None:
                    fast = False
            if logits is None:
                logits = logits_of(model(images[img_idx]))
            # The target is indexed by the image's position in the full batch.
            scores[lo:hi] = target(logits, img_idx)
            cap.replacement = None
    return scores.view(b, k), fast


@_cam("ablationcam", "Ablation-CAM", families=("cnn",))
def ablationcam(
    model,
    images,
    target,
    layer,
    batch_size: int | None = None,
    progress: bool = False,
    fast: bool = True,
) -> torch.Tensor:
    r"""Ablation-CAM (Desai & Ramaswamy, WACV 2020):

    .. math:: w^c_k = \frac{y_c - y_c^{(k)}}{y_c}, \qquad
              S^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big),

    where :math:`y_c^{(k)}` is the score when channel :math:`k` of the layer output is set to zero
    (everything else, including the layers before, unchanged). Where :math:`y_c = 0` the denominator is
    replaced by :math:`\epsilon` (``1e-8``) to avoid a division by zero.

    Options:
        batch_size: ablated copies per forward pass (default 64); chunks may span several images.
        progress: show a tqdm progress bar over chunks.
        fast: use the single-pass speed trick (see :func:`ablation_scores`): the layers before the target
            layer run once per chunk on the chunk's distinct images, and the hook replaces the layer's
            output by a batch of ablated activations. It falls back automatically to repeating the image
            when the model has a skip connection across the layer. ``False`` forces the fallback.

    Differences from pytorch-grad-cam ``AblationCAM``: it *replaces the layer module* with an
    ``AblationLayer`` that ignores its input and returns cached activations (layers before it still run
    on ``batch_size`` repeated copies of the image); it loops over images; and it ablates with 0 only
    when the minimum of the whole ablated batch is exactly 0, otherwise with ``min - 1e7`` (a deviation
    from the paper for layers with negative values). For ReLU layers (all the paper's CNN layers) the
    values agree (tested).
    """
    acts, logits = forward_features(model, images, layer)
    index = torch.arange(images.shape[0], device=images.device)
    base = target(logits, index)
    ablated, _ = ablation_scores(model, images, target, layer, acts, batch_size, progress, fast)
    denom = torch.where(base == 0, torch.full_like(base, EPS), base)
    weights = (base[:, None] - ablated) / denom[:, None]
    return weighted_sum(weights, acts).relu()
