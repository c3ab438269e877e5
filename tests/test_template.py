"""The metric template (paper_code.metrics.base), the metadata registered beside each metric, and the
low-level helpers that paper_code.methods and paper_code.metrics share (paper_code.methods.base)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import paper_code
from paper_code import metrics as M
from paper_code.methods import base as B
from paper_code.methods.forward import compile_mode, compile_options

PACKAGE = Path(paper_code.__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny():
    return paper_code.load_model("tiny")


# --------------------------------------------------------------------------- metadata


def test_metrics_metadata_is_registered_beside_each_function():
    assert set(M.METRICS) == {
        "AD", "AG", "AI", "I", "D", "AOPC", "MS", "ADCC",
        "OM", "LE", "F1", "BoxAcc", "SP", "EP", "SM",
    }  # fmt: skip
    for key, info in M.METRICS.items():
        assert callable(getattr(M, info.function)), key
        assert info.direction in ("higher", "lower") and info.reference, key
    assert M.METRICS["AG"].function == "classification" and M.METRICS["AG"].equation == "15"
    assert M.METRICS["BoxAcc"].function == "box_accuracy"
    assert M.METRICS["ADCC"].direction == "higher"  # the paper's Table 4 arrow is a misprint


def test_metric_decorator_rejects_a_bad_direction_and_a_second_owner():
    info = M.MetricInfo("Example", "up", "%", "0", "faithfulness")
    with pytest.raises(ValueError, match="direction"):
        M.metric(X_TEST=info)(lambda: None)
    with pytest.raises(ValueError, match="already computed by classification"):

        @M.metric(AD=M.MetricInfo("Average Drop", "lower", "%", "13", "faithfulness"))
        def other():
            pass

    assert M.METRICS["AD"].function == "classification" and "X_TEST" not in M.METRICS


def test_metric_modules_import_no_private_name():
    """The template is public API: no metric module reaches into another's private names."""
    bad = []
    for path in sorted((PACKAGE / "metrics").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                bad += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad


@pytest.mark.parametrize(
    "name",
    [
        "check_images",
        "check_maps",
        "check_choice",
        "class_indices",
        "default_batch_size",
        "chunks",
        "index_chunks",
        "positive_int",
        "compile_options",
    ],
)
def test_each_shared_helper_is_defined_once(name):
    where = []  # module-level functions (Evaluation.chunks is a method that calls chunks)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                where.append(str(path.relative_to(PACKAGE)))
    assert len(where) == 1, where


# --------------------------------------------------------------------------- Evaluation


def test_evaluation_checks_and_moves_its_inputs(tiny):
    x = torch.rand(3, 3, 16, 16)
    ev = M.Evaluation(tiny, x, torch.ones(3, 1, 16, 16, dtype=torch.float64), batch_size=2)
    assert ev.maps.dtype == x.dtype and ev.maps.device == x.device
    assert [(s.start, s.stop) for s in ev.chunks(5)] == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="input resolution"):
        M.Evaluation(tiny, x, torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match="B = 3"):
        M.Evaluation(tiny, x, torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        M.Evaluation(tiny, x[:, :2])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        M.Evaluation(tiny, x, batch_size=0)
    with pytest.raises(ValueError, match="needs maps"):
        M.Evaluation(tiny, x).maps  # noqa: B018
    with pytest.raises(ValueError, match="no model"):
        M.Evaluation(None, x).classes(None)


def test_evaluation_classes_given_scalar_or_predicted(tiny):
    x = torch.rand(5, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ev = M.Evaluation(tiny, x, batch_size=2)
    assert ev.classes(4).tolist() == [4] * 5
    assert ev.classes(torch.tensor([[1], [2], [3], [4], [5]])).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="one class per image"):
        ev.classes([1, 2])
    with torch.no_grad():
        predicted = tiny(x).argmax(1)
    assert torch.equal(ev.classes(None), predicted)


def test_evaluation_probs_follow_the_chunks_and_the_classes(tiny):
    """Each evaluation gets its own input and class; chunking changes nothing but rounding."""
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    cls = torch.tensor([0, 3, 6, 9])
    with torch.no_grad():
        ref = tiny(x).double().softmax(1)[torch.arange(4), cls]
    for size in (1, 3, 4):
        got = M.Evaluation(tiny, x, batch_size=size).probs(lambda sl: x[sl], cls)
        assert got.dtype == torch.float64
        # float32 forward in another memory layout and batch: rounding of the logits only
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    flipped = M.Evaluation(tiny, x, batch_size=3).probs(lambda sl: x.flip(0)[sl], cls.flip(0))
    torch.testing.assert_close(flipped, ref.flip(0), rtol=1e-5, atol=1e-7)


def test_evaluation_explains_in_chunks_with_autograd_on(tiny):
    calls = []

    def explainer(images, classes):
        calls.append((images.shape[0], torch.is_grad_enabled()))
        return images.mean(1, keepdim=True).double()

    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        out = M.Evaluation(None, x, batch_size=2).explain(explainer, x, torch.zeros(5).long())
    assert calls == [(2, True), (2, True), (1, True)]
    assert out.shape == (5, 1, 8, 8) and not out.requires_grad


# --------------------------------------------------------------------------- shared helpers


def test_class_indices_strict_and_lenient():
    assert B.class_indices(2, 3, "cpu").tolist() == [2, 2, 2]
    assert B.class_indices([7], 1, "cpu").tolist() == [7]
    with pytest.raises(TypeError, match="not a bool"):
        B.class_indices(True, 2, "cpu")
    with pytest.raises(TypeError, match="integer"):
        B.class_indices(torch.tensor([1.0, 2.0]), 2, "cpu")
    assert B.class_indices(torch.tensor([1.0, 2.9]), 2, "cpu", strict=False).tolist() == [1, 2]
    with pytest.raises(ValueError, match="out of range"):
        B.class_indices([1, 10], 2, "cpu", num_classes=10)
    with pytest.raises(ValueError, match="2 targets for a batch of 3"):
        B.class_indices([1, 2], 3, "cpu")


def test_batch_sizes_and_chunks():
    assert B.default_batch_size(device="cpu") == 6
    assert B.default_batch_size(10, "cpu") == 10 and B.default_batch_size(10, "cuda") == 64
    assert B.default_batch_size() == (64 if torch.cuda.is_available() else 6)
    assert B.resolve_batch_size(None, cpu=64) == 64 and B.resolve_batch_size(3) == 3
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            B.resolve_batch_size(bad)
    assert [(s.start, s.stop) for s in B.chunks(5, 5)] == [(0, 5)]
    assert list(B.chunks(0, 4)) == []
    assert [c.tolist() for c in B.index_chunks(3, 2, "cpu")] == [[0, 1], [2]]
    assert [c.tolist() for c in B.index_chunks(3, None, "cpu")] == [[0, 1, 2]]


def test_image_checks_of_methods_and_metrics():
    shifted = torch.full((1, 3, 4, 4), 1.5)
    B.check_images(shifted, pixels=False)  # the metrics accept any values
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space"):
        B.check_images(shifted)
    with pytest.raises(TypeError, match="floating point"):
        B.check_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_compile_mode_and_options():
    assert compile_mode(True) is None and compile_mode("max-autotune") == "max-autotune"
    assert compile_options(None) == {"dynamic": False, "mode": None}
    assert compile_options("reduce-overhead")["mode"] == "reduce-overhead"
    assert compile_options("aot_eager") == {"dynamic": False, "backend": "aot_eager"}
