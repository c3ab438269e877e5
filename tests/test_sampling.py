"""Tests of the sampling baselines (paper_code/methods/sampling.py): LIME and GradientSHAP.

1. LIME on an analytic classifier whose score is a sum of fixed weights of the intact grid
   segments: the recovered superpixel weights rank the true ones exactly.
2. GradientSHAP on a linear model: exactly w * (x - b); completeness on a smooth non-linear model.
3. Maps constant per superpixel, seeding, batch invariance (LIME), the registry / explain path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from paper_code.methods import METHODS, explain
from paper_code.methods import sampling as S
from paper_code.methods.targets import ClassLogit

SIDE = 32
CELL = 8  # a 4 x 4 grid of 8 x 8 segments


def grid_segments(h: int = SIDE, w: int = SIDE, cell: int = CELL) -> np.ndarray:
    rows = np.arange(h)[:, None] // cell
    cols = np.arange(w)[None, :] // cell
    return rows * (w // cell) + cols


def grid_segmentation(image: np.ndarray) -> np.ndarray:
    return grid_segments(image.shape[0], image.shape[1])


class GridScorer(nn.Module):
    """logit_0 = sum_s v_s * mean_{p in s} x_p(red) / 0.5, logit_1 = 0.

    On the constant 0.5 image with removed segments set to 0, logit_0 = sum of v_s over the intact
    segments: a model that is exactly linear in LIME's interpretable features.
    """

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        seg = torch.from_numpy(grid_segments())
        area = float(CELL * CELL)
        self.register_buffer("pixel_weight", values[seg] / area / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.pixel_weight).sum((1, 2))
        return torch.stack([s, torch.zeros_like(s)], 1)


def first_logit(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return logits[:, 0]


TRUE = torch.tensor(np.random.default_rng(3).permutation(16) - 7.5, dtype=torch.float32)


def segment_values(maps: torch.Tensor) -> torch.Tensor:
    """Per-segment value [B, 16] of maps that are constant on the grid cells."""
    return maps[:, 0, ::CELL, ::CELL].reshape(maps.shape[0], -1)


@pytest.fixture(scope="module")
def half():
    return torch.full((2, 3, SIDE, SIDE), 0.5)


# --------------------------------------------------------------------------- LIME


def test_lime_recovers_ranking_of_linear_segment_scores(half):
    model = GridScorer(TRUE)
    weights, segments = S.lime_weights(
        model, half[:1], first_logit, segmentation_fn=grid_segmentation, hide_color=0.0
    )
    assert torch.equal(segments[0].cpu(), torch.from_numpy(grid_segments()))
    got = segment_values(weights)[0]
    assert torch.equal(got.argsort(), TRUE.argsort())
    # The score is exactly linear in z, so the ridge fit is close to the truth (shrunk by alpha=1).
    assert torch.allclose(got, TRUE, rtol=0.05, atol=0.05)


def test_lime_probability_target_ranks_segments(half):
    """Class-index targets: lime regresses softmax probabilities (sigmoid of a small sum here)."""
    model = GridScorer(TRUE * 0.02)
    weights, _ = S.lime_weights(
        model, half[:1], ClassLogit(torch.tensor([0])), segmentation_fn=grid_segmentation
    )
    assert torch.equal(segment_values(weights)[0].argsort(), TRUE.argsort())


def test_lime_map_positive_part_normalized_and_constant_per_segment(half):
    model = GridScorer(TRUE)
    maps = explain("lime", model, half, first_logit, segmentation_fn=grid_segmentation)
    assert maps.shape == (2, 1, SIDE, SIDE)
    assert maps.min() >= 0 and maps.max() <= 1
    blocks = maps[:, 0].reshape(2, 4, CELL, 4, CELL).permute(0, 1, 3, 2, 4).reshape(2, 16, -1)
    assert torch.equal(blocks.amax(-1), blocks.amin(-1))  # constant inside each segment
    vals = segment_values(maps)
    assert torch.all(vals[:, TRUE <= 0] == 0)  # negative weights -> 0
    assert torch.allclose(vals.amax(1), torch.ones(2), atol=1e-6)
    assert torch.equal(vals[0, TRUE > 0].argsort(), TRUE[TRUE > 0].argsort())


def test_lime_seeded_and_batch_invariant(half):
    model = GridScorer(TRUE)
    kw = dict(segmentation_fn=grid_segmentation, num_samples=200)
    a = S.lime(model, half, first_logit, seed=1, **kw)
    b = S.lime(model, half, first_logit, seed=1, **kw)
    c = S.lime(model, half[1:], first_logit, seed=1, **kw)
    d = S.lime(model, half, first_logit, seed=2, **kw)
    assert torch.equal(a, b)
    assert torch.equal(a[1:], c)
    assert not torch.equal(a, d)


def test_lime_quickshift_default_and_quiet(capsys):
    """The default quickshift path on a real-looking image: maps constant per superpixel, no output."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(SIDE, SIDE))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 3))
    weights, segments = S.lime_weights(model, x, ClassLogit(torch.tensor([2])), num_samples=40)
    maps = explain("lime", model, x, [2], num_samples=40)
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""
    assert segments.max() > 0  # quickshift found several superpixels
    for s in segments.unique():
        inside = maps[0, 0][segments[0] == s]
        assert torch.equal(inside.amax(), inside.amin())
    assert torch.equal(maps, S.normalize_range(weights.clamp_min(0)))


# --------------------------------------------------------------------------- GradientSHAP


def linear_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))


def test_gradientshap_linear_model_is_w_times_x_minus_baseline():
    model = linear_model()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([4, 0, 2])
    phi = S.gradientshap_attributions(model, x, ClassLogit(classes), n_samples=7)
    w = model[1].weight.detach()[classes].reshape(3, 3, 8, 8)
    assert torch.allclose(phi, w * (x - 0.0), atol=1e-6)
    # Chunked (one image per Captum call) gives the same exact result.
    phi1 = S.gradientshap_attributions(model, x, ClassLogit(classes), n_samples=7, batch_size=1)
    assert torch.allclose(phi1, phi, atol=1e-6)


def test_gradientshap_completeness():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    target = ClassLogit(torch.tensor([1, 2]))
    phi = S.gradientshap_attributions(model, x, target, n_samples=2000)
    with torch.no_grad():
        idx = torch.arange(2)
        delta = target(model(x), idx) - target(model(torch.zeros_like(x)), idx)
    assert torch.allclose(phi.sum((1, 2, 3)), delta, rtol=0.02, atol=2e-3)


def test_gradientshap_seeded_and_restores_global_rng():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.rand(2, 3, 8, 8)
    target = ClassLogit(torch.tensor([0, 1]))
    np.random.seed(123)  # noqa: NPY002  (the legacy global state Captum uses)
    torch.manual_seed(123)
    np_before = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_before = torch.get_rng_state()
    a = S.gradientshap(model, x, target, seed=5, stdevs=0.1, n_samples=4)
    assert np.array_equal(np.random.get_state()[1], np_before)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_before)
    b = S.gradientshap(model, x, target, seed=5, stdevs=0.1, n_samples=4)
    c = S.gradientshap(model, x, target, seed=6, stdevs=0.1, n_samples=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gradientshap_is_batch_invariant():
    """An image's map does not depend on the other images of its batch (the draws are re-seeded
    for every image), unlike one Captum call over the whole batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    classes = torch.tensor([0, 1, 2])
    batch = S.gradientshap(model, x, ClassLogit(classes), stdevs=0.1, n_samples=4)
    for i in range(3):
        alone = S.gradientshap(model, x[i : i + 1], ClassLogit(classes[i : i + 1]), stdevs=0.1,
                               n_samples=4)  # fmt: skip
        assert torch.allclose(batch[i], alone[0], atol=1e-6)
    whole = S.gradientshap(model, x, ClassLogit(classes), stdevs=0.1, n_samples=4, batch_size=3)
    assert not torch.allclose(whole[1:], batch[1:], atol=1e-3)  # the old behaviour differs


def test_gradientshap_through_explain_with_plain_sequential():
    model = linear_model()
    x = torch.rand(2, 3, 8, 8)
    maps = explain("gradientshap", model, x, [1, 3])
    assert maps.shape == (2, 1, 8, 8)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    w = model[1].weight.detach()[[1, 3]].reshape(2, 3, 8, 8)
    expected = S.normalize_range((w * x).sum(1, keepdim=True).clamp_min(0))
    assert torch.allclose(maps, expected, atol=1e-5)
    # The model's flags are restored.
    assert all(p.requires_grad for p in model.parameters()) and model.training


def test_registry_entries():
    lime_spec, gs_spec = METHODS["lime"], METHODS["gradientshap"]
    assert (lime_spec.paper_name, lime_spec.kind, lime_spec.needs_layer) == (
        "LIME",
        "perturbation",
        False,
    )
    assert (gs_spec.paper_name, gs_spec.kind, gs_spec.differentiable) == (
        "GradientShap",
        "gradient",
        True,
    )
    assert dict(lime_spec.defaults)["num_samples"] == 1000
    assert dict(gs_spec.defaults) == {
        "n_samples": 50,
        "stdevs": 0.0,
        "batch_size": None,
        "seed": 0,
        "samples_per_pass": None,
        "progress": False,
    }


def test_bad_options():
    model = linear_model()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="n_samples"):
        explain("gradientshap", model, x, 0, n_samples=0)
    with pytest.raises(ValueError, match="num_samples"):
        explain("lime", model, x, 0, num_samples=0)


def test_lime_matches_plain_lime_call():
    """Oracle: a plain lime call (its own quickshift; scikit-image's default rng 42) gives the same map."""
    from lime.lime_image import LimeImageExplainer

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(SIDE, SIDE))
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 3))
    weights, segments = S.lime_weights(
        model, x, ClassLogit(torch.tensor([1])), num_samples=60, seed=42
    )

    def predict_proba(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(batch).float().permute(0, 3, 1, 2)
            return model(t).softmax(1).double().numpy()

    exp = LimeImageExplainer(random_state=42).explain_instance(
        x[0].permute(1, 2, 0).double().numpy(),
        predict_proba,
        labels=(1,),
        top_labels=None,
        hide_color=0,
        num_samples=60,
        random_seed=42,
    )
    assert np.array_equal(exp.segments, segments[0].numpy())
    ref = np.zeros(exp.segments.max() + 1)
    for feature, weight in exp.local_exp[1]:
        ref[feature] = weight
    assert np.allclose(weights[0, 0].numpy(), ref[exp.segments], atol=1e-6)
