"""Tests of the CAM baselines (paper_code/cams.py).

1. Exact values on an analytic model whose logits are linear in GAP(A).
2. Oracle cross-checks against pytorch-grad-cam (raw low-resolution maps; documented differences shown).
3. Batch invariance, determinism, chunking, constant maps, hook/memory hygiene, input errors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paper_code.methods import METHODS, cams, explain
from paper_code.methods.maps import EPS, normalize_range, upsample
from paper_code.methods.targets import ClassLogit
from paper_code.models import load_model

CAMS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam")
ALL = ("fakecam", *CAMS)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 224, 224, generator=g)


# --------------------------------------------------------------------------- analytic model


class Analytic(nn.Module):
    """A = ReLU(1x1 conv(avgpool_16(x))) in R^{K x 14 x 14}, logits = W GAP(A) + b.

    Hence dy_c/dA^k_ij = W_ck / (h w) everywhere, and every CAM has a closed form.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
            self.conv.bias.copy_(torch.tensor([0.3, -0.1, 0.2, 0.5]))
            self.fc.weight.copy_(
                torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.0, 1.5, 2.0, -0.5], [0.2, 0.3, -0.4, 1.0]])
            )
            self.fc.bias.copy_(torch.tensor([2.0, 1.0, -1.0]))
        self.num_classes = 3

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(F.avg_pool2d(x, 16)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _analytic_expected(
    method: str, model: Analytic, x: torch.Tensor, cls: torch.Tensor
) -> torch.Tensor:
    """The raw map [B, 1, 14, 14] computed by hand from the closed forms."""
    with torch.no_grad():
        a = model.features(x)  # [B, K, h, w]
        hw = a.shape[2] * a.shape[3]
        wc = model.fc.weight[cls]  # [B, K]
        grad = wc / hw  # the (spatially constant) gradient of each channel
        y = model(x).gather(1, cls[:, None])[:, 0]

        def combine(weights):
            return torch.einsum("bk,bkhw->bhw", weights, a)[:, None].relu()

        if method in ("gradcam", "xgradcam", "hirescam"):
            return combine(grad)
        if method == "layercam":
            return combine(grad.relu())
        if method == "gradcampp":
            # alpha = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) with S = sum A, summed over hw cells.
            s = a.sum(dim=(2, 3))
            return combine(hw * grad.relu() / (2 + s * grad))
        if method == "ablationcam":
            # Zeroing channel k lowers y_c by W_ck mean(A^k).
            return combine(wc * a.mean(dim=(2, 3)) / y[:, None])
        if method == "scorecam":
            masks = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)
            lo = masks.amin(dim=(2, 3), keepdim=True)
            hi = masks.amax(dim=(2, 3), keepdim=True)
            masks = (masks - lo) / (hi - lo + 1e-8)
            scores = torch.stack(
                [
                    model(x * masks[:, k : k + 1]).gather(1, cls[:, None])[:, 0]
                    for k in range(a.shape[1])
                ],
                dim=1,
            )
            return combine(scores.softmax(1))
    raise AssertionError(method)


def _analytic64() -> Analytic:
    """The analytic model in float64. Range normalization divides by the range of the raw map, and
    the raw maps here are O(1/196): in float32 the final maps of the checks below differed from the
    closed form by up to 4.2e-6 (3.2e-6 between Grad-CAM, XGrad-CAM and HiResCAM), depending on
    the CPU's kernels, against bounds of 1e-5. In float64 the differences are <= 1e-14."""
    return Analytic().double()


@pytest.mark.parametrize("method", CAMS)
def test_analytic_exact(method):
    model = _analytic64()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 224, 224, generator=g, dtype=torch.float64)
    cls = torch.tensor([0, 1])
    expected = _analytic_expected(method, model, x, cls)
    assert expected.amax() > 0  # the closed form is non-trivial for these images
    got = cams.cam_lowres(
        method, model, x, ClassLogit(cls), model.relu, **_opts(method, batch_size=3)
    )
    assert got.dtype == torch.float64
    # Float64 (see _analytic64): measured max relative difference 2.2e-16.
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)
    maps = explain(
        method,
        model,
        x,
        cls,
        layer=model.relu,
        **({"batch_size": 3} if method in ("scorecam", "ablationcam") else {}),
    )
    want = normalize_range(
        F.interpolate(expected, size=(224, 224), mode="bilinear", align_corners=False)
    )
    # Measured max |difference| 8e-15 (float64).
    torch.testing.assert_close(maps, want, rtol=0, atol=1e-10)
    assert maps.shape == (2, 1, 224, 224) and maps.min() >= 0 and maps.max() <= 1


def test_analytic_gradcam_equals_xgradcam_equals_hirescam():
    model = _analytic64()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    maps = [
        explain(m, model, x, [2, 0], layer=model.relu) for m in ("gradcam", "xgradcam", "hirescam")
    ]
    # Equal up to rounding: measured max |difference| 6.3e-15 (float64, see _analytic64).
    torch.testing.assert_close(maps[0], maps[1], rtol=0, atol=1e-10)
    torch.testing.assert_close(maps[0], maps[2], rtol=0, atol=1e-10)


def test_fakecam():
    x = torch.rand(2, 3, 224, 224)
    maps = explain("fakecam", load_model("tiny"), x, 0)
    assert maps.shape == (2, 1, 224, 224) and maps.dtype == x.dtype
    assert maps[:, :, 0, 0].eq(0).all()
    assert maps.sum().item() == 2 * (224 * 224 - 1)


# --------------------------------------------------------------------------- pytorch-grad-cam oracle


def _gc_lowres(cam_cls, model, layer, x, classes):
    """pytorch-grad-cam's raw map ReLU(get_cam_image(...)) [B, h, w], from its own internals."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    cam = cam_cls(model=model, target_layers=[layer])
    try:
        out = cam.activations_and_grads(x)
        grads = None
        if cam.uses_gradients:
            model.zero_grad()
            sum(t(o) for t, o in zip(targets, out)).backward()
            grads = cam.activations_and_grads.gradients[0].numpy()
        acts = cam.activations_and_grads.activations[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads, False), 0)
        final = cam(x, targets)  # the full pytorch-grad-cam pipeline
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return torch.from_numpy(raw), torch.from_numpy(final)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max over images of max|a - b| / max|b|."""
    return ((a - b).abs().amax(dim=(-2, -1)) / b.abs().amax(dim=(-2, -1))).max().item()


GC_CASES = [
    ("gradcam", "GradCAM", {}),
    ("gradcampp", "GradCAMPlusPlus", {"eps": 1e-6}),
    ("xgradcam", "XGradCAM", {"eps": 1e-7}),
    ("xgradcam", "XGradCAM", {}),
    ("layercam", "LayerCAM", {}),
    ("hirescam", "HiResCAM", {}),
    ("scorecam", "ScoreCAM", {"align_corners": True}),
    ("ablationcam", "AblationCAM", {"batch_size": 20}),
]


@pytest.mark.parametrize(("method", "gc_name", "options"), GC_CASES)
def test_oracle_pytorch_grad_cam_tiny(tiny, images, method, gc_name, options):
    import pytorch_grad_cam

    classes = torch.tensor([1, 4, 7])
    layer = tiny.target_layer
    ref_raw, ref_final = _gc_lowres(
        getattr(pytorch_grad_cam, gc_name), tiny, layer, images, classes
    )
    raw = cams.cam_lowres(method, tiny, images, ClassLogit(classes), layer, **options)[:, 0]
    assert ref_raw.amax() > 0
    assert _rel(raw, ref_raw) < 1e-4
    # Final maps: pytorch-grad-cam returns up(n(S)) (normalize at 14x14, then cv2.resize); we return
    # n(up(S)). Recomputing its order with our upsampling reproduces it; our order differs slightly.
    # Measured max |diff| <= 6e-7 (float32 rounding) under every CPU configuration tried.
    gc_order = normalize_range(upsample(normalize_range(raw[:, None]), (224, 224)))[:, 0]
    assert (gc_order - ref_final).abs().max() < 1e-4
    ours = explain(method, tiny, images, classes, **options)[:, 0]
    # Measured max |diff|: 3.9e-5 (Grad-CAM, XGrad-CAM, HiResCAM), 2.1e-5 (Layer-CAM), <= 6e-7
    # (others). Not rounding (the same in float64 and on every CPU configuration tried): n() adds
    # EPS = 1e-8 to the range (SPEC "Defaults" 5), which scales a map of range r by r / (r + EPS),
    # and the Grad-CAM maps of this random network have ranges down to 2.6e-4.
    assert (ours - ref_final).abs().max() < 1e-4
    # Undoing that factor leaves float32 rounding: measured <= 6e-7.
    up = upsample(raw[:, None], (224, 224))[:, 0]
    r = (up.amax(dim=(1, 2)) - up.amin(dim=(1, 2)))[:, None, None]
    assert (ours * (r + EPS) / r - ref_final).abs().max() < 1e-5


def test_oracle_gradcampp_epsilon_differs(tiny, images):
    """pytorch-grad-cam adds 1e-6 to the Grad-CAM++ denominator 2g^2 + sum(A) g^3. With |g| ~ 1e-3
    (GAP over 14x14 after the layer) that is the same order as 2g^2: the weights change a lot."""
    from pytorch_grad_cam import GradCAMPlusPlus

    classes = torch.tensor([1, 4, 7])
    layer = tiny.target_layer
    ref_raw, _ = _gc_lowres(GradCAMPlusPlus, tiny, layer, images, classes)
    published = cams.cam_lowres("gradcampp", tiny, images, ClassLogit(classes), layer)[:, 0]
    with_eps = cams.cam_lowres("gradcampp", tiny, images, ClassLogit(classes), layer, eps=1e-6)[
        :, 0
    ]
    assert _rel(with_eps, ref_raw) < 1e-4
    assert _rel(published, ref_raw) > 0.1  # a genuine definition difference, not noise


def test_oracle_scorecam_align_corners_differs(tiny, images):
    """pytorch-grad-cam's ScoreCAM upsamples masks with nn.UpsamplingBilinear2d (align_corners=True);
    the project's up() uses align_corners=False. Same formula otherwise (its 1e-8 epsilon = ours)."""
    from pytorch_grad_cam import ScoreCAM

    classes = torch.tensor([1, 4, 7])
    layer = tiny.target_layer
    ref_raw, _ = _gc_lowres(ScoreCAM, tiny, layer, images, classes)
    ours = cams.cam_lowres("scorecam", tiny, images, ClassLogit(classes), layer)[:, 0]
    diff = _rel(ours, ref_raw)
    assert 1e-6 < diff < 1e-2  # visible, but the weights are close on this random tiny network


def test_oracle_pytorch_grad_cam_efficientnet():
    """The pretrained offline default model, one image, the gradient CAMs (Score/Ablation-CAM would
    need 1280 forward passes in pytorch-grad-cam: too slow here; the tiny model covers them)."""
    import pytorch_grad_cam

    model = load_model("efficientnet_lite0")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        classes = model(x).argmax(1)  # the predicted class: its Grad-CAM map is not all zero
    layer = model.target_layer
    cases = [("gradcam", "GradCAM", {}), ("gradcampp", "GradCAMPlusPlus", {"eps": 1e-6})]
    cases += [("layercam", "LayerCAM", {}), ("xgradcam", "XGradCAM", {"eps": 1e-7})]
    for method, gc_name, options in cases:
        ref_raw, _ = _gc_lowres(getattr(pytorch_grad_cam, gc_name), model, layer, x, classes)
        raw = cams.cam_lowres(method, model, x, ClassLogit(classes), layer, **options)[:, 0]
        assert ref_raw.amax() > 0, method
        assert _rel(raw, ref_raw) < 1e-4, method


# --------------------------------------------------------------------------- properties


def _opts(method: str, **kw) -> dict:
    return kw if method in ("scorecam", "ablationcam") else {}


@pytest.mark.parametrize("method", ALL)
def test_batch_invariance_and_determinism(images, method):
    # Float64: alone vs in the batch, the convolutions run other kernels; in float32 the maps then
    # differed by up to 1.4e-6 (Ablation-CAM, XGrad-CAM), depending on the CPU's kernels, against
    # the bound of 1e-5. In float64: measured <= 2.5e-15.
    tiny = load_model("tiny").double()
    images = images.double()
    classes = [3, 5, 9]
    batch = explain(method, tiny, images, classes, **_opts(method, batch_size=7))
    again = explain(method, tiny, images, classes, **_opts(method, batch_size=7))
    assert torch.equal(batch, again)
    assert batch.shape == (3, 1, 224, 224) and torch.isfinite(batch).all()
    assert batch.min() >= 0 and batch.max() <= 1
    for i in range(3):
        alone = explain(method, tiny, images[i : i + 1], classes[i], **_opts(method, batch_size=7))
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_chunked_equals_unchunked(images, method):
    # Float64: the chunk size selects other convolution kernels, and Ablation-CAM's weights
    # (y - y_k) / y cancel; in float32 chunks differed by up to 9.8e-7 (relative 1.8e-5) on one CPU
    # configuration, against a bound of 1e-7 + 1e-5 relative. In float64: measured <= 5.6e-16.
    tiny = load_model("tiny").double()
    images = images.double()
    t = ClassLogit(torch.tensor([0, 2, 6]))
    layer = tiny.target_layer
    whole = cams.cam_lowres(method, tiny, images, t, layer, batch_size=1000)
    assert whole.dtype == torch.float64 and whole.amax() > 0.1
    for bs in (1, 5, 16):  # chunks spanning two images, one-per-pass, exactly K
        part = cams.cam_lowres(method, tiny, images, t, layer, batch_size=bs)
        torch.testing.assert_close(part, whole, rtol=1e-10, atol=1e-12)


def test_ablation_fast_path_equals_repeat(tiny, images):
    t = ClassLogit(torch.tensor([0, 2, 6]))
    layer = tiny.target_layer
    acts, _ = cams.forward_features(tiny, images, layer)
    fast, used_fast = cams.ablation_scores(tiny, images, t, layer, acts, batch_size=10)
    slow, used_slow = cams.ablation_scores(tiny, images, t, layer, acts, batch_size=10, fast=False)
    assert used_fast and not used_slow
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


class Skip(nn.Module):
    """A residual connection across the hooked ReLU: the fast ablation path must fall back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = nn.Conv2d(3, 4, 16, stride=16)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        z = self.conv1(x)
        return self.fc((self.conv2(self.relu(z)) + z).relu().mean(dim=(2, 3)))


def test_ablation_falls_back_on_skip_connections():
    model = Skip()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    t = ClassLogit(torch.tensor([0, 2]))
    acts, _ = cams.forward_features(model, x, model.relu)
    scores, used_fast = cams.ablation_scores(model, x, t, model.relu, acts, batch_size=5)
    assert not used_fast
    # Brute force: zero channel k of the ReLU output with a plain hook, one channel at a time.
    expected = torch.empty(2, 4)
    for k in range(4):
        handle = model.relu.register_forward_hook(
            lambda m, i, o, k=k: o.index_fill(1, torch.tensor([k]), 0.0)
        )
        try:
            with torch.no_grad():
                expected[:, k] = t(model(x), torch.arange(2))
        finally:
            handle.remove()
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


class Constant(nn.Module):
    """Feature maps that are constant in space (a constant per channel): every CAM map is constant.

    The features have the input's resolution, so the map is not upsampled: bilinear upsampling of
    a constant 7x7 map is constant only up to rounding on some CPU kernels (range 3.7e-9 for a map
    value 0.072, measured with ``ATEN_CPU_CAPABILITY=default``), and range normalization would turn
    that rounding into a map with values up to 0.43."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.expand = nn.Upsample(size=(224, 224))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)
        self.num_classes = 2

    def forward(self, x):
        return self.fc(self.relu(self.expand(self.pool(x))).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", CAMS)
def test_constant_feature_map_gives_zeros(method):
    torch.manual_seed(0)  # the weights of Constant
    model = Constant()
    x = torch.rand(2, 3, 224, 224)
    maps = explain(method, model, x, [0, 1], layer=model.relu)
    assert torch.isfinite(maps).all()
    assert maps.abs().max() == 0


def test_all_zero_features_give_zeros():
    model = Analytic()
    with torch.no_grad():
        model.conv.bias.fill_(-100.0)  # the ReLU kills every channel
    x = torch.rand(1, 3, 224, 224)
    for method in CAMS:
        maps = explain(method, model, x, 0, layer=model.relu)
        assert torch.isfinite(maps).all() and maps.abs().max() == 0, method


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_hook_or_memory_leak(tiny, images):
    layer = tiny.target_layer
    x = images[:1]
    for _ in range(10):  # warm-up: allocator caches, lazy imports
        explain("gradcam", tiny, x, 1)
    before = _rss_bytes()
    for _ in range(100):
        explain("gradcam", tiny, x, 1)
        assert not layer._forward_hooks and not layer._backward_hooks
    grown = _rss_bytes() - before
    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 100 calls"
    for method in ALL:
        explain(method, tiny, x, 1, **_opts(method, batch_size=16))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny.modules())


def test_hooks_removed_on_error(tiny, images):
    def bad_target(logits, index):
        raise RuntimeError("boom")

    for method in CAMS:
        with pytest.raises(RuntimeError, match="boom"):
            explain(method, tiny, images[:1], bad_target)
        assert not tiny.target_layer._forward_hooks


def test_weights_flags_and_mode_restored(tiny, images):
    params = list(tiny.parameters())
    flags = [i % 2 == 0 for i in range(len(params))]
    for p, f in zip(params, flags):
        p.requires_grad_(f)
    tiny.train()
    try:
        for method in ALL:
            explain(method, tiny, images[:1], 2, **_opts(method, batch_size=16))
            assert [p.requires_grad for p in params] == flags
            assert tiny.training
            assert all(p.grad is None for p in params)
    finally:
        for p in params:
            p.requires_grad_(True)
        tiny.eval()


def test_layer_by_name_and_options(tiny, images):
    a = explain("gradcam", tiny, images[:1], 1, layer="features.7")
    b = explain("gradcam", tiny, images[:1], 1)
    assert torch.equal(a, b)
    c = explain("gradcam", tiny, images[:1], 1, layer="features.4")  # a 28x28 layer
    assert c.shape == (1, 1, 224, 224)
    with pytest.raises(ValueError, match="batch_size"):
        explain("scorecam", tiny, images[:1], 1, batch_size=0)
    with pytest.raises(TypeError):
        explain("gradcam", tiny, images[:1], 1, no_such_option=1)
    scored = explain("scorecam", tiny, images[:1], 1, batch_size=8, progress=True)
    assert scored.shape == (1, 1, 224, 224)
    assert set(CAMS) | {"fakecam"} <= set(METHODS)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: explain("gradcam", m, torch.rand(3, 224, 224), 0), ValueError, "shape"),
        (
            lambda m: explain("gradcam", m, torch.zeros(1, 3, 224, 224, dtype=torch.uint8), 0),
            TypeError,
            "uint8",
        ),
        (
            lambda m: explain("gradcam", m, torch.rand(1, 3, 224, 224) * 3, 0),
            ValueError,
            r"\[0, 1\]",
        ),
        (
            lambda m: explain("gradcam", m, torch.rand(1, 3, 224, 224) - 0.5, 0),
            ValueError,
            r"\[0, 1\]",
        ),
        (
            lambda m: explain("gradcam", m, torch.rand(1, 3, 224, 224), 10),
            ValueError,
            "out of range",
        ),
        (
            lambda m: explain("gradcam", m, torch.rand(2, 3, 224, 224), [0, 1, 2]),
            ValueError,
            "targets",
        ),
        (
            lambda m: explain("no_such_cam", m, torch.rand(1, 3, 224, 224), 0),
            ValueError,
            "unknown method",
        ),
        (
            lambda m: explain("gradcam", m, torch.rand(1, 3, 224, 224), 0, layer="nope"),
            ValueError,
            "no layer",
        ),
    ],
)
def test_bad_inputs(tiny, call, error, match):
    with pytest.raises(error, match=match):
        call(tiny)


def test_cam_lowres_errors(tiny, images):
    with pytest.raises(ValueError, match="no low-resolution map"):
        cams.cam_lowres(
            "fakecam", tiny, images, ClassLogit(torch.tensor([0, 0, 0])), tiny.target_layer
        )
    with pytest.raises(ValueError, match="feature layer"):
        cams.cam_lowres("gradcam", tiny, images, ClassLogit(torch.tensor([0, 0, 0])), None)
    with pytest.raises(ValueError, match=r"\[B, K, h, w\]"):
        cams.cam_lowres("gradcam", tiny, images, ClassLogit(torch.tensor([0, 0, 0])), tiny.net.fc)


def test_scorecam_classes_equals_one_run_per_class(images):
    """Several classes from one set of masked forward passes = Score-CAM run once per class.

    In float64: other chunks of masked images run other kernels; in float32 the maps differed by
    up to 4.2e-7 (bound 1e-6 + 1e-5 relative), depending on the CPU's kernels; in float64: measured
    <= 8.9e-16."""
    from paper_code.methods.cams import scorecam_classes

    tiny = load_model("tiny").double()
    images = images.double()
    classes = torch.tensor([[1, 4, 9], [0, 0, 7], [3, 2, 5]])[: images.shape[0]]
    together = scorecam_classes(tiny, images, classes, tiny.target_layer, batch_size=5)
    assert together.shape == (images.shape[0], 3, *images.shape[-2:])
    for r in range(3):
        alone = explain("scorecam", tiny, images, classes[:, r], batch_size=7)
        torch.testing.assert_close(together[:, r : r + 1], alone, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(together[:, 0], together[:, 2])  # the classes do differ
