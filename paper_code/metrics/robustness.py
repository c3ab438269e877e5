r"""Robustness and complexity metrics of Table 4: Max-Sensitivity and ADCC (SPEC §3.4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import Explainer, _as_classes, _check, _chunks, _classes
from .faithfulness import classification

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


NORMALIZATIONS = ("explanation", "input")


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
    maps: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Max-Sensitivity (Yeh et al. 2019; Section 5.3.3), per image (a ratio, not %; lower is better).

    .. math:: \mathrm{MS}(x) = \max_{s=1..N} \frac{\lVert S(x) - S(x + \epsilon_s)\rVert_F}{D(x)},
              \qquad \epsilon_s \sim \mathcal U[-r, r]^{3\times H\times W},

    with :math:`r` = ``radius`` (Quantus' ``lower_bound``, 0.2 in the paper), :math:`N` = ``samples``
    (10), the map recomputed by ``explainer(images, classes) -> maps [B, 1, H, W]`` for the *same*
    classes, and a denominator :math:`D(x)` that **the paper does not settle** (SPEC §3.4: "Quantus,
    lower bound 0.2, 10 samples", version not given), because Quantus changed it between versions:

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
    (as in the official Opti-CAM code, SPEC §3.1), the standardized tensor otherwise. Quantus draws
    from ``np.random`` (global state); we draw from a CPU generator seeded with ``seed``, sample by
    sample, each sample one ``[B, 3, H, W]`` tensor (device-independent). Other choices: a zero
    denominator is replaced by 1 (as Captum; Quantus would return inf/NaN); maps are not
    re-normalized (explainers already return maps in [0, 1]; Quantus' ``normalise`` defaults to
    False for this metric). ``maps`` may pass precomputed :math:`S(x)`.
    """
    _check(images)
    if normalize_by not in NORMALIZATIONS:
        raise ValueError(f"normalize_by must be one of {NORMALIZATIONS}, got {normalize_by!r}")
    cls = _as_classes(classes, images.shape[0], images.device)
    # The explainer runs with autograd enabled: gradient methods and Opti-CAM need it.
    s0 = _explain_chunks(explainer, images, cls, batch_size) if maps is None else maps
    with torch.no_grad():
        s0 = s0.detach().to(images.device).flatten(1).double()
        ref = s0 if normalize_by == "explanation" else images.flatten(1).double()
        denom = ref.norm(dim=1)
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
    compile: bool | str | None = None,
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

    ``compile``: the network's own forward passes (AD) under ``torch.compile``; the explainer
    runs as given.

    Returns:
        dict with ``ADCC`` (%), ``coherency``, ``complexity``, ``AD`` (fractions), all float64 ``[B]``.
    """
    maps = _check(images, maps)
    cls = _classes(model, images, classes, batch_size, compile)
    masked = images * maps
    # The explainer runs with autograd enabled: gradient methods and Opti-CAM need it.
    s2 = _explain_chunks(explainer, masked, cls, batch_size).detach().to(images.device)
    s1f, s2f = maps.flatten(1).double(), s2.flatten(1).double()
    coherency = (_pearson(s1f, s2f) + 1) / 2
    complexity = s1f.abs().mean(1)
    ad = (
        classification(
            model, images, maps, cls, batch_size=batch_size, progress=progress, compile=compile
        )["AD"]
        / 100
    )
    comps = torch.stack([coherency, 1 - complexity, 1 - ad])
    harmonic = 3 / (1 / comps.clamp(min=1e-300)).sum(0)
    score = torch.where((comps > 0).all(0), harmonic, torch.zeros_like(harmonic)) * 100
    return {"ADCC": score, "coherency": coherency, "complexity": complexity, "AD": ad}
