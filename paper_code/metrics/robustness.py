r"""Robustness and complexity metrics of Table 4: Max-Sensitivity and ADCC (Section 5.3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..methods.base import check_choice
from .base import Evaluation, Explainer, MetricInfo, metric
from .common import SPACES, space_origin

# --------------------------------------------------------------------------- Max-Sensitivity


def uniform_perturbation(
    images: torch.Tensor, radius: float, generator: torch.Generator, clamp: bool = True
) -> torch.Tensor:
    """x + U(−r, r) noise, drawn on the CPU from ``generator`` (device-independent), clamped to
    [0, 1]: Max-Sensitivity's input perturbation (Yeh et al. 2019; Quantus' ``uniform_noise``).

    >>> x = torch.full((1, 3, 2, 2), 0.5)
    >>> y = uniform_perturbation(x, 0.2, torch.Generator().manual_seed(0))
    >>> bool(((y - x).abs() <= 0.2).all()), tuple(y.shape)
    (True, (1, 3, 2, 2))
    """
    noise = (
        torch.rand(images.shape, generator=generator, dtype=images.dtype) * (2 * radius) - radius
    )
    out = images + noise.to(images.device)
    return out.clamp(0, 1) if clamp else out


NORMALIZATIONS = ("explanation", "input")
#: Where Max-Sensitivity's unperturbed map S(x) comes from.
UNPERTURBED_MAPS = ("recompute", "given")


@metric(
    MS=MetricInfo(
        "Max-Sensitivity", "lower", "ratio", "§5.3.3 (Yeh 2019)", "robustness",
        reference="Yeh et al. 2019; Quantus MaxSensitivity",
    )
)  # fmt: skip
def max_sensitivity(
    explainer: Explainer,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int],
    *,
    radius: float = 0.2,
    samples: int = 10,
    seed: int = 0,
    clamp: bool = True,
    normalize_by: str = "explanation",
    unperturbed_maps: str = "recompute",
    maps: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Max-Sensitivity (Yeh et al. 2019; Section 5.3.3), per image (a ratio, not %; lower is better).

    .. math:: \mathrm{MS}(x) = \max_{s=1..N} \frac{\lVert S(x) - S(x + \epsilon_s)\rVert_F}{D(x)},
              \qquad \epsilon_s \sim \mathcal U[-r, r]^{3\times H\times W},

    with :math:`r` = ``radius`` (Quantus' ``lower_bound``, 0.2 in the paper), :math:`N` = ``samples``
    (10), the map recomputed by ``explainer(images, classes) -> maps [B, 1, H, W]`` for the *same*
    classes, and a denominator :math:`D(x)` that **the paper does not settle** (Section 5.3.3: Quantus,
    lower bound 0.2, 10 samples; version not given), because Quantus changed it between versions:

    * ``normalize_by="explanation"`` (default): :math:`D = \lVert S(x)\rVert_F`. This is what the
      batched ``MaxSensitivity.evaluate_batch`` of **Quantus 0.6.0** computes
      (``norm_denominator(a=a_batch)``, the batched rewrite of Quantus PRs #351/#357), and Captum's
      ``sensitivity_max`` with its ``norm`` of the explanation. ``tests/test_quantus_oracle.py`` checks
      it against Quantus 0.6.0 fed the same noise.
    * ``normalize_by="input"``: :math:`D = \lVert x\rVert_F` over all ``3·H·W`` values of the image
      *as the metric receives it* (here: [0, 1] pixels). This is what the per-instance implementation
      of **Quantus up to 0.5.x** computes (``norm_denominator(a=x.flatten())``; read in the 0.1-0.5
      sources), i.e. the releases available when the paper was written (2023). Values are then on a
      different scale (:math:`\lVert x\rVert_F \approx 200` for a 224² photo in [0, 1], against
      :math:`\lVert S\rVert_F \lesssim 224`), and they also change with the input scaling.

    Which one the paper ran is not known. For ``"input"``: the paper's date (2023) predates Quantus
    0.6. For ``"explanation"`` (the default we keep): it is the current Quantus and Captum definition,
    and the paper's values (1.03-1.25, Table 4) fit it; with [0, 1] maps and [0, 1] images the
    ``"input"`` ratio is at most :math:`\sqrt{HW}/\lVert x\rVert_F` (about 1.1 for a photo of mean
    brightness 0.45) and reaching it needs a map that flips completely, so Table 4's values under
    ``"input"`` would need maps or inputs on another scale than ours.

    Noise. The noise is added to the **[0, 1] image**, before the model's own standardization
    (r = 0.2 is about 0.9 standard deviations of ImageNet pixels), and the result is **clamped to
    [0, 1]** (``clamp=False`` keeps it unclamped). Quantus instead adds unclamped noise to whatever
    array the model takes as input: the [0, 1] image when standardization is a layer inside the model
    (as in the official Opti-CAM code, hanwei0912/OptiCAM), the standardized tensor otherwise. Quantus draws
    from ``np.random`` (global state); we draw from a CPU generator seeded with ``seed``, sample by
    sample, each sample one ``[B, 3, H, W]`` tensor (device-independent). Other choices: a zero
    denominator is replaced by 1 (as Captum; Quantus would return inf/NaN); maps are not
    re-normalized (explainers already return maps in [0, 1]; Quantus' ``normalise`` defaults to
    False for this metric).

    Precision of :math:`S(x)` (``unperturbed_maps``). The score compares :math:`S(x)` with maps
    recomputed by ``explainer``; if the two sides are computed differently (e.g. :math:`S(x)` read from
    a float16 cache, :math:`S(x + \epsilon)` in float32), their rounding difference enters the
    numerator and MS no longer vanishes as :math:`\epsilon \to 0`. Hence:

    * ``"recompute"`` (default): :math:`S(x)` = ``explainer(images, classes)``, computed in this
      call exactly as every :math:`S(x + \epsilon_s)` (same function, dtype, device, chunking), so a
      deterministic explainer scores exactly 0 for :math:`\epsilon = 0`. ``maps`` is **not used**
      (one more explanation of the batch: :math:`1/N` of the metric's cost). Quantus and Captum also
      explain :math:`x` and :math:`x + \epsilon` the same way.
    * ``"given"``: :math:`S(x)` = ``maps`` (required), and each :math:`S(x + \epsilon_s)` is
      **rounded to** ``maps.dtype`` before the difference, so both sides carry the same precision
      (a float16 cache gives float16-rounded perturbed maps); saves the extra explanation.

    A deterministic explainer and no noise give exactly 0; noise gives a positive ratio:

    >>> explainer = lambda x, c: x.mean(1, keepdim=True)
    >>> x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> max_sensitivity(explainer, x, [0, 1], radius=0.0, samples=3).tolist()
    [0.0, 0.0]
    >>> bool((max_sensitivity(explainer, x, [0, 1]) > 0).all())
    True
    """
    ev = Evaluation(None, images, batch_size=batch_size, progress=progress)
    check_choice("normalize_by", normalize_by, NORMALIZATIONS)
    check_choice("unperturbed_maps", unperturbed_maps, UNPERTURBED_MAPS)
    if unperturbed_maps == "given" and maps is None:
        raise ValueError("unperturbed_maps='given' needs maps (S(x)); got maps=None")
    cls = ev.classes(classes)
    if unperturbed_maps == "recompute":
        s0 = ev.explain(explainer, images, cls)
        given_dtype = None
    else:
        s0, given_dtype = maps.detach(), maps.dtype
    with torch.no_grad():
        s0 = s0.to(images.device).flatten(1).double()
        ref = s0 if normalize_by == "explanation" else images.flatten(1).double()
        denom = ref.norm(dim=1)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        gen = torch.Generator().manual_seed(seed)
        # All samples are drawn first (same draws, same order as one sample at a time) and explained
        # together in chunks of batch_size: no chunk is smaller than it has to be.
        xs = torch.cat([uniform_perturbation(images, radius, gen, clamp) for _ in range(samples)])
        b = images.shape[0]
        s1 = ev.explain(explainer, xs, cls.repeat(samples), "Max-Sensitivity", progress)
        if given_dtype is not None:
            s1 = s1.to(given_dtype)  # same precision as the given S(x)
        s1 = s1.flatten(1).view(samples, b, -1)
        best = torch.zeros_like(denom)
        for s in range(samples):
            best = torch.maximum(best, (s0 - s1[s].double()).norm(dim=1) / denom)
    return best


# --------------------------------------------------------------------------- ADCC


#: What ADCC's coherency does when the Pearson correlation is undefined (a constant map).
CONSTANT_MAPS = ("zero_correlation", "nan")


def _pearson(a: torch.Tensor, b: torch.Tensor, undefined: float = 0.0) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    fill = torch.full_like(den, undefined)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp(min=1e-300), fill)


@metric(
    ADCC=MetricInfo(
        # The paper's Table 4 header says ADCC ↓; it is higher-is-better by construction.
        "ADCC", "higher", "%", "§5.3.3 (Poppi 2021)", "complexity",
        reference="Poppi et al. 2021; aimagelab/ADCC",
    )
)  # fmt: skip
def adcc(
    model: nn.Module,
    explainer: Explainer,
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    masking_space: str = "pixel",
    constant_maps: str = "zero_correlation",
    input_mean: Sequence[float] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    compile: bool | str | None = None,
) -> dict[str, torch.Tensor]:
    r"""ADCC of Poppi et al. (2021), Section 5.3.3, per image, in % (**higher** is better).

    .. math::
        \mathrm{ADCC} = \frac{3}{\frac{1}{\mathrm{Coh}} + \frac{1}{1-\mathrm{Com}} + \frac{1}{1-\mathrm{AD}}}
        \cdot 100,\quad
        \mathrm{Coh} = \frac{\rho(S, S') + 1}{2},\quad \mathrm{Com} = \frac{\lVert S\rVert_1}{HW},\quad
        \mathrm{AD} = \frac{[p - o]_+}{p},

    a harmonic mean, with :math:`\rho` the Pearson correlation of the flattened maps,
    :math:`S' =` ``explainer(`` :math:`\hat x` ``, c)`` the map of the explanation image
    :math:`\hat x = x \odot S` (masked as ``masking_space`` says), and :math:`p, o` the softmax
    probabilities of class :math:`c` for :math:`x` and :math:`\hat x`. :math:`c` defaults to the
    **predicted** class of :math:`x` (ADCC's convention; ``maps`` should explain that class). AD here
    is a fraction, not %. The paper's Table 4 arrow (↓) is a misprint: ADCC is higher-is-better by
    construction.

    ``masking_space`` (where :math:`x \odot S` is taken; :func:`paper_code.metrics.common.space_origin`):

    * ``"pixel"`` (default): :math:`\hat x = x \odot S` on the [0, 1] image, masked pixels black.
      The ADCC authors' code (aimagelab/ADCC) multiplies the tensor the model receives; with the
      official Opti-CAM wrapper, which standardizes inside the model, that tensor is the [0, 1]
      image, so this is the reference code fed the paper's model, and the masking convention of
      AD/AG/AI (Section 3.1 / App. H) as well.
    * ``"standardized"``: :math:`\hat z = z \odot S` on :math:`z = (x - \mu)/\sigma`, i.e.
      :math:`\hat x = (x - \mu) \odot S + \mu`: masked pixels become the mean colour (grey), as the
      ADCC code does when the data loader standardizes. :math:`\mu` from ``model.standardize`` or
      ``input_mean``. Changes :math:`o` (AD) and :math:`S'` (coherency); complexity is unchanged.

    ``constant_maps`` (:math:`\rho` is undefined when :math:`S` or :math:`S'` is constant, e.g. an
    all-zero CAM after the :math:`\epsilon`-guarded normalization):

    * ``"zero_correlation"`` (default): :math:`\rho := 0` (Coh = 0.5), so the image keeps a finite
      ADCC and counts in the mean. Default because dropping such images would reward a method for
      failing on them.
    * ``"nan"``: :math:`\rho` and ADCC are NaN, as in the ADCC code (whose Pearson divides 0 by 0);
      :func:`paper_code.metrics.summarize` (a NaN-ignoring mean) then leaves the image out, where a
      plain mean would be NaN.

    Otherwise, when a component is 0 (e.g. Com = 1 or AD = 1) the harmonic mean is its limit, 0.

    ``compile``: the network's own forward passes (AD) under ``torch.compile``; the explainer
    runs as given.

    Returns:
        dict with ``ADCC`` (%), ``coherency``, ``complexity``, ``AD`` (fractions), all float64 ``[B]``.

    >>> import paper_code
    >>> model = paper_code.load_model("tiny")
    >>> explainer = lambda x, c: x.mean(1, keepdim=True)
    >>> x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    >>> r = adcc(model, explainer, x, explainer(x, None))
    >>> sorted(r), [bool(((v >= 0) & (v <= 100)).all()) for v in r.values()]
    (['AD', 'ADCC', 'coherency', 'complexity'], [True, True, True, True])
    """
    ev = Evaluation(model, images, maps, batch_size=batch_size, progress=progress, compile=compile)
    maps = ev.maps
    check_choice("masking_space", masking_space, SPACES)
    check_choice("constant_maps", constant_maps, CONSTANT_MAPS)
    origin = space_origin(model, masking_space, images, input_mean)
    cls = ev.classes(classes)
    masked = images * maps if masking_space == "pixel" else (images - origin) * maps + origin
    s2 = ev.explain(explainer, masked, cls)
    s1f, s2f = maps.flatten(1).double(), s2.flatten(1).double()
    undefined = 0.0 if constant_maps == "zero_correlation" else float("nan")
    coherency = (_pearson(s1f, s2f, undefined) + 1) / 2
    complexity = s1f.abs().mean(1)
    p = ev.probs(lambda sl: images[sl], cls, desc="ADCC (p)")
    o = ev.probs(lambda sl: masked[sl], cls, desc="ADCC (o)")
    # AD of eq. (13) as a fraction (0/0 := 0 when p = 0, as :func:`classification`).
    ad = torch.where(p > 0, (p - o).clamp(min=0) / p.clamp(min=1e-300), torch.zeros_like(p))
    comps = torch.stack([coherency, 1 - complexity, 1 - ad])
    harmonic = 3 / (1 / comps.clamp(min=1e-300)).sum(0)
    score = torch.where((comps > 0).all(0), harmonic, torch.zeros_like(harmonic)) * 100
    score = torch.where(coherency.isnan(), coherency, score)
    return {"ADCC": score, "coherency": coherency, "complexity": complexity, "AD": ad}
