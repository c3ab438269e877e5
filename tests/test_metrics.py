"""Tests of paper_code.metrics / paper_code.localization: exact values on analytic models, hand-computed
localization toys, Fake-CAM sanity checks, and cross-checks against pytorch-grad-cam and Captum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from paper_code import metrics as M
from paper_code.models import load_model

# --------------------------------------------------------------------------- analytic models


class SumModel(nn.Module):
    """Two classes; logit_c = a * (sum of the pixels of channel c). p_0 = sigmoid(a (s_0 - s_1))."""

    def __init__(self, a: float = 0.1) -> None:
        super().__init__()
        self.a = a
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Float64 logits, summed in float64 (no reduction-order dependence), compared below with
        # closed forms on float64 copies of the same float32 pixels. With float32 logits (and float32
        # sums in the closed forms) AD and AG, which divide a difference of probabilities, were off
        # by 1.1e-5 relative against a bound of 1.3e-5 (test_classification_closed_form); now by
        # 2.4e-14.
        return self.a * x[:, :2].double().sum((2, 3))


def p0(x: np.ndarray, a: float = 0.1) -> float:
    """Independent closed form: probability of class 0 for one [3, H, W] image."""
    return 1.0 / (1.0 + math.exp(-a * (x[0].sum() - x[1].sum())))


def rise_auc(y: list[float]) -> float:
    """Normalized trapezoid via numpy (independent of the implementation)."""
    return float(np.trapezoid(y, dx=1.0) / (len(y) - 1) * 100)


def mean_explainer(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A simple deterministic explainer: channel c squared (class-dependent, nonlinear)."""
    idx = torch.arange(images.shape[0], device=images.device)
    return (images[idx, classes.long() % 3] ** 2)[:, None]


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g)
    s = torch.rand(4, 1, 8, 8, generator=g)
    s[1, 0, :2] = 0.5  # ties
    s[2] = 0.3  # constant map
    return x, s


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


# --------------------------------------------------------------------------- AD / AG / AI


def test_classification_closed_form(toy):
    x, s = toy
    model = SumModel()
    targets = torch.tensor([0, 1, 0, 1])
    r = M.classification(model, x, s, targets)
    for i in range(4):
        pp = p0(x[i].numpy().astype(np.float64))
        oo = p0((x[i] * s[i]).numpy().astype(np.float64))
        if targets[i] == 1:
            pp, oo = 1 - pp, 1 - oo
        assert r["p"][i].item() == pytest.approx(pp, rel=1e-6)
        assert r["o"][i].item() == pytest.approx(oo, rel=1e-6)
        assert r["AD"][i].item() == pytest.approx(max(pp - oo, 0) / pp * 100, rel=1e-5, abs=1e-9)
        assert r["AG"][i].item() == pytest.approx(
            max(oo - pp, 0) / (1 - pp) * 100, rel=1e-5, abs=1e-9
        )
        assert r["AI"][i].item() == (100.0 if pp < oo else 0.0)
    for k in ("AD", "AG", "AI"):
        assert r[k].shape == (4,) and r[k].dtype == torch.float64


def test_classification_gain_and_drop_extremes():
    # Image with more red than green: class 0 likely; masking green raises p_0 and lowers p_1.
    x = torch.zeros(1, 3, 4, 4)
    x[:, 0] = 0.5
    x[:, 1] = 0.25
    keep_red = torch.ones(1, 1, 4, 4)
    model = SumModel(a=1.0)
    r_all = M.classification(model, x, keep_red, 0)  # S = 1: o = p
    assert r_all["AD"].item() == 0 and r_all["AG"].item() == 0 and r_all["AI"].item() == 0
    r_zero = M.classification(model, x, torch.zeros_like(keep_red), 0)  # o = 1/2 < p
    p = 1 / (1 + math.exp(-4.0))
    assert r_zero["AD"].item() == pytest.approx((p - 0.5) / p * 100)
    r_zero1 = M.classification(model, x, torch.zeros_like(keep_red), 1)  # o = 1/2 > 1 - p
    assert r_zero1["AG"].item() == pytest.approx((0.5 - (1 - p)) / p * 100)
    assert r_zero1["AI"].item() == 100


def test_classification_chunked_and_deterministic(tiny):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 112, 112, generator=g)
    s = torch.rand(5, 1, 112, 112, generator=g)
    t = torch.arange(5)
    a = M.classification(tiny, x, s, t, batch_size=2)
    b = M.classification(tiny, x, s, t, batch_size=64)
    c = M.classification(tiny, x, s, t, batch_size=2)
    for k in a:  # chunking changes float32 rounding inside the model only
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        assert torch.equal(a[k], c[k])


def test_fakecam_ad_and_ag_near_zero(tiny):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, 112, 112, generator=g)
    fake = torch.ones(6, 1, 112, 112)
    fake[:, :, 0, 0] = 0
    r = M.classification(tiny, x, fake, torch.arange(6))
    assert r["AD"].max() < 0.5 and r["AG"].max() < 0.5


def test_ai_and_drop_match_pytorch_grad_cam(tiny):
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 112, 112, generator=g)
    s = torch.rand(8, 1, 112, 112, generator=g) ** 3
    cls = torch.arange(8) % 10
    r = M.classification(tiny, x, s, cls)
    assert ((r["o"] - r["p"]).abs() > 1e-5).all()  # no float32 borderline cases
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in cls]
    cams = s[:, 0].numpy()
    # gc multiplies the tensor it is given by the map: our model takes [0, 1] images, so the masking
    # happens in pixel space as in the paper.
    gc_ai = IncreaseInConfidence()(x, cams, targets, tiny)
    np.testing.assert_array_equal(gc_ai.reshape(-1) * 100, r["AI"].numpy())
    # Deliberate difference: gc's DropInConfidence is the *absolute* drop [p - o]_+; AD (eq. 13) divides
    # by p. They agree after multiplying AD by p.
    gc_drop = DropInConfidence()(x, cams, targets, tiny).reshape(-1)
    np.testing.assert_allclose(gc_drop, (r["AD"] / 100 * r["p"]).numpy(), atol=1e-6)
    assert not np.allclose(gc_drop, r["AD"].numpy() / 100)


# --------------------------------------------------------------------------- insertion / deletion


def expected_curves(x: np.ndarray, s: np.ndarray, start: np.ndarray, finish: np.ndarray, step: int):
    """Independent step-by-step reference for one image (lists, loops)."""
    h, w = s.shape
    order = sorted(range(h * w), key=lambda i: (-s.flat[i], i))
    cur = start.copy()
    ys = [p0(cur)]
    for t in range(math.ceil(h * w / step)):
        for i in order[t * step : (t + 1) * step]:
            r, c = divmod(i, w)
            cur[:, r, c] = finish[:, r, c]
        ys.append(p0(cur))
    return ys


@pytest.mark.parametrize("step", [8, 10, 64, 1])
def test_insertion_deletion_closed_form(toy, step):
    x, s = toy
    model = SumModel()
    gray = lambda im: torch.full_like(im, 0.5)  # noqa: E731
    r = M.insertion_deletion(
        model, x, s, classes=0, step=step, substrate=gray, return_curves=True, batch_size=7
    )
    n = math.ceil(64 / step) + 1
    assert r["I_curve"].shape == (4, n) and r["D_curve"].shape == (4, n)
    for i in range(4):
        xi, si = x[i].numpy().astype(np.float64), s[i, 0].numpy()
        yd = expected_curves(xi, si, xi, np.zeros_like(xi), step)
        yi = expected_curves(xi, si, np.full_like(xi, 0.5), xi, step)
        np.testing.assert_allclose(r["D_curve"][i].numpy(), yd, rtol=1e-5)
        np.testing.assert_allclose(r["I_curve"][i].numpy(), yi, rtol=1e-5)
        assert r["D"][i].item() == pytest.approx(rise_auc(yd), rel=1e-5)
        assert r["I"][i].item() == pytest.approx(rise_auc(yi), rel=1e-5)


def test_insertion_blur_substrate_matches_scipy(toy):
    x, s = toy
    model = SumModel()
    # The sampled kernel with reflect padding (torchvision's blur); the RISE kernel, the default,
    # is checked in test_protocol_options.py.
    r = M.insertion_deletion(
        model, x, s, classes=0, step=16, modes=("I",), return_curves=True,
        blur_kernel="sampled", blur_padding="reflect",
    )  # fmt: skip
    assert "D" not in r
    for i in range(4):
        xi = x[i].numpy().astype(np.float64)
        # 11x11 sampled Gaussian, sigma 5, mirror (= torch "reflect") padding, separable.
        blur = np.stack([ndimage.gaussian_filter(c, 5.0, mode="mirror", truncate=1.0) for c in xi])
        yi = expected_curves(xi, s[i, 0].numpy(), blur, xi, 16)
        np.testing.assert_allclose(r["I_curve"][i].numpy(), yi, rtol=1e-5)


def test_default_protocol_225_evaluations():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, 224, 224, generator=g)
    s = torch.rand(2, 1, 224, 224, generator=g)
    r = M.insertion_deletion(SumModel(0.001), x, s, return_curves=True, batch_size=300)
    assert r["I_curve"].shape == (2, 225) and r["D_curve"].shape == (2, 225)
    assert r["I"].shape == (2,) and r["D"].shape == (2,)
    torch.testing.assert_close(r["D_curve"][:, -1], torch.full((2,), 0.5, dtype=torch.float64))


def test_insertion_deletion_predicted_class_chunks_and_tiny(tiny):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 112, 112, generator=g)
    s = torch.rand(2, 1, 112, 112, generator=g)
    a = M.insertion_deletion(tiny, x, s, step=112, batch_size=50, return_curves=True)
    b = M.insertion_deletion(tiny, x, s, step=112, batch_size=256, return_curves=True)
    assert a["D_curve"].shape == (2, 113)
    assert torch.equal(a["classes"], tiny(x).argmax(1))
    for k in ("I", "D", "I_curve", "D_curve"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    # First deletion point = original image; last insertion point = original image.
    p = M.class_probs(tiny, x, a["classes"])[0]
    torch.testing.assert_close(a["D_curve"][:, 0], p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a["I_curve"][:, -1], p, rtol=1e-5, atol=1e-7)
    c = M.insertion_deletion(tiny, x, s, step=112, batch_size=50)
    assert torch.equal(a["I"], c["I"]) and torch.equal(a["D"], c["D"])


def test_saliency_ranks_ties_stable():
    s = torch.tensor([[[[0.5, 1.0], [0.5, 1.0]]]])
    assert M.saliency_ranks(s).tolist() == [[2, 0, 3, 1]]


# --------------------------------------------------------------------------- AOPC


def test_aopc_closed_form(toy):
    x, s = toy
    model = SumModel()
    r = M.aopc(model, x, s, classes=0, patch=2, regions=3, return_curves=True, batch_size=5)
    for i in range(4):
        xi, si = x[i].numpy().astype(np.float64), s[i, 0].numpy().astype(np.float64)
        sums = si.reshape(4, 2, 4, 2).sum((1, 3)).ravel()
        order = sorted(range(16), key=lambda j: (-sums[j], j))
        cur = xi.copy()
        ys = [p0(cur)]
        for j in order[:3]:
            pr, pc = divmod(j, 4)
            cur[:, 2 * pr : 2 * pr + 2, 2 * pc : 2 * pc + 2] = 0
            ys.append(p0(cur))
        np.testing.assert_allclose(r["AOPC_curve"][i].numpy(), ys, rtol=1e-5)
        expected = np.mean([ys[0] - y for y in ys]) * 100
        assert r["AOPC"][i].item() == pytest.approx(expected, abs=1e-4)


def test_aopc_baselines_and_partial_patches(toy):
    x, s = toy
    model = SumModel()
    for base in ("mean", "uniform", 0.5):
        r = M.aopc(model, x, s, classes=0, patch=3, regions=2, baseline=base)
        assert r["AOPC"].shape == (4,) and torch.isfinite(r["AOPC"]).all()
    # Constant baseline 0.5 on the analytic model: first region replaced -> closed form.
    r = M.aopc(model, x, s, classes=0, patch=8, regions=1, baseline=0.5, return_curves=True)
    expected = [p0(np.full((3, 8, 8), 0.5)) for _ in range(4)]
    np.testing.assert_allclose(r["AOPC_curve"][:, 1].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError):
        M.aopc(model, x, s, baseline="nope")


# --------------------------------------------------------------------------- Max-Sensitivity


def _captum_like_perturb(b: int, n: int, clamp: bool, seed: int = 0):
    """Captum perturb_func reproducing our noise: sample s draws one [B, 3, H, W] tensor."""

    def perturb(inputs: torch.Tensor, radius: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        shape = (b,) + tuple(inputs.shape[1:])
        noise = torch.stack(
            [torch.rand(shape, generator=gen) * (2 * radius) - radius for _ in range(n)]
        )
        out = inputs + noise.transpose(0, 1).reshape(inputs.shape)  # Captum repeats image-major
        return out.clamp(0, 1) if clamp else out

    return perturb


def test_max_sensitivity_matches_captum():
    from captum.metrics import sensitivity_max

    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 8, 8, generator=g)
    cls = torch.tensor([0, 1, 2])

    def expl(inp, target):  # Captum passes a tuple on its first call and expects a tuple back
        if isinstance(inp, tuple):
            return (mean_explainer(inp[0], target),)
        return mean_explainer(inp, target)

    for clamp in (False, True):
        ours = M.max_sensitivity(mean_explainer, x, cls, radius=0.2, samples=10, clamp=clamp)
        theirs = sensitivity_max(
            expl, x, perturb_func=_captum_like_perturb(3, 10, clamp), perturb_radius=0.2,
            n_perturb_samples=10, target=cls,
        )  # fmt: skip
        assert ours.shape == (3,)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy().reshape(-1), rtol=1e-5)
    # Deliberate difference: we clamp perturbed images to [0, 1] by default; Captum/Quantus do not.
    unclamped = M.max_sensitivity(mean_explainer, x, cls, clamp=False)
    clamped = M.max_sensitivity(mean_explainer, x, cls)
    assert not torch.allclose(unclamped, clamped)


def test_max_sensitivity_properties():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(4, 3, 8, 8, generator=g)
    cls = torch.tensor([0, 1, 2, 0])
    a = M.max_sensitivity(mean_explainer, x, cls, seed=1, batch_size=3)
    b = M.max_sensitivity(mean_explainer, x, cls, seed=1)
    torch.testing.assert_close(a, b)
    const = lambda im, c: torch.ones_like(im[:, :1])  # noqa: E731
    assert M.max_sensitivity(const, x, cls).abs().max() == 0
    zero = lambda im, c: torch.zeros_like(im[:, :1])  # noqa: E731  (zero map: denominator 1)
    assert M.max_sensitivity(zero, x, cls).abs().max() == 0


def test_max_sensitivity_normalize_by_input_closed_form():
    """normalize_by="input" (Quantus <= 0.5): max_s ||S(x) - S(x_s)|| / ||x||, recomputed by hand."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 8, 8, generator=g)
    cls = torch.tensor([0, 1])
    ours = M.max_sensitivity(mean_explainer, x, cls, samples=4, seed=3, normalize_by="input")
    gen = torch.Generator().manual_seed(3)
    s0 = mean_explainer(x, cls).double().numpy().reshape(2, -1)
    best = np.zeros(2)
    for _ in range(4):
        noise = torch.rand(x.shape, generator=gen) * 0.4 - 0.2
        s1 = mean_explainer((x + noise).clamp(0, 1), cls).double().numpy().reshape(2, -1)
        xn = np.linalg.norm(x.double().numpy().reshape(2, -1), axis=1)
        best = np.maximum(best, np.linalg.norm(s0 - s1, axis=1) / xn)
    np.testing.assert_allclose(ours.numpy(), best, rtol=1e-6)
    by_map = M.max_sensitivity(mean_explainer, x, cls, samples=4, seed=3)
    assert not np.allclose(by_map.numpy(), best)
    with pytest.raises(ValueError):
        M.max_sensitivity(mean_explainer, x, cls, normalize_by="map")


def test_aopc_aggregations_and_drops(toy):
    x, s = toy
    model = SumModel()
    r = M.aopc(model, x, s, classes=0, patch=2, regions=3, return_curves=True, return_drops=True)
    q = M.aopc(model, x, s, classes=0, patch=2, regions=3, aggregation="quantus")
    curve = r["AOPC_curve"].numpy()
    drops = curve[:, :1] - curve[:, 1:]  # k = 1..3
    np.testing.assert_allclose(r["AOPC_drops"].numpy(), drops, rtol=1e-12)
    np.testing.assert_allclose(q["AOPC"].numpy(), drops.mean(1) * 100, rtol=1e-12)
    np.testing.assert_allclose(r["AOPC"].numpy(), drops.sum(1) / 4 * 100, rtol=1e-12)
    # "min" = Quantus' "black": the image minimum; equals our "black" (0) after shifting by it.
    lo = M.aopc(
        model, x + 0.25, s, classes=0, patch=2, regions=3, baseline="min", return_curves=True
    )
    mins = (x + 0.25).amin((1, 2, 3)).numpy()
    assert (mins > 0.25).all()
    sums = s[0, 0].numpy().reshape(4, 2, 4, 2).sum((1, 3)).ravel()
    j = sorted(range(16), key=lambda t: (-sums[t], t))[0]
    cur = (x[0] + 0.25).numpy().astype(np.float64)
    pr, pc_ = divmod(j, 4)
    cur[:, 2 * pr : 2 * pr + 2, 2 * pc_ : 2 * pc_ + 2] = mins[0]
    assert lo["AOPC_curve"][0, 1].item() == pytest.approx(p0(cur), rel=1e-6)
    with pytest.raises(ValueError):
        M.aopc(model, x, s, aggregation="mean")


# --------------------------------------------------------------------------- ADCC


def test_adcc_components(toy):
    x, s = toy
    model = SumModel()
    r = M.adcc(model, mean_explainer, x, s, classes=None)
    cls = model(x).argmax(1)
    s2 = mean_explainer(x * s, cls)
    for i in range(4):
        # AD of the predicted class from the closed form of SumModel (independent of M.classification).
        xi, mi = x[i].numpy().astype(np.float64), s[i].numpy().astype(np.float64)
        pp, oo = p0(xi), p0(xi * mi)
        if cls[i] == 1:
            pp, oo = 1 - pp, 1 - oo
        ad = max(pp - oo, 0.0) / pp
        assert r["AD"][i].item() == pytest.approx(ad, rel=1e-5, abs=1e-9)
        a, b = mi.ravel(), s2[i].numpy().astype(np.float64).ravel()
        rho = np.corrcoef(a, b)[0, 1] if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0
        coh, com = (rho + 1) / 2, a.mean()
        expected = 3 / (1 / coh + 1 / (1 - com) + 1 / (1 - ad)) * 100
        assert r["coherency"][i].item() == pytest.approx(coh, rel=1e-5)
        assert r["complexity"][i].item() == pytest.approx(com, rel=1e-6)
        assert r["ADCC"][i].item() == pytest.approx(expected, rel=1e-5)
    assert r["coherency"][2].item() == 0.5  # constant map: rho := 0
    # An all-ones map has complexity 1 -> ADCC = 0 (the harmonic mean's limit).
    r1 = M.adcc(model, mean_explainer, x, torch.ones_like(s))
    assert (r1["ADCC"] == 0).all()
    assert M.METRICS["ADCC"].direction == "higher"


# --------------------------------------------------------------------------- localization


def _one(h: int, w: int, *pix) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    for r, c in pix:
        m[0, 0, r, c] = 1
    return m


def test_box_mask_pixel_centre_convention():
    m = M.box_mask([torch.tensor([[1.0, 2.0, 3.0, 4.0]]), [[0.4, 0.4, 1.6, 0.6], [3, 3, 5, 5]]], 5)
    assert m.shape == (2, 1, 5, 5)
    assert m[0, 0].nonzero().tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]
    # centres (0.5, 0.5)/(1.5, 0.5) are inside the fractional box; plus the 2x2 box at (3..4, 3..4).
    assert m[1, 0].nonzero().tolist() == [[0, 0], [0, 1], [3, 3], [3, 4], [4, 3], [4, 4]]
    assert M.box_mask([torch.zeros(0, 4)], 3).sum() == 0


def test_localization_hand_computed():
    # 10x10, GT box rows/cols 2..5 (16 px); map = 1 on rows 2..5, cols 2..7 (24 px).
    s = torch.zeros(1, 1, 10, 10)
    s[0, 0, 2:6, 2:8] = 1
    r = M.localization(s, [[[2, 2, 6, 6]]], pred_correct=[False], probs=torch.tensor([0.5]))
    assert r["pred_box"][0].tolist() == [2, 2, 8, 6]
    assert r["IoU"][0].item() == pytest.approx(16 / 24)
    assert r["LE"][0].item() == pytest.approx(100 / 3)
    assert r["OM"][0].item() == 100  # wrong class
    assert r["P"][0].item() == pytest.approx(2 / 3) and r["R"][0].item() == 1
    assert r["F1"][0].item() == pytest.approx(80)
    assert r["EP"][0].item() == pytest.approx(200 / 3)
    assert r["SP"][0].item() == 100  # all 24 maxima tie; some lie in the box
    assert r["SM"][0].item() == pytest.approx(math.log(0.24) - math.log(0.5))
    # Binary map: every eta gives the same box, IoU 2/3 -> hits at 0.3 and 0.5, not 0.7.
    assert r["box_hits"].shape == (1, 100, 3)
    assert r["box_hits"][0].tolist() == [[True, True, False]] * 100
    assert M.box_accuracy(r["box_hits"])["BoxAcc"] == pytest.approx(200 / 3)


def test_localization_ties_multiple_boxes_border_constant():
    h = w = 8
    maps = torch.zeros(4, 1, h, w)
    # 0: two tied maxima; the first in raster order is outside the box, the second inside.
    maps[0, 0, 0, 0] = maps[0, 0, 7, 7] = 1
    # 1: two components touching the border, the larger one (3 px, corner) wins; map weights 0.5 and 1.
    maps[1, 0, 0, 5:8] = 0.5
    maps[1, 0, 7, 0] = 1.0
    # 2: constant map.
    maps[2] = 0.4
    # 3: no box -> excluded.
    boxes = [
        [[6, 6, 8, 8]],
        [[5, 0, 8, 1], [0, 7, 1, 8]],
        [[0, 0, 4, 8], [4, 0, 8, 4]],
        torch.zeros(0, 4),
    ]
    r = M.localization(maps, boxes, pred_correct=torch.tensor([True] * 4))
    assert r["valid"].tolist() == [True, True, True, False]
    assert r["SP"][:3].tolist() == [100, 100, 100]  # ties: any maximum counts; constant: all maxima
    assert torch.isnan(r["SP"][3]) and torch.isnan(r["F1"][3]) and not r["box_hits"][3].any()
    # Image 1: mean = 2.5/64; {S >= mean} = 4 px in two components; largest = top-right row.
    assert r["pred_box"][1].tolist() == [5, 0, 8, 1]
    assert r["IoU"][1].item() == 1 and r["OM"][1].item() == 0 and r["LE"][1].item() == 0
    # P = (1.5 + 1) / 2.5 = 1; R = 2.5 / 4.
    assert r["P"][1].item() == pytest.approx(1.0) and r["R"][1].item() == pytest.approx(2.5 / 4)
    # Image 1 BoxAcc: eta < 0.5 -> top row (IoU 1); 0.5 <= eta < 1 -> corner pixel (IoU 1 with box 2).
    assert r["box_hits"][1].all()
    # Constant map: pred box = whole image; P = |U| / HW, R = 0.4.
    assert r["pred_box"][2].tolist() == [0, 0, 8, 8]
    assert r["P"][2].item() == pytest.approx(48 / 64) and r["R"][2].item() == pytest.approx(0.4)
    assert r["IoU"][2].item() == pytest.approx(32 / 64)
    # {S > eta} is the whole image for eta < 0.4, empty above: hits at delta 0.3/0.5 for 40 etas.
    assert r["box_hits"][2, :, 0].sum() == 40 and r["box_hits"][2, :, 2].sum() == 0
    summ = M.summarize_localization(r)
    assert summ["n_images"] == 3 and summ["n_excluded"] == 1
    assert summ["SP"] == 100
    assert math.isnan(summ["SM"])  # no probabilities given


def test_box_accuracy_mean_then_max_then_mean():
    hits = torch.zeros(2, 3, 2, dtype=torch.bool)
    hits[0, 0] = True  # image 0 hit at eta 0 for both deltas
    hits[1, 2, 0] = True  # image 1 hit at eta 2 for delta 0 only
    # per (eta, delta) accuracy: eta0 (0.5, 0.5), eta2 (0.5, 0); max over eta (0.5, 0.5) -> 50.
    assert M.box_accuracy(hits)["BoxAcc"] == pytest.approx(50)
    # A per-image max over eta would give (1 + 1)/2 and (1 + 0)/2 -> 75: not what we compute.
    assert M.box_accuracy(hits, valid=torch.tensor([True, False]))["BoxAcc"] == 100


def test_largest_component_box_connectivity_and_ties():
    m = np.zeros((6, 6), dtype=bool)
    m[0, 0] = m[1, 1] = True  # diagonal: one component under 8-connectivity
    m[4, 4] = m[4, 5] = True  # same size, later in raster order
    assert M.largest_component_box(m) == (0, 0, 2, 2)
    assert M.largest_component_box(np.zeros((3, 3), dtype=bool)) is None


def test_fakecam_localization_sp_and_sm(tiny):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 224, 224, generator=g)
    fake = torch.ones(3, 1, 224, 224)
    fake[:, :, 100, 37] = 0
    cls = torch.tensor([1, 2, 3])
    boxes = [[[10, 10, 60, 60]], [[0, 0, 224, 224]], [[100, 100, 101, 101]]]
    r = M.localization(
        fake, boxes, probs=lambda bx: M.box_crop_probs(tiny, x, bx, cls, batch_size=2)
    )
    assert (r["pred_box"] == torch.tensor([0, 0, 224, 224.0])).all()
    assert r["SP"].tolist() == [100, 100, 100]
    p = M.class_probs(tiny, x, cls)[0]
    torch.testing.assert_close(r["SM"], -torch.log(p), rtol=1e-5, atol=1e-6)


def test_box_variants():
    s = torch.rand(2, 1, 5, 5)
    bm = M.box_mask([[[0, 0, 2, 2]], [[1, 1, 5, 5]]], 5)
    v = M.box_variants(s, bm)
    assert set(v) == {"S := B", "S := I∖B", "B∩S", "S∖B"}
    torch.testing.assert_close(v["B∩S"] + v["S∖B"], s)
    torch.testing.assert_close(v["S := B"] + v["S := I∖B"], torch.ones_like(s))


# --------------------------------------------------------------------------- misc


def test_selectivity_and_metadata():
    s = torch.tensor([[[[0.0, 0.25, 1.0]]]])
    torch.testing.assert_close(M.selectivity(s, 2), s**2)
    torch.testing.assert_close(M.selectivity(s, 1), s)
    assert M.METRICS["AD"].direction == "lower" and M.METRICS["AG"].equation == "15"
    assert M.METRICS["D"].direction == "lower" and M.METRICS["I"].direction == "higher"
    assert {"OM", "LE", "F1", "BoxAcc", "SP", "EP", "SM", "AOPC", "MS", "ADCC"} <= set(M.METRICS)
    assert M.summarize({"AD": torch.tensor([1.0, 3.0, float("nan")])}) == {"AD": 2.0}


def test_shape_errors(toy):
    x, s = toy
    with pytest.raises(ValueError):
        M.classification(SumModel(), x, s[:, :, :4], 0)
    with pytest.raises(ValueError):
        M.classification(SumModel(), x, s, [0, 1])


def test_max_sensitivity_and_adcc_run_gradient_explainers():
    """Explainers that need autograd (Grad-CAM, Opti-CAM) must work inside the metrics."""
    import paper_code as pc

    model = pc.load_model("tiny")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cls = torch.tensor([1, 2])

    def explainer(images, classes):
        return pc.explain("opticam", model, images, classes, iterations=2)

    ms = M.max_sensitivity(explainer, x, cls, samples=2)
    maps = explainer(x, cls)
    res = M.adcc(model, explainer, x, maps, cls)
    assert torch.isfinite(ms).all() and (ms > 0).all()
    assert torch.isfinite(res["ADCC"]).all()
