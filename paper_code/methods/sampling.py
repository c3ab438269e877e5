r"""The sampling baselines of the paper (Section 5.2): LIME and GradientSHAP, through their reference
packages (``lime`` 0.2.0.1, BSD-2; Captum ``GradientShap``, BSD-3).

Both are registered in :data:`paper_code.methods.METHODS` as
``fn(model, images, target, layer=None, **options) -> Tensor[B, 1, H, W]`` in [0, 1] and are normally
called through :func:`paper_code.methods.explain`. Neither reads a feature layer. The paper gives no
settings for either (Section 5.2 names them only); the defaults chosen here are listed in each docstring.

Conventions shared with the rest of the project: images are ``[B, 3, H, W]`` in [0, 1] (the model
standardizes inside), the network is frozen (:func:`paper_code.methods.hooks.frozen`), the final map
is the positive part of the attribution, range-normalized per image with an :math:`\epsilon` guard
(:func:`paper_code.methods.maps.normalize_range`; an all-non-positive attribution gives all zeros).
Every random draw is seeded by ``seed`` and the global numpy / torch random states are restored
afterwards.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..models.outputs import logits_of
from .base import positive_int, resolve_batch_size
from .hooks import frozen
from .maps import normalize_range
from .registry import register
from .targets import Target

__all__ = [
    "gradientshap",
    "gradientshap_attributions",
    "lime",
    "lime_weights",
    "quickshift_segmentation",
]

Segmentation = Callable[[np.ndarray], np.ndarray]

# --------------------------------------------------------------------------- shared helpers


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed numpy's and torch's global generators for the block, then restore both.

    Captum draws GradientSHAP's path coefficients with ``np.random`` and its input noise with
    ``torch.normal``; neither takes a generator, so the global states are seeded and restored.
    """
    state = np.random.get_state()  # noqa: NPY002  (Captum draws from the legacy global)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            np.random.seed(seed)  # noqa: NPY002
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def _single_class(target: Target) -> torch.Tensor | None:
    """The ``[B]`` class indices of a class-index target (``ClassLogit``, ``ClassProbability``), else None."""
    classes = getattr(target, "classes", None)
    if isinstance(classes, torch.Tensor) and classes.dim() == 1:
        return classes.long()
    return None


# --------------------------------------------------------------------------- LIME


def quickshift_segmentation(
    kernel_size: float = 4, max_dist: float = 200, ratio: float = 0.2, seed: int = 0
) -> Segmentation:
    """LIME's default superpixels: scikit-image ``quickshift`` with LIME's parameters.

    lime 0.2.0.1 builds ``SegmentationAlgorithm('quickshift', kernel_size=4, max_dist=200,
    ratio=0.2, random_seed=...)``; scikit-image >= 0.23 renamed ``random_seed`` to ``rng``, so lime's
    parameter filter drops it silently. This wrapper passes the same parameters and the seed as
    ``rng`` (quickshift uses it only to break ties).
    """
    from skimage.segmentation import quickshift

    def segment(image: np.ndarray) -> np.ndarray:
        return quickshift(image, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, rng=seed)

    return segment


def _lime_classifier(
    model: nn.Module,
    target: Target,
    image_index: int,
    device: torch.device,
    dtype: torch.dtype,
    chunk: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """lime's ``classifier_fn``: ``[n, H, W, 3]`` numpy images -> ``[n, L]`` numpy scores.

    Class-index targets give the softmax probabilities ``[n, C]`` (what lime expects from a
    ``predict_proba``); other targets give their score as one column ``[n, 1]``. The model runs on
    the images' device, ``chunk`` perturbed images per forward pass.
    """
    probabilities = _single_class(target) is not None

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device=device, dtype=dtype)
        x = x.permute(0, 3, 1, 2)
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], chunk):
                logits = logits_of(model(x[i : i + chunk]))
                if probabilities:
                    out.append(logits.float().softmax(1))
                else:
                    index = torch.full((logits.shape[0],), image_index, device=logits.device)
                    scores = target(logits, index)
                    if scores.dim() != 1:
                        raise ValueError(
                            "LIME needs one score per image from the target, got shape "
                            f"{list(scores.shape)}"
                        )
                    out.append(scores.float()[:, None])
        return torch.cat(out).cpu().double().numpy()

    return classifier_fn


def lime_weights(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    num_samples: int = 1000,
    batch_size: int | None = None,
    hide_color: float | None = 0.0,
    kernel_width: float = 0.25,
    kernel_size: float = 4,
    max_dist: float = 200,
    ratio: float = 0.2,
    segmentation_fn: Segmentation | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""LIME's raw explanation: per-pixel signed superpixel weights ``[B, 1, H, W]`` and segments ``[B, H, W]``.

    For each image, lime's ``LimeImageExplainer(kernel_width, random_state=seed)`` draws
    ``num_samples`` binary vectors :math:`z \in \{0,1\}^S` over the :math:`S` superpixels (the first
    is all ones), builds :math:`x_z` (superpixels with :math:`z_s = 0` set to ``hide_color``),
    scores them with the model, and fits a weighted ridge regression (:math:`\alpha = 1`)

    .. math:: \min_{w, b} \sum_z \pi(z) \big(g(x_z) - b - w^\top z\big)^2 + \lVert w \rVert^2,
              \qquad \pi(z) = \sqrt{\exp(-d(z, \mathbf 1)^2 / \sigma^2)},

    with :math:`d` the cosine distance and :math:`\sigma` = ``kernel_width``. ``g`` is the
    probability of the target class (class-index targets) or the target's score (other targets).
    Pixel :math:`p` of the returned map holds :math:`w_{s(p)}`, the weight of its superpixel.

    Each image uses its own explainer seeded with ``seed``, so an image's result does not depend on
    the batch it is in. ``segmentation_fn`` (``image [H, W, 3] float64 -> labels [H, W]`` in
    ``0..S-1``) replaces quickshift (``kernel_size``, ``max_dist``, ``ratio`` are then unused).
    """
    from lime.lime_image import LimeImageExplainer

    num_samples = positive_int("num_samples", num_samples)
    batch_size = resolve_batch_size(batch_size, cpu=10, device=images.device)
    classes = _single_class(target)
    segment = segmentation_fn or quickshift_segmentation(kernel_size, max_dist, ratio, seed)
    b, _, h, w = images.shape
    maps = torch.zeros(b, 1, h, w, dtype=images.dtype, device=images.device)
    all_segments = torch.zeros(b, h, w, dtype=torch.long)
    host = images.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    with frozen(model):
        for i in range(b):
            explainer = LimeImageExplainer(kernel_width=kernel_width, random_state=seed)
            fn = _lime_classifier(model, target, i, images.device, images.dtype, batch_size)
            label = int(classes[i]) if classes is not None else 0
            # lime prints a tqdm bar over its samples and has no switch for it.
            quiet = (
                contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
            )
            with quiet:
                exp = explainer.explain_instance(
                    host[i],
                    fn,
                    labels=(label,),
                    top_labels=None,
                    hide_color=hide_color,
                    num_samples=num_samples,
                    batch_size=batch_size,
                    segmentation_fn=segment,
                    random_seed=seed,
                )
            segments = np.asarray(exp.segments)
            weights = np.zeros(int(segments.max()) + 1)
            for feature, weight in exp.local_exp[label]:
                weights[feature] = weight
            seg_t = torch.from_numpy(segments.astype(np.int64))
            all_segments[i] = seg_t
            maps[i, 0] = torch.from_numpy(weights[segments]).to(maps)
    return maps, all_segments.to(images.device)


@register(
    "lime",
    paper_name="LIME",
    kind="perturbation",
    needs_layer=False,
)
def lime(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: None = None,
    *,
    num_samples: int = 1000,
    batch_size: int | None = None,
    hide_color: float | None = 0.0,
    kernel_width: float = 0.25,
    kernel_size: float = 4,
    max_dist: float = 200,
    ratio: float = 0.2,
    segmentation_fn: Segmentation | None = None,
    seed: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    r"""LIME (Ribeiro et al., KDD 2016) through the ``lime`` package: superpixel weights of a local
    linear surrogate, :math:`S = n(\max(w_{s(p)}, 0))`.

    See :func:`lime_weights` for the surrogate. The map is the weight of each pixel's superpixel,
    positive part, range-normalized per image (an image whose weights are all :math:`\le 0` gives
    zeros).

    Options (the paper gives none, Section 5.2):
        num_samples: perturbed images per explanation; lime's default 1000.
        batch_size: perturbed images per forward pass (lime calls ``classifier_fn`` with this many);
            ``None``: 64 on a GPU, lime's default 10 on a CPU.
        hide_color: value of a removed superpixel, in [0, 1] pixel space. Default 0 (black), as in
            lime's PyTorch tutorial and the project's other "absent" inputs (Opti-CAM's masks,
            GradientSHAP's baseline). ``None`` is lime's package default: each superpixel's mean
            colour.
        kernel_width: lime's kernel width (0.25).
        kernel_size, max_dist, ratio: quickshift parameters, lime's defaults (4, 200, 0.2).
        segmentation_fn: a replacement segmentation (``[H, W, 3] -> [H, W]`` labels ``0..S-1``).
        seed: seeds lime's sampling and quickshift's tie-breaking; each image uses it afresh.
        progress: show lime's own per-sample progress bar (hidden otherwise).

    The explained class is the target's class (the paper explains the ground-truth class), with
    ``labels=[c]`` and ``top_labels=None``; lime regresses its softmax probability. For other
    target callables lime regresses the target's score. Differences from a plain lime call: quickshift
    is run through :func:`quickshift_segmentation` (same parameters; the seed reaches scikit-image),
    and the perturbed images are scored in chunks on the images' device.
    """
    if layer is not None:
        raise TypeError("lime reads no feature layer; pass layer=None")
    weights, _ = lime_weights(
        model,
        images,
        target,
        num_samples=num_samples,
        batch_size=batch_size,
        hide_color=hide_color,
        kernel_width=kernel_width,
        kernel_size=kernel_size,
        max_dist=max_dist,
        ratio=ratio,
        segmentation_fn=segmentation_fn,
        seed=seed,
        progress=progress,
    )
    return normalize_range(weights.clamp_min(0))


# --------------------------------------------------------------------------- GradientSHAP


class _Scored(nn.Module):
    """``(x, index) -> target(model(x), index)``: one score per row, for Captum (``target=None``).

    ``index`` travels as an additional forward argument, which Captum expands exactly like the
    inputs (``repeat_interleave`` over the samples), so each row is scored against its own image.
    """

    def __init__(self, model: nn.Module, target: Target) -> None:
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        scores = self.target(logits_of(self.model(x)), index)
        if scores.dim() != 1:
            raise ValueError(
                f"GradientSHAP needs one score per image from the target, got shape {list(scores.shape)}"
            )
        return scores


def gradientshap_attributions(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    *,
    n_samples: int = 50,
    stdevs: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    samples_per_pass: int | None = None,
) -> torch.Tensor:
    r"""Captum ``GradientShap`` attributions ``[B, 3, H, W]`` with a black baseline :math:`b = 0`.

    .. math:: \phi(x) = \frac{1}{n} \sum_{j=1}^{n} (\tilde x_j - b) \odot
              \nabla g\big(b + \alpha_j (\tilde x_j - b)\big), \qquad
              \alpha_j \sim U[0, 1], \quad \tilde x_j = x + \varepsilon_j,\
              \varepsilon_j \sim \mathcal N(0, \text{stdevs}^2),

    with :math:`g` the target score (the class logit for class-index targets) and
    :math:`n` = ``n_samples``. In expectation (``stdevs=0``) this is Integrated Gradients from the
    black image, so :math:`\sum \phi \approx g(x) - g(b)` (completeness); for a linear :math:`g(x) =
    w^\top x + c` it is exactly :math:`w \odot (x - b)`.

    ``batch_size`` images go to Captum per call (``batch_size * n_samples`` forward/backward rows);
    ``None`` (default): one image per call. The random draws are re-seeded with ``seed`` before
    every call (the global numpy and torch states are restored afterwards), so with one image per
    call an image's attributions do not depend on its batch (batch invariance, tested); with a
    larger ``batch_size`` the draws of an image depend on its position in the chunk.

    ``samples_per_pass`` bounds memory: the ``n_samples`` interpolated copies of an image are run
    through the network ``samples_per_pass`` at a time (``None``: 10 on a CPU, all on a GPU), each
    pass seeded with ``(seed, pass)``, and the attributions averaged with their sample counts as
    weights (the same estimator; 50 EfficientNet-Lite0 copies at once peak at about 3.5 GB).
    """
    from captum.attr import GradientShap

    n_samples = positive_int("n_samples", n_samples)
    if stdevs < 0:
        raise ValueError(f"stdevs must be >= 0, got {stdevs!r}")
    b = images.shape[0]
    chunk = 1 if batch_size is None else positive_int("batch_size", batch_size)
    if samples_per_pass is None:
        samples_per_pass = n_samples if images.is_cuda else 10
    per_pass = positive_int("samples_per_pass", samples_per_pass)
    passes = [min(per_pass, n_samples - k) for k in range(0, n_samples, per_pass)]
    out = []
    with frozen(model), torch.enable_grad():
        explainer = GradientShap(_Scored(model, target))
        for start in range(0, b, chunk):
            x = images[start : start + chunk].detach()
            index = torch.arange(start, start + x.shape[0], device=images.device)
            total = torch.zeros_like(x)
            for k, ns in enumerate(passes):
                with _seeded(seed if k == 0 else seed * 1000003 + k, images.device):
                    attributions = explainer.attribute(
                        x,
                        baselines=torch.zeros_like(x[:1]),
                        n_samples=ns,
                        stdevs=float(stdevs),
                        target=None,
                        additional_forward_args=(index,),
                    )
                total += attributions.detach() * ns
            out.append(total / n_samples)
    return torch.cat(out) if out else images.new_zeros(images.shape)


@register(
    "gradientshap",
    paper_name="GradientShap",
    kind="gradient",
    needs_layer=False,
    differentiable=True,
)
def gradientshap(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: None = None,
    *,
    n_samples: int = 50,
    stdevs: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    samples_per_pass: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""GradientSHAP (Lundberg & Lee, NeurIPS 2017) through Captum:
    :math:`S = n\big(\max(\sum_{ch} \phi_{ch}(x), 0)\big)`.

    :math:`\phi` is :func:`gradientshap_attributions` (black baseline); the map sums it over the
    colour channels, keeps the positive part and range-normalizes per image.

    Options (the paper gives none, Section 5.2):
        n_samples: samples per image, default 50 (Captum's own default is 5; 50 is the value of
            Captum's GradientSHAP tutorial and keeps the Monte-Carlo error of the path integral
            small: the per-image cost is 50 forward/backward passes).
        stdevs: standard deviation of the Gaussian noise added to the input, in [0, 1] pixel units.
            Default 0.0 (Captum's default): the attribution is then a Monte-Carlo estimate of
            Integrated Gradients from the black image and satisfies completeness in expectation.
        batch_size: images per Captum call (``None``: one, which keeps maps batch-invariant).
        samples_per_pass: interpolated copies per forward/backward pass (memory; ``None``: 10 on a
            CPU, all on a GPU). Part of the random stream, hence of the cache key.
        seed: seeds Captum's path coefficients and noise.
        progress: accepted for a uniform interface; there is no loop to report on.
    """
    del progress
    if layer is not None:
        raise TypeError("gradientshap reads no feature layer; pass layer=None")
    phi = gradientshap_attributions(
        model,
        images,
        target,
        n_samples=n_samples,
        stdevs=stdevs,
        batch_size=batch_size,
        seed=seed,
        samples_per_pass=samples_per_pass,
    )
    return normalize_range(phi.sum(1, keepdim=True).clamp_min(0))
