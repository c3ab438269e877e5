"""The paper's open evaluation choices as options: each option's reference value is checked
against an independent re-implementation of the reference code, written here from its description:

* insertion/deletion: RISE's ``gkern`` blur kernel (against scipy), its zero padding, the substrate
  space and numpy's tie order, all together against RISE's ``CausalMetric`` run one image at a time;
* AOPC's tie order against Quantus' ``RegionPerturbation``;
* ADCC's masking space against the ADCC formula on the standardized tensor;
* Max-Sensitivity's unperturbed maps in the precision of the perturbed ones;
* Rollout/TIBAV's ``start_layer`` against hand-written products;
* BoxAcc's every-contour rule against OpenCV (Choe et al.'s rule);
* Extremal Perturbation with several areas and ``smooth`` against single-area runs and scipy.

Tiny models only (the suite's ``tiny`` CNN, small random ViTs, linear models).
"""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from tiny_vit import tiny_vit
from torch import nn

from paper_code import metrics as M
from paper_code.methods import METHODS, explain
from paper_code.methods import attention as att
from paper_code.methods.maps import normalize_range, upsample
from paper_code.methods.perturbation import extremal, optimize
from paper_code.methods.targets import ClassLogit
from paper_code.metrics.localization import DELTAS, _stack_contour_boxes
from paper_code.models import load_model, without_standardization


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def gkern(klen: int, nsig: float) -> np.ndarray:
    """RISE's ``gkern`` kernel (eclique/RISE ``evaluation.py``), rewritten: a centred delta filtered
    by scipy's ``gaussian_filter`` (default mode "reflect"), one copy per channel, float32."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = ndimage.gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    return kern.astype("float32")


# --------------------------------------------------------------------------- 1. blur kernel


@pytest.mark.parametrize("klen,nsig", [(11, 5.0), (7, 2.0), (11, 1.5), (5, 10.0), (1, 3.0)])
def test_rise_kernel_equals_scipy_gkern(klen, nsig):
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    ref = ndimage.gaussian_filter(inp, nsig)  # float64
    u = M.rise_kernel1d(klen, nsig)
    assert u.dtype == torch.float64
    # Both in float64 from the same exp() values; only summation order differs (measured 2e-16).
    np.testing.assert_allclose(torch.outer(u, u).numpy(), ref, rtol=0, atol=1e-12)


def test_rise_kernel_folds_the_tails_into_a_near_box():
    u = M.rise_kernel1d(11, 5.0)
    assert 0.087 < u.min() < u.max() < 0.095  # 0.0880 .. 0.0940
    assert float(u.sum()) == pytest.approx(1.0, abs=1e-12)
    s = M.sampled_kernel1d(11, 5.0)  # torchvision's: clearly more peaked
    assert s.max() > 0.109 and s.min() < 0.067


def test_blur_substrate_options_against_independent_convolutions():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 20, 17, generator=g)
    xd = x.double().numpy()
    v = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    k_rise = torch.outer(M.rise_kernel1d(), M.rise_kernel1d()).numpy()
    k_samp = torch.outer(M.sampled_kernel1d(), M.sampled_kernel1d()).numpy()

    def corr(img: np.ndarray, k: np.ndarray, mode: str, cval: np.ndarray | None = None):
        out = np.empty_like(img)
        for b in range(img.shape[0]):
            for c in range(3):
                shift = 0.0 if cval is None else float(cval[c])
                out[b, c] = ndimage.correlate(img[b, c] - shift, k, mode=mode, cval=0.0) + shift
        return out

    # Float32 convolution against float64 scipy on [0, 1] images (measured 2.7e-7); the kernels
    # compared differ in their weights by > 1e-2.
    tol = dict(rtol=0, atol=1e-5)
    got = M.blur_substrate(x)  # default: RISE kernel, zero padding, black (pixel space)
    np.testing.assert_allclose(got.numpy(), corr(xd, k_rise, "constant"), **tol)
    got = M.blur_substrate(x, pad_value=v)  # zero padding of the standardized space: mean colour
    np.testing.assert_allclose(got.numpy(), corr(xd, k_rise, "constant", v.flatten()), **tol)
    got = M.blur_substrate(x, kernel="rise", padding="reflect")  # torch "reflect" = scipy "mirror"
    np.testing.assert_allclose(got.numpy(), corr(xd, k_rise, "mirror"), **tol)
    got = M.blur_substrate(x, kernel="sampled", padding="zeros")
    np.testing.assert_allclose(got.numpy(), corr(xd, k_samp, "constant"), **tol)
    # The former default is torchvision's gaussian_blur itself, bit for bit.
    from torchvision.transforms.functional import gaussian_blur

    old = M.blur_substrate(x, kernel="sampled", padding="reflect")
    assert torch.equal(old, gaussian_blur(x, [11, 11], [5.0, 5.0]))
    # RISE's own convolution: conv2d with the 3x3x11x11 float32 kernel and zero padding.
    rise = F.conv2d(x, torch.from_numpy(gkern(11, 5.0)), padding=5)
    # Same float32 kernel values; a dense vs a depthwise convolution may sum in another order
    # (measured 0 here).
    torch.testing.assert_close(M.blur_substrate(x), rise, rtol=0, atol=1e-5)


def test_blur_and_space_options_are_validated(tiny):
    x, s = torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16)
    for kw, name in (
        ({"blur_kernel": "box"}, "blur_kernel"),
        ({"blur_padding": "edge"}, "blur_padding"),
        ({"substrate_space": "normalized"}, "substrate_space"),
        ({"tie_break": "stable"}, "tie_break"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be one of") as e:
            M.insertion_deletion(tiny, x, s, step=64, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        M.rise_kernel1d(10, 5.0)


# --------------------------------------------------------------------------- 2-3. RISE CausalMetric


def rise_causal_metric(
    net: nn.Module, img: torch.Tensor, explanation: np.ndarray, mode: str, step: int
) -> np.ndarray:
    """RISE's ``CausalMetric.single_run`` (eclique/RISE ``evaluation.py``), rewritten from its
    description: one image ``[1, 3, H, W]`` as the network receives it, softmax probabilities of the
    top class, ``n_steps + 1`` evaluations, pixels in ``np.flip(np.argsort(...))`` order, deletion
    to ``zeros_like``, insertion from ``conv2d(img, gkern(11, 5), padding=5)``."""
    _, _, h, w = img.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    with torch.no_grad():
        c = int(net(img).argmax(1))
        if mode == "del":
            start, finish = img.clone(), torch.zeros_like(img)
        else:
            start = F.conv2d(img, torch.from_numpy(gkern(11, 5.0)), padding=11 // 2)
            finish = img.clone()
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
        for i in range(n_steps + 1):
            scores[i] = float(torch.softmax(net(start), 1)[0, c])
            if i < n_steps:
                coords = torch.from_numpy(salient_order[0, step * i : step * (i + 1)].copy())
                start.view(3, hw)[:, coords] = finish.view(3, hw)[:, coords]
    return scores


def _maps_with_ties(b: int, h: int, w: int) -> torch.Tensor:
    """Quantized random maps (5 levels: thousands of ties) and a Fake-CAM (ones but pixel 0)."""
    g = torch.Generator().manual_seed(5)
    maps = torch.randint(0, 5, (b, 1, h, w), generator=g).float() / 4
    maps[-1] = 1.0
    maps[-1, 0, 0, 0] = 0.0
    return maps


@pytest.mark.parametrize("space", ["standardized", "pixel"])
def test_insertion_deletion_equal_rise_causal_metric(tiny, space):
    """``substrate_space="standardized"``: RISE fed the standardized tensor and the un-standardized
    network (the loader standardizes); ``"pixel"``: RISE fed the [0, 1] tensor and the whole model
    (standardization inside the model, as the official Opti-CAM wrapper). Maps full of ties and
    ``tie_break="numpy"``: RISE's pixel order."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 32, 32, generator=g)
    maps = _maps_with_ties(3, 32, 32)
    step = 64
    ours = M.insertion_deletion(
        tiny, x, maps, step=step, substrate_space=space, tie_break="numpy", return_curves=True
    )
    with torch.no_grad():
        ref_net = tiny.net if space == "standardized" else tiny
        ref_in = tiny.standardize(x) if space == "standardized" else x
    for i in range(3):
        sal = maps[i].numpy()
        d = rise_causal_metric(ref_net, ref_in[i : i + 1], sal, "del", step)
        ins = rise_causal_metric(ref_net, ref_in[i : i + 1], sal, "ins", step)
        # Probabilities of the same images up to float32 rounding: we build them in pixel space
        # around the mean colour, RISE in the standardized space (measured max difference 1.9e-8;
        # the options change these curves by 1e-4 to 3e-3, test_each_open_choice_changes_the_curves).
        np.testing.assert_allclose(ours["D_curve"][i].numpy(), d, rtol=0, atol=1e-5)
        np.testing.assert_allclose(ours["I_curve"][i].numpy(), ins, rtol=0, atol=1e-5)
        auc = lambda y: (y.sum() - y[0] / 2 - y[-1] / 2) / (len(y) - 1) * 100  # noqa: E731
        assert ours["D"][i].item() == pytest.approx(auc(d), abs=1e-3)  # in %: 100 x the above
        assert ours["I"][i].item() == pytest.approx(auc(ins), abs=1e-3)


def test_each_open_choice_changes_the_curves(tiny):
    """The options are not no-ops on this data: each changes a curve by far more than rounding
    (two computations of the same curve differ by ~1e-8; the smallest change here, the sampled
    kernel's, measured 1.1e-4)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 32, 32, generator=g)
    maps = _maps_with_ties(3, 32, 32)
    base = dict(step=64, return_curves=True)
    ref = M.insertion_deletion(tiny, x, maps, **base)
    for kw, key in (
        ({"substrate_space": "standardized"}, "D_curve"),
        ({"substrate_space": "standardized"}, "I_curve"),
        ({"blur_kernel": "sampled"}, "I_curve"),
        ({"blur_padding": "reflect"}, "I_curve"),
        ({"tie_break": "numpy"}, "D_curve"),
    ):
        other = M.insertion_deletion(tiny, x, maps, **base, **kw)
        assert (other[key] - ref[key]).abs().max() > 1e-6, kw
    # Deletion ignores the blur options exactly.
    other = M.insertion_deletion(tiny, x, maps, **base, blur_kernel="sampled")
    assert torch.equal(other["D_curve"], ref["D_curve"])


def test_standardized_space_needs_the_mean(tiny):
    x, s = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    plain = nn.Sequential(tiny.standardize, tiny.net)  # same function, no standardize attribute
    with pytest.raises(ValueError, match="input_mean"):
        M.insertion_deletion(plain, x, s, step=128, substrate_space="standardized")
    kw = dict(step=128, substrate_space="standardized", return_curves=True)
    a = M.insertion_deletion(tiny, x, s, **kw)
    b = M.insertion_deletion(plain, x, s, input_mean=tuple(tiny.standardize.mean.flatten()), **kw)
    for k in ("I_curve", "D_curve"):  # the same modules and operations: exact
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # With standardization off (Table A.14) the network receives [0, 1] pixels: its zero is black.
    with without_standardization(tiny):
        off = M.insertion_deletion(tiny, x, s, **kw)
        pix = M.insertion_deletion(tiny, x, s, step=128, return_curves=True)
    torch.testing.assert_close(off["D_curve"], pix["D_curve"], rtol=0, atol=0)  # same images


# --------------------------------------------------------------------------- 3. tie order


def test_numpy_tie_break_reproduces_numpy_argsort():
    maps = _maps_with_ties(4, 16, 16)
    flat = maps.flatten(1).numpy()
    for tie_break, ref in (
        ("numpy", np.flip(np.argsort(flat, axis=1), axis=-1)),  # RISE
        ("numpy_negated", np.argsort(-flat, axis=1)),  # Quantus
    ):
        ranks = M.saliency_ranks(maps, tie_break)
        order = torch.argsort(ranks, dim=1).numpy()  # the pixel processed at each rank
        np.testing.assert_array_equal(order, ref)
    # Raster: ties in row-major order. The Fake-CAM (last map) starts at pixel 1 in raster order
    # and ends with pixel 0 in both orders; numpy's tie order (reversed) is not the raster order.
    raster = torch.argsort(M.saliency_ranks(maps), dim=1)
    numpy_ = torch.argsort(M.saliency_ranks(maps, "numpy"), dim=1)
    assert raster[-1, 0] == 1 and raster[-1, -1] == 0 and numpy_[-1, -1] == 0
    assert not torch.equal(raster[-1], numpy_[-1])
    # Without ties the three orders agree.
    cont = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for tb in ("numpy", "numpy_negated"):
        assert torch.equal(M.saliency_ranks(cont, tb), M.saliency_ranks(cont))


@pytest.fixture(scope="module")
def sharp():
    """Linear model on 14×14 patch means at 224 (as tests/test_quantus_oracle.py): deleting regions
    moves its softmax visibly, and differently for each region."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.AvgPool2d(14), nn.Flatten(), nn.Linear(768, 10))
    with torch.no_grad():
        net[-1].weight.mul_(10)
    return net.eval()


def test_aopc_numpy_tie_break_equals_quantus_on_tied_regions(sharp):
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(11)
    x = torch.rand(2, 3, 224, 224, generator=g)
    x[:, :, 0, 0] = 0.0  # Quantus' "black" is the image minimum: make it 0, our "black"
    maps = torch.ones(2, 1, 224, 224)
    maps[:, :, 0, 0] = 0  # Fake-CAM: 255 of the 256 regions tie
    maps[1, :, 100:130, 40:90] = 0.5  # a second map with two tied levels
    classes = sharp(x).argmax(1)
    metric = quantus.RegionPerturbation(
        patch_size=14, regions_evaluation=10, perturb_baseline="black", disable_warnings=True
    )
    out = metric(
        model=sharp, x_batch=x.numpy(), y_batch=classes.numpy(), a_batch=maps.numpy(),
        channel_first=True, softmax=True, device="cpu",
    )  # fmt: skip
    theirs = np.asarray(out, dtype=np.float64)
    ours = M.aopc(sharp, x, maps, classes, tie_break="numpy", return_drops=True)["AOPC_drops"]
    # Quantus' softmax in float32, ours in float64 (measured max difference 1.3e-7).
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-5)
    raster = M.aopc(sharp, x, maps, classes, return_drops=True)["AOPC_drops"]
    assert (raster - ours).abs().max() > 1e-3  # the tie order matters here (measured 0.058)
    with pytest.raises(ValueError, match="tie_break must be one of"):
        M.aopc(sharp, x, maps, classes, tie_break="numpy_negated")


# --------------------------------------------------------------------------- 4. ADCC


def _z_explainer(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A deterministic explainer of the network input z (any range): sigmoid of channel c % 3."""
    idx = torch.arange(z.shape[0])
    return torch.sigmoid(2 * z[idx, c.long() % 3])[:, None]


def reference_adcc(net, z: torch.Tensor, sal: torch.Tensor, explainer) -> dict[str, float]:
    """ADCC as aimagelab/ADCC computes it, rewritten: the explanation map is the product of the
    tensor the network receives with the saliency map; AD of the top class; coherency from scipy's
    Pearson correlation (NaN for a constant map); complexity = L1 norm / (H W); harmonic mean."""
    with torch.no_grad():
        expl = z * sal
        p_img = torch.softmax(net(z).double(), 1)[0]
        c = int(p_img.argmax())
        p, o = float(p_img[c]), float(torch.softmax(net(expl).double(), 1)[0, c])
        s2 = explainer(expl, torch.tensor([c]))
    ad = max(0.0, p - o) / p
    a, b = sal.double().numpy().ravel(), s2.double().numpy().ravel()
    rho = stats.pearsonr(a, b)[0] if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")
    coh = (rho + 1) / 2
    com = np.abs(a).sum() / a.size
    return {"ADCC": 3 / (1 / coh + 1 / (1 - com) + 1 / (1 - ad)) * 100, "coherency": coh, "AD": ad}


@pytest.mark.parametrize("space", ["standardized", "pixel"])
def test_adcc_masking_space_equals_the_reference_formula(tiny, space):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 32, 32, generator=g)
    s = torch.rand(3, 1, 32, 32, generator=g)
    if space == "standardized":
        # Reference: z = standardized tensor fed to the un-standardized network.
        ref_net, ref_in, ref_expl = tiny.net, tiny.standardize(x), _z_explainer
        ours_expl = lambda xx, c: _z_explainer(tiny.standardize(xx), c)  # noqa: E731
    else:
        # Reference fed the [0, 1] tensor and the whole model (standardization inside).
        ref_net, ref_in, ref_expl = tiny, x, _z_explainer
        ours_expl = _z_explainer
    r = M.adcc(tiny, ours_expl, x, s, masking_space=space)
    for i in range(3):
        ref = reference_adcc(ref_net, ref_in[i : i + 1], s[i : i + 1], ref_expl)
        # Same images up to float32 rounding of (x - mu) * S + mu vs z * S: measured absolute
        # differences 2.4e-7 (ADCC, %), 9e-10 (coherency), 1.3e-8 (AD); the spaces differ by ~10
        # ADCC points.
        for k, tol in (("ADCC", 1e-4), ("coherency", 1e-6), ("AD", 1e-6)):
            assert r[k][i].item() == pytest.approx(ref[k], rel=0, abs=tol), (k, i)
    other = M.adcc(
        tiny, ours_expl, x, s, masking_space="pixel" if space == "standardized" else "standardized"
    )
    assert (other["ADCC"] - r["ADCC"]).abs().max() > 1e-3  # the space matters


def test_adcc_constant_maps_option(tiny):
    g = torch.Generator().manual_seed(8)
    x = torch.rand(3, 3, 32, 32, generator=g)
    s = torch.rand(3, 1, 32, 32, generator=g)
    s[1] = 0.4  # constant map: Pearson undefined
    zero = M.adcc(tiny, _z_explainer, x, s)
    nan = M.adcc(tiny, _z_explainer, x, s, constant_maps="nan")
    assert zero["coherency"][1].item() == 0.5 and math.isfinite(zero["ADCC"][1].item())
    assert math.isnan(nan["coherency"][1].item()) and math.isnan(nan["ADCC"][1].item())
    keep = torch.tensor([True, False, True])
    torch.testing.assert_close(nan["ADCC"][keep], zero["ADCC"][keep], rtol=0, atol=0)
    ref = reference_adcc(tiny, x[1:2], s[1:2], _z_explainer)
    assert math.isnan(ref["ADCC"])  # the reference gives NaN too
    with pytest.raises(ValueError, match="masking_space must be one of"):
        M.adcc(tiny, _z_explainer, x, s, masking_space="z")
    with pytest.raises(ValueError, match="constant_maps must be one of"):
        M.adcc(tiny, _z_explainer, x, s, constant_maps="drop")


# --------------------------------------------------------------------------- 5. Max-Sensitivity


def _square(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    idx = torch.arange(x.shape[0])
    return (x[idx, c.long() % 3] ** 2)[:, None]


def test_max_sensitivity_compares_maps_of_the_same_precision():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 24, 24, generator=g)
    cls = torch.tensor([0, 1, 2])
    s32 = _square(x, cls)
    s16 = s32.half()  # a float16 map cache
    # Mixing the two precisions (the former behaviour with a float16 cache) is not 0 at eps = 0.
    mixed = (s16.double() - s32.double()).flatten(1).norm(dim=1)
    assert (mixed > 0).all()
    # eps = 0: uniform_perturbation(radius 0) returns the image unchanged.
    for kw in (
        {},  # recompute (default): S(x) computed like S(x + eps)
        {"maps": s16},  # recompute: the float16 maps are not used
        {"maps": s16, "unperturbed_maps": "given"},  # perturbed maps rounded to float16
        {"maps": s32, "unperturbed_maps": "given"},
    ):
        ms = M.max_sensitivity(_square, x, cls, radius=0.0, samples=3, **kw)
        assert torch.equal(ms, torch.zeros(3, dtype=torch.float64)), kw
    # eps > 0: recompute with float16 maps passed equals the float32 computation exactly, and
    # equals an independent float64 computation from the same noise draws.
    a = M.max_sensitivity(_square, x, cls, seed=4, samples=5, maps=s16)
    b = M.max_sensitivity(_square, x, cls, seed=4, samples=5, maps=s32, unperturbed_maps="given")
    assert torch.equal(a, b)
    gen = torch.Generator().manual_seed(4)
    ref = torch.zeros(3, dtype=torch.float64)
    for _ in range(5):
        xs = M.uniform_perturbation(x, 0.2, gen)
        d = (_square(xs, cls).double() - s32.double()).flatten(1).norm(dim=1)
        ref = torch.maximum(ref, d / s32.double().flatten(1).norm(dim=1))
    # Same float32 maps, same float64 arithmetic (measured difference 0).
    torch.testing.assert_close(a, ref, rtol=1e-12, atol=0)
    c16 = M.max_sensitivity(_square, x, cls, seed=4, samples=5, maps=s16, unperturbed_maps="given")
    # float16 rounding of both sides only (measured 2.5e-5 on MS ~ 0.29).
    assert (c16 - a).abs().max() < 1e-3
    with pytest.raises(ValueError, match="needs maps"):
        M.max_sensitivity(_square, x, cls, unperturbed_maps="given")
    with pytest.raises(ValueError, match="unperturbed_maps must be one of"):
        M.max_sensitivity(_square, x, cls, unperturbed_maps="cached")


# --------------------------------------------------------------------------- 6. start_layer


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(depth=3)


@pytest.fixture(scope="module")
def vit_images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_rollout_default_start_layer_1_leaves_out_the_first_block(vit, vit_images):
    attns = att.attention_maps(vit, vit_images)
    assert len(attns) == 3
    n = attns[0].shape[-1]

    def by_hand(start: int) -> np.ndarray:
        joint = np.stack([np.eye(n)] * 2)
        for a in attns[start:]:  # float64 numpy, explicit product
            m = a.double().numpy().mean(axis=1)
            m = 0.5 * m + 0.5 * np.eye(n)
            m = m / m.sum(-1, keepdims=True)
            joint = np.einsum("bij,bjk->bik", m, joint)
        return joint[:, 0, 1:].reshape(2, 1, 8, 8)

    # float32 products of 65×65 matrices against float64: measured max 6.4e-9 on values ~1.1e-2;
    # leaving out block 0 changes them by 2e-3.
    tol = dict(rtol=0, atol=1e-6)
    low = att.rollout_lowres(vit, vit_images)
    np.testing.assert_allclose(low.numpy(), by_hand(1), **tol)
    np.testing.assert_allclose(
        att.rollout_lowres(vit, vit_images, start_layer=0).numpy(), by_hand(0), **tol
    )
    assert np.abs(by_hand(0) - by_hand(1)).max() > 1e-4
    # The registered method's default is start_layer 1 (same float32 pipeline: exact).
    want = normalize_range(upsample(low, (64, 64)))
    torch.testing.assert_close(explain("rollout", vit, vit_images), want, rtol=0, atol=0)


def test_tibav_default_start_layer_1(vit, vit_images):
    target = ClassLogit(torch.tensor([1, 2]))
    trace = att.lrp_trace(vit, vit_images, target)

    def by_hand(start: int) -> torch.Tensor:
        c = torch.eye(65).expand(2, 65, 65)
        for g, r in list(zip(trace.gradients, trace.relevances))[start:]:
            c = (torch.eye(65) + (g * r).clamp(min=0).mean(1)) @ c
        return c[:, 0, 1:].reshape(2, 1, 8, 8)

    # The same float32 operations in the same order (measured difference 0); leaving out block 0
    # changes the values (~2e-4) by 4e-5.
    exact = dict(rtol=0, atol=1e-9)
    torch.testing.assert_close(att.tibav_lowres(vit, vit_images, target), by_hand(1), **exact)
    torch.testing.assert_close(att.tibav_lowres(vit, vit_images, target, 0), by_hand(0), **exact)
    maps = explain("tibav", vit, vit_images, [1, 2])
    torch.testing.assert_close(maps, normalize_range(upsample(by_hand(1), (64, 64))), **exact)
    assert (by_hand(0) - by_hand(1)).abs().max() > 1e-5


def test_start_layer_registry_defaults_match_the_signatures(vit, vit_images):
    for name in ("rollout", "tibav"):
        spec = METHODS[name]
        sig = inspect.signature(spec.fn).parameters["start_layer"].default
        assert spec.defaults["start_layer"] == sig == att.START_LAYER == 1
        json.dumps(dict(spec.defaults))
    for bad in (-1, 3, 1.5):
        with pytest.raises(ValueError, match="start_layer must be an integer in"):
            explain("rollout", vit, vit_images, start_layer=bad)
    with pytest.raises(ValueError, match="start_layer must be an integer in"):
        att.tibav_lowres(vit, vit_images, ClassLogit(torch.tensor([0, 0])), 3)


# --------------------------------------------------------------------------- 7. BoxAcc


def opencv_contour_boxes(mask: np.ndarray) -> set[tuple[int, int, int, int]]:
    """Choe et al.'s candidate boxes (clovaai/wsolevaluation ``evaluation.py``, multi-contour):
    ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` then ``cv2.boundingRect`` of each contour,
    as ``(x0, y0, x0 + w, y0 + h)``."""
    cv2 = pytest.importorskip("cv2")
    contours = cv2.findContours(
        mask.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE
    )[-2]
    return {
        (x, y, x + w, y + h) for x, y, w, h in (cv2.boundingRect(c) for c in contours)
    }  # fmt: skip


def test_every_contour_boxes_equal_opencv_on_random_masks():
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(60):  # varied densities and smoothness: blobs, holes, nested blobs, noise
        h, w = rng.integers(5, 40, 2)
        noise = ndimage.gaussian_filter(rng.random((h, w)), rng.uniform(0, 2.5))
        masks.append(noise > np.quantile(noise, rng.uniform(0.2, 0.8)))
    n_holes = 0
    for m in masks:
        bx, k = _stack_contour_boxes(m[None])
        ours = {tuple(int(v) for v in b) for b in bx}
        assert ours == opencv_contour_boxes(m)
        n_holes += len(bx) - ndimage.label(m, structure=np.ones((3, 3)))[1]
    assert n_holes > 10  # the masks do exercise hole contours


def choe_hits(sal: np.ndarray, gt: np.ndarray, etas, deltas) -> np.ndarray:
    """Per-threshold hits with Choe's every-contour rule: OpenCV boxes of {S > eta}, best IoU over
    boxes and GT boxes (continuous areas, numpy), hit when >= delta. ``[n_eta, n_delta]``."""
    out = np.zeros((len(etas), len(deltas)), dtype=bool)
    for e, eta in enumerate(etas):
        best = 0.0
        for x0, y0, x1, y1 in opencv_contour_boxes(sal > np.float32(eta)):
            for g in gt:
                iw = max(0.0, min(x1, g[2]) - max(x0, g[0]))
                ih = max(0.0, min(y1, g[3]) - max(y0, g[1]))
                union = (x1 - x0) * (y1 - y0) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
                best = max(best, iw * ih / union if union > 0 else 0.0)
        out[e] = best >= np.asarray(deltas) - 1e-12
    return out


def test_box_rule_every_contour_equals_choe_rule_with_opencv():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(4, 1, 40, 40, generator=g)
    maps = torch.from_numpy(
        np.stack([ndimage.gaussian_filter(n[0].numpy(), 2.0)[None] for n in noise])
    )
    maps = normalize_range(maps)
    gt = [
        np.array([[2.0, 3.0, 15.0, 20.0]]),
        np.array([[10.0, 10.0, 30.0, 25.0], [0.0, 30.0, 8.0, 40.0]]),
        np.array([[5.0, 5.0, 35.0, 35.0]]),
        np.array([[20.0, 0.0, 40.0, 12.0]]),
    ]
    etas = tuple(i / 20 for i in range(20))
    r = M.localization(maps, gt, etas=etas, box_rule="every_contour")
    ref = np.stack([choe_hits(maps[i, 0].numpy(), gt[i], etas, DELTAS) for i in range(4)])
    np.testing.assert_array_equal(r["box_hits"].numpy(), ref)
    largest = M.localization(maps, gt, etas=etas)
    # The largest component is one of the contours: its hits are a subset.
    assert (largest["box_hits"] <= r["box_hits"]).all()
    assert (largest["box_hits"] != r["box_hits"]).any()
    for k in ("LE", "OM", "F1", "SP", "pred_box"):  # B_p and the other metrics do not change
        torch.testing.assert_close(largest[k], r[k], equal_nan=True)


def test_box_rule_two_blobs_by_hand():
    """A large blob and a small one on the GT box: only the every-contour rule finds the box."""
    m = torch.zeros(1, 1, 20, 20)
    m[0, 0, 0:10, 0:10] = 1.0  # 100 px, not the object
    m[0, 0, 14:18, 14:19] = 0.8  # 20 px, exactly the GT box
    gt = [[[14.0, 14.0, 19.0, 18.0]]]
    largest = M.box_accuracy(M.localization(m, gt)["box_hits"])["BoxAcc"]
    every = M.box_accuracy(M.localization(m, gt, box_rule="every_contour")["box_hits"])["BoxAcc"]
    assert largest == 0.0 and every == 100.0
    with pytest.raises(ValueError, match="box_rule must be one of"):
        M.localization(m, gt, box_rule="all")


# --------------------------------------------------------------------------- 8. Extremal Perturbation


def test_extremal_several_areas_are_single_area_runs_summed_and_normalized():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    model(x)
    areas = [0.025, 0.05, 0.1, 0.2]  # TorchRay's benchmark (VOC), with smooth 0.09
    kw = dict(iterations=6, step=2, sigma=4.0, smooth=0.09)
    target = ClassLogit(torch.tensor([1, 3]))
    res = optimize(model, x, target, areas=areas, **kw)
    assert res.masks.shape == (2, 4, 20, 20)
    for a, area in enumerate(areas):
        alone = optimize(model, x, target, areas=[area], **kw)
        # Independent rows; the batched network may sum in another order with 8 rows than with 2
        # (measured max difference 0 here; masks lie in [0, 1]).
        torch.testing.assert_close(res.masks[:, a], alone.masks[:, 0], rtol=0, atol=1e-5)
    # The map is computed from these masks (measured difference 0).
    torch.testing.assert_close(res.maps[:, 0], res.masks.sum(1) / 4, rtol=0, atol=1e-7)
    assert res.maps.min() >= 0 and res.maps.max() <= 1
    # smooth: each mask blurred with sigma = 0.09 * 20, zero padding, half-width ceil(4 sigma).
    raw = optimize(model, x, target, areas=areas, **{**kw, "smooth": 0.0}).masks
    sigma = 0.09 * 20
    for b in range(2):
        for a in range(4):
            ref = ndimage.gaussian_filter(
                raw[b, a].double().numpy(), sigma, mode="constant", radius=math.ceil(4 * sigma)
            )
            # float32 convolution against float64 scipy (measured 1.9e-7; smoothing changes the
            # masks by 0.5).
            np.testing.assert_allclose(res.masks[b, a].numpy(), ref, rtol=0, atol=1e-5)
    # The registered method takes the areas as a JSON list and returns the same maps.
    maps = explain("extremal", model, x, [1, 3], **json.loads(json.dumps({"areas": areas, **kw})))
    torch.testing.assert_close(maps, res.maps, rtol=0, atol=1e-6)  # same computation (measured 0)
    spec = METHODS["extremal"]
    opt = inspect.signature(optimize).parameters
    assert spec.defaults["areas"] == inspect.signature(extremal).parameters["areas"].default
    assert spec.defaults["smooth"] == opt["smooth"].default == 0.0
    assert tuple(spec.defaults["areas"]) == (0.1,)
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        optimize(model, x, target, smooth=-0.1, iterations=1)
