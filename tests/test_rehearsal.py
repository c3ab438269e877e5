"""The rehearsal of the paper-scale path: every page of the GPU profiles executes on ResNet50,
VGG16-BN, ViT-B/16 and DeiT-B/16 (random weights from files) and the synthetic ILSVRC2012 folder,
in every run of the suite (the session fixture ``rehearsal_book`` in conftest.py runs it once);
the weights files passed as parameters reach every page, and nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from paper_code.book.profiles import load_profile
from paper_code.book.rehearsal import REHEARSAL_MODELS
from paper_code.book.toc import toc_notebooks
from paper_code.models import weights_identity

pytestmark = pytest.mark.slow

CNNS = ("resnet50", "vgg16_bn")
TRANSFORMERS = ("vit_base_patch16_224", "deit_base_patch16_224")
#: The pages of the rehearsal: those of imagenet-1k (the GPU profiles skip the medical pages).
PAGES = [
    s.stem for s in toc_notebooks() if s.stem not in (load_profile("imagenet-1k").get("skip") or ())
]
#: The pages that show the transformers.
TRANSFORMER_PAGES = ("table2", "table3", "tableA8")


def test_rehearsal_profile_is_imagenet_1k_on_the_four_networks() -> None:
    prof, gpu = load_profile("rehearsal"), load_profile("imagenet-1k")
    assert prof["skip"] == gpu["skip"]
    assert prof["parameters"]["models"] == list(CNNS)
    assert prof["parameters"]["transformers"] == list(TRANSFORMERS)
    assert prof["parameters"]["dataset"] == "imagenet"
    assert set(REHEARSAL_MODELS) == {*CNNS, *TRANSFORMERS}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_the_papers_networks(rehearsal_book: Path, page: str) -> None:
    executed = rehearsal_book / "notebooks" / f"{page}.ipynb"
    assert executed.exists(), f"{page} did not run (see {rehearsal_book / 'logs'})"
    nb = json.loads(executed.read_text())
    errors = [
        o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors, f"{page}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    text = json.dumps(nb)
    assert "not computed here" not in text, f"{page}: a network was not available"


def _provenance(book: Path, page: str) -> dict:
    path = book / (f"{page}/provenance.json" if page == "fig3" else f"{page}_provenance.json")
    assert path.exists(), f"{page} wrote no provenance"
    return json.loads(path.read_text())


@pytest.mark.parametrize("page", PAGES)
def test_weights_files_reach_every_page(rehearsal_book: Path, page: str) -> None:
    """Every network a page loaded came from its weights file (content hash in the provenance),
    none from torchvision's or timm's published weights; the CNN pages show the CNNs and the
    transformer pages the transformers."""
    files = {m: rehearsal_book / "weights" / f for m, f in REHEARSAL_MODELS.items()}
    loaded = _provenance(rehearsal_book, page).get("weights") or {}
    assert loaded, f"{page} records no weights"
    for model, identity in loaded.items():
        assert identity == weights_identity(files[model]), (page, model, identity)
    expected = set(TRANSFORMERS) if page in ("table2", "tableA8") else set()
    if page not in ("table2", "tableA8"):
        expected |= {"vgg16_bn"} if page in ("fig1", "fig2", "figA4", "figA5") else set()
        expected |= {"resnet50"} if page in ("figA6",) else set()
    assert expected <= set(loaded), (page, sorted(loaded))
    if page in ("table1", "table3", "table4", "tableA7", "tableA9", "tableA14"):
        assert set(CNNS) <= set(loaded), (page, sorted(loaded))
    if page == "table3":
        assert set(TRANSFORMERS) <= set(loaded), sorted(loaded)


def test_result_keys_name_the_weights_files(rehearsal_book: Path) -> None:
    keys = json.loads((rehearsal_book / "table1_configs.json").read_text())
    ids = {k["maps"]["model"]: k["maps"]["weights"] for k in keys.values()}
    assert ids == {
        m: weights_identity(rehearsal_book / "weights" / REHEARSAL_MODELS[m]) for m in CNNS
    }


def test_nothing_was_downloaded(rehearsal_book: Path) -> None:
    """The suite runs the rehearsal with empty torch and Hugging Face caches and the hub offline:
    a page that had looked for published weights would have failed or written a file there."""
    caches = rehearsal_book / "empty-caches"
    written = [p for p in caches.rglob("*") if p.is_file()] if caches.exists() else []
    assert not written, written


def test_site_is_built_with_every_page(rehearsal_book: Path) -> None:
    html = rehearsal_book / "_build" / "html"
    assert (html / "index.html").exists()
    for page in PAGES:
        assert (html / "book" / f"{page}.html").exists(), page
    for page in load_profile("rehearsal")["skip"]:
        assert not (html / "book" / f"{page}.html").exists(), page


def test_report_projects_every_page(rehearsal_book: Path, capsys) -> None:
    """benchmarks/rehearsal_report.py, which the GPU session prints: seconds per image of every
    page and the projected time of the GPU profiles (the 50,000-image pages 50x the 1000's)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rehearsal_report.py"
    spec = importlib.util.spec_from_file_location("rehearsal_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(rehearsal_book)]) == 0
    text = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert set(PAGES) <= set(rows), sorted(set(PAGES) - set(rows))
    timings = json.loads((rehearsal_book / "timings.json").read_text())["seconds"]
    cells = [c.strip() for c in rows["table1"].split("|")[1:-1]]
    n = load_profile("rehearsal")["parameters"]["n_images"]
    per_image = timings["table1"] / n

    def seconds(hms: str) -> int:
        h, m, s = map(int, hms.split(":"))
        return 3600 * h + 60 * m + s

    assert float(cells[2]) == pytest.approx(per_image, abs=1e-3)
    assert seconds(cells[3]) == pytest.approx(per_image * 1000, abs=1)  # imagenet-1k
    assert seconds(cells[4]) == pytest.approx(per_image * 50_000, abs=1)  # imagenet: all 50,000
    table5 = [c.strip() for c in rows["table5"].split("|")[1:-1]]
    assert seconds(table5[4]) == pytest.approx(timings["table5"] / n * 1000, abs=1)  # ablation
