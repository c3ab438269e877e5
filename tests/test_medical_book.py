"""The medical tables of the book (Tables A.10 and A.11) computed for real on CPU: a generated
miniature Chest X-ray tree, the tiny CNN fine-tuned on it for one epoch per stage with the
fine-tuning API, then both notebooks executed with papermill (``smoke`` profile) on that tree and
checkpoint. Also: the medical datasets open from notebook parameters, and Kvasir's test split is
the one the checkpoint was fine-tuned with."""

from __future__ import annotations

import json
import math

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from paper_code import experiments as ex
from paper_code.book.runner import run_notebook
from paper_code.experiments.tablerun import table_methods
from paper_code.finetune import finetune
from paper_code.models import weights_identity

CHEST_CLASSES = ("NORMAL", "PNEUMONIA")
KVASIR_CLASSES = (
    "dyed-lifted-polyps",
    "dyed-resection-margins",
    "esophagitis",
    "normal-cecum",
    "normal-pylorus",
    "normal-z-line",
    "polyps",
    "ulcerative-colitis",
)
CHEST_COUNTS = {"train": 4, "val": 2, "test": 2}  # images per class
FAST = {"batch_size": 4, "num_workers": 0, "progress": False}


# Generator copied (smaller) from tests/test_medical.py: tiny greyscale JPEGs, NORMAL dark,
# PNEUMONIA bright, and a nested duplicate chest_xray/chest_xray tree as in the Kaggle archive.
def _image(path, value, mode="L", size=(40, 32), seed=0):
    rng = np.random.default_rng(seed)
    arr = np.clip(value + rng.normal(0, 10, size[::-1]), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, mode="L")
    if mode == "RGB":
        im = Image.merge("RGB", (im, im.point(lambda v: v // 2), im.point(lambda v: 255 - v)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_chest_tree(base):
    top = base / "chest_xray"
    for tree in (top, top / "chest_xray"):
        for split, n in CHEST_COUNTS.items():
            for lab, cls in enumerate(CHEST_CLASSES):
                for i in range(n):
                    _image(
                        tree / split / cls / f"IM-{i:04d}.jpeg", 60 + 130 * lab, seed=i + 10 * lab
                    )
    return top


def make_kvasir_tree(base, per_class=4):
    top = base / "kvasir-dataset-v2"
    for k, cls in enumerate(KVASIR_CLASSES):
        for i in range(per_class):
            _image(top / cls / f"{i:02d}-{cls[:3]}.jpg", 20 + 30 * k, mode="RGB", seed=i)
    return top


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """(data folder, fine-tuning summary) of the tiny CNN on the miniature Chest X-ray tree."""
    base = tmp_path_factory.mktemp("medical")
    root = make_chest_tree(base / "data")
    summary = finetune(
        dataset="chestxray",
        model="tiny",
        root=str(root),
        out=str(base / "ckpt"),
        stage1_epochs=1,
        stage2_epochs=1,
        stage1_lr=0.05,
        stage2_lr=0.01,
        **FAST,
    )
    return root, summary


def _run(name, chest, base, **extra):
    root, summary = chest
    params = {
        "medical_root": {"chestxray": str(root), "kvasir": None},
        "checkpoints": {"chestxray-tiny": summary["checkpoint"]},
        "methods": None,  # every method of the paper's table (Score-CAM is cheap on the tiny CNN)
        "plugins": None,  # the paper's methods only (the smoke profile adds its example plugin)
        "n_images": None,  # the 4 test images
        "batch_size": 4,
        # Extremal Perturbation's blur pyramid costs seconds even for one step on a CPU.
        "method_options": {"extremal": {"iterations": 1}},
        "output_dir": str(base / "out"),
        "cache_dir": str(base / "cache"),  # shared: Table A.11 reuses Table A.10's maps
        **extra,
    }
    path = run_notebook(name, params, base / "nb", profile="smoke", progress=False)
    nb = nbformat.read(path, as_version=4)
    texts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.output_type != "error", f"{name}: {o.get('ename')}: {o.get('evalue')}"
            if o.output_type == "stream":
                assert "Traceback" not in o.text, o.text
                texts.append(o.text)
            texts += [str(v) for k, v in (o.get("data") or {}).items() if k.startswith("text/")]
    return base / "out", "\n".join(texts)


@pytest.fixture(scope="module")
def book(chest, tmp_path_factory):
    """Both notebooks executed on the miniature tree, into one output folder and map cache."""
    base = tmp_path_factory.mktemp("book")
    return {
        "tableA10": _run("tableA10", chest, base),
        "tableA11": _run("tableA11", chest, base, id_step=12544),  # 4 steps instead of 224
    }


def _check_common(name, out, text, chest, metrics):
    _, summary = chest
    rows = pd.read_csv(out / f"{name}_chestxray_rows.csv")
    expected, _ = table_methods(name, "resnet50")  # the tiny CNN stands in for ResNet50
    assert set(rows["method"]) == set(expected), "every method of the paper's table ran"
    assert (rows.groupby("method")["id"].nunique() == 4).all(), "every test image, once"
    assert set(rows["model"]) == {"tiny"}
    assert all(i.startswith("test/") for i in rows["id"]), "the test split only"
    for m in metrics:
        assert np.isfinite(rows[m]).all(), m
    prov = json.loads((out / f"{name}_chestxray_provenance.json").read_text())
    ident = weights_identity(summary["checkpoint"])
    assert ident in prov["tiny_checkpoint"] and summary["checkpoint"] in prov["tiny_checkpoint"]
    assert f"{summary['test_accuracy']:.1f} %" in prov["tiny_test_accuracy"]
    assert prov["dataset"] == "chestxray" and prov["images"] == 4
    configs = json.loads((out / f"{name}_chestxray_configs.json").read_text())
    assert {c["maps"]["weights"] for c in configs.values()} == {ident}
    plan = json.loads((out / f"{name}_plan.json").read_text())
    assert [p["model"] for p in plan if not p["missing"]] == ["tiny"]
    # Kvasir had neither data nor checkpoint: said plainly, with the commands, and no rows.
    assert "Nothing was computed for Kvasir" in text
    assert "python -m paper_code finetune --dataset kvasir --model resnet50" in text
    assert f"python -m paper_code run {name}" in text
    assert not (out / f"{name}_kvasir_rows.csv").exists()
    return rows


@pytest.mark.slow  # executes a whole notebook (with the one above: ~40 s of CPU)
def test_tableA10_computes_every_method_on_the_finetuned_checkpoint(chest, book):
    out, text = book["tableA10"]
    rows = _check_common("tableA10", out, text, chest, ["AD", "AG", "AI"])
    fake = rows[rows["method"] == "fakecam"]
    assert fake["AD"].abs().max() < 1.0, "Fake-CAM masks one pixel: AD about 0"
    assert ((rows["AD"] >= 0) & (rows["AD"] <= 100)).all()
    summary = pd.read_csv(out / "tableA10_chestxray_summary.csv")
    assert {"AD_lo", "AD_hi", "T", "images"} <= set(summary.columns)
    assert "Opti-CAM" in set(summary["method"])


@pytest.mark.slow  # executes a whole notebook (with the one above: ~40 s of CPU)
def test_tableA11_insertion_deletion_with_a_coarse_step(chest, book):
    out, text = book["tableA11"]
    rows = _check_common("tableA11", out, text, chest, ["I", "D"])
    assert ((rows[["I", "D"]] >= 0) & (rows[["I", "D"]] <= 100)).all().all()
    assert "4 steps of 12544 pixels, not the paper's 224 steps" in text


def test_setup_needs_a_checkpoint_and_uses_the_finetuning_split_of_kvasir(tmp_path):
    root = make_kvasir_tree(tmp_path / "data")
    ckpt_dir = tmp_path / "ckpt"
    summary = finetune(
        dataset="kvasir",
        model="tiny",
        root=str(root),
        out=str(ckpt_dir),
        stage1_epochs=1,
        stage2_epochs=0,
        split_seed=3,
        max_batches=1,
        **FAST,
    )
    params = {
        "dataset": "kvasir",
        "medical_root": {"kvasir": str(root)},
        "checkpoints": str(ckpt_dir),  # the folder finetune wrote
        "output_dir": str(tmp_path / "out"),
    }
    with pytest.raises(FileNotFoundError, match="no fine-tuned checkpoint"):
        ex.setup(params, "resnet50")  # never ImageNet weights on the medical images
    model, data, _, _ = ex.setup(params, "tiny")
    assert model.categories == list(KVASIR_CLASSES) and data.split == "test"
    assert str(data.split_file) == summary["split_file"]
    split = json.loads((ckpt_dir / "kvasir-split-seed3.json").read_text())["splits"]["test"]
    assert sorted(data.ids) == sorted(s.rsplit(".", 1)[0] for s in split)
    plan = {(p["dataset"], p["model"]): p["missing"] for p in ex.medical_plan(params)}
    assert plan[("kvasir", "resnet50")].startswith("checkpoint ")
    assert "no data folder" in plan[("chestxray", "resnet50")]
    assert not math.isnan(summary["test_accuracy"])
