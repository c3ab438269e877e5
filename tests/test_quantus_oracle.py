"""Quantus 0.6 as an oracle for Max-Sensitivity and AOPC (region perturbation), the two Table 4 metrics
the paper computed with Quantus (Section 5.3.3). Quantus is a test-only dependency.

Both oracles run Quantus' own code on small seeded models with the paper's settings (lower bound 0.2,
10 samples; patch 14, 10 regions, black baseline, softmax). Quantus draws its noise from ``np.random``;
we hand it a ``perturb_func`` that draws from the same seeded torch generator, in the same order, as
:func:`paper_code.metrics.max_sensitivity`, so both see bit-identical perturbed images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import paper_code as pc
from paper_code import metrics as M

quantus = pytest.importorskip("quantus")
if not quantus.__version__.startswith("0.6"):
    pytest.skip(
        f"oracles written for Quantus 0.6, found {quantus.__version__}", allow_module_level=True
    )


@pytest.fixture(scope="module")
def tiny():
    return pc.load_model("tiny")


class Float64(torch.nn.Module):
    """A network computing in float64 on the float32 images both sides pass it (Quantus makes a
    float32 tensor of every input), so that both sides' probabilities are float64."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())


@pytest.fixture(scope="module")
def sharp():
    """Seeded linear model on 14×14 patch means: deleting 10 of the 256 regions moves its softmax by
    up to ~0.08 (the tiny offline model barely reacts to noise images: drops ~1e-4).

    In float64 (:class:`Float64`): with float32 logits Quantus' drops differed from ours by up to
    1.5e-7 (float32 softmax), depending on the CPU's kernels, against a bound of 1e-6."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.AvgPool2d(14), torch.nn.Flatten(), torch.nn.Linear(768, 10))
    with torch.no_grad():
        net[-1].weight.mul_(10)
    return Float64(net).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(11))


# --------------------------------------------------------------------------- Max-Sensitivity


def _gradcam(model):
    def explainer(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return pc.explain("gradcam", model, x, c)

    return explainer


def _square_explainer(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Deterministic explainer defined for any input range (unclamped noise leaves [0, 1])."""
    idx = torch.arange(x.shape[0])
    return (x[idx, c.long() % 3] ** 2)[:, None]


def _shared_noise(seed: int, clamp: bool):
    """Quantus perturb_func (batched signature) drawing exactly our noise: one [B, 3, H, W] draw from a
    torch CPU generator per call, i.e. per Quantus sample; ``clamp`` applies our [0, 1] clamp."""
    gen = torch.Generator().manual_seed(seed)

    def perturb(arr: np.ndarray, indices: np.ndarray, lower_bound: float, **kwargs) -> np.ndarray:
        x = torch.from_numpy(arr).view(arr.shape[0], 3, 224, 224)
        out = M.uniform_perturbation(x, lower_bound, gen, clamp=clamp)
        return out.reshape(arr.shape).numpy()

    return perturb


def _quantus_max_sensitivity(model, explainer, x, classes, maps, seed, clamp):
    def explain_func(model, inputs, targets, **kwargs):
        xi = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        return explainer(xi, torch.as_tensor(np.asarray(targets))).detach().numpy()

    metric = quantus.MaxSensitivity(
        nr_samples=10,
        lower_bound=0.2,
        perturb_func=_shared_noise(seed, clamp),
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    out = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=classes.numpy(),
        a_batch=maps.numpy(),
        explain_func=explain_func,
        channel_first=True,
        device="cpu",
    )
    return np.asarray(out, dtype=np.float64)


def test_max_sensitivity_matches_quantus_06_gradcam(tiny, images):
    """Default definition (normalize_by="explanation") with Grad-CAM, Quantus fed our clamped noise."""
    classes = torch.tensor([3, 7])
    explainer = _gradcam(tiny)
    maps = explainer(images, classes).detach()
    theirs = _quantus_max_sensitivity(tiny, explainer, images, classes, maps, seed=4, clamp=True)
    ours = M.max_sensitivity(explainer, images, classes, seed=4, maps=maps)
    assert (ours > 0.05).all()  # a non-trivial value
    # Measured: max relative difference 5e-8 (float32 norms in Quantus, float64 here).
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6)
    # The older Quantus (<= 0.5) definition divides by ||x||: same numerator, another denominator.
    by_input = M.max_sensitivity(
        explainer, images, classes, seed=4, maps=maps, normalize_by="input"
    )
    ratio = maps.flatten(1).double().norm(dim=1) / images.flatten(1).double().norm(dim=1)
    np.testing.assert_allclose(by_input.numpy(), ours.numpy() * ratio.numpy(), rtol=1e-10)


def test_max_sensitivity_matches_quantus_06_unclamped(tiny, images):
    """clamp=False is Quantus' own noise model (unclamped): identical numbers; our clamped default
    is then a different number."""
    classes = torch.tensor([0, 2])
    maps = _square_explainer(images, classes)
    theirs = _quantus_max_sensitivity(
        tiny, _square_explainer, images, classes, maps, seed=9, clamp=False
    )
    ours = M.max_sensitivity(_square_explainer, images, classes, seed=9, clamp=False)
    # Measured: max relative difference 3e-8.
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6)
    clamped = M.max_sensitivity(_square_explainer, images, classes, seed=9)
    assert np.abs(clamped.numpy() / theirs - 1).max() > 1e-2


# --------------------------------------------------------------------------- AOPC


def _quantus_region_perturbation(model, x, maps, classes):
    metric = quantus.RegionPerturbation(
        patch_size=14, regions_evaluation=10, perturb_baseline="black", disable_warnings=True
    )
    out = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=classes.numpy(),
        a_batch=maps.numpy(),
        channel_first=True,
        softmax=True,
        device="cpu",
    )
    return np.asarray(out, dtype=np.float64)  # [B, 10] drops f(x) - f(x_k), k = 1..10


@pytest.mark.parametrize("baseline", ["black", "min"])
def test_aopc_drops_match_quantus_region_perturbation(sharp, images, baseline):
    classes = sharp(images).argmax(1)  # the predicted class (p ~ 0.75-0.8), as in the paper
    # Tie-free maps (continuous random values): Quantus' np.argsort order of tied regions is unspecified.
    maps = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(12))
    x = images.clone()
    if baseline == "black":
        x[:, :, 0, 0] = 0.0  # Quantus' "black" is the image minimum: make it 0, our "black"
    else:
        x = 0.1 + 0.9 * x  # minimum > 0: Quantus' "black" is our "min", not 0
    theirs = _quantus_region_perturbation(sharp, x, maps, classes)
    r = M.aopc(sharp, x, maps, classes, baseline=baseline, return_drops=True)
    ours = r["AOPC_drops"].numpy()
    assert ours.shape == theirs.shape == (2, 10)
    assert np.abs(theirs).max() > 5e-3  # the drops are not all ~0 (measured max 0.084)
    # Both in float64 (the sharp fixture): measured max |difference| 0 (float32 logits: 1.5e-7).
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    # Aggregations: Quantus' curve mean (k = 1..10) and Samek's mean over k = 0..10 = 10/11 of it.
    q = M.aopc(sharp, x, maps, classes, baseline=baseline, aggregation="quantus")["AOPC"].numpy()
    np.testing.assert_allclose(q, theirs.mean(1) * 100, rtol=0, atol=1e-10)
    np.testing.assert_allclose(r["AOPC"].numpy(), q * 10 / 11, rtol=1e-12)


def test_aopc_black_is_not_quantus_black_without_a_zero_pixel(sharp, images):
    """Quantus' "black" replaces regions by the image minimum, ours by 0: they differ when min > 0."""
    classes = sharp(images).argmax(1)
    maps = torch.rand(2, 1, 224, 224, generator=torch.Generator().manual_seed(12))
    x = 0.3 + 0.7 * images
    theirs = _quantus_region_perturbation(sharp, x, maps, classes)
    ours = M.aopc(sharp, x, maps, classes, baseline="black", return_drops=True)["AOPC_drops"]
    assert np.abs(ours.numpy() - theirs).max() > 1e-4
