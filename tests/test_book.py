"""The book: notebook pairs, table of contents, profiles, helpers, and a papermill smoke run of every
notebook with the ``smoke`` profile."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from paper_code.reproduce.notebooks import (
    BOOK_DIR,
    PAPER_ORDER,
    REPO_ROOT,
    REQUIRED_PARAMETERS,
    NotebookError,
    is_notebook,
    list_profiles,
    load_profile,
    notebook_parameters,
    profile_parameters,
    run_notebook,
    toc_files,
    toc_notebooks,
)
from paper_code.reproduce.notebooks import reproduce as reproduce_fn
from paper_code.reproduce.paper import paper_table, provenance

NOTEBOOK_SOURCES = sorted(p for p in BOOK_DIR.glob("*.md") if is_notebook(p))
NOTEBOOK_IDS = [p.stem for p in NOTEBOOK_SOURCES]
#: Parameters every table/figure notebook declares (the template's parameters cell).
NOTEBOOK_PARAMETERS = {"profile", *REQUIRED_PARAMETERS}


def _code_sources(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


# --------------------------------------------------------------------------- notebook pairs


def test_there_are_notebooks() -> None:
    assert NOTEBOOK_SOURCES, "no jupytext notebooks in book/"


@pytest.mark.parametrize("md", NOTEBOOK_SOURCES, ids=NOTEBOOK_IDS)
def test_pair_in_sync_and_stripped(md: Path) -> None:
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {md}`"
    text_nb = jupytext.read(md)
    assert text_nb.metadata["jupytext"]["text_representation"]["format_name"] == "myst"
    assert text_nb.metadata["kernelspec"]["name"] == "python3"
    assert "ipynb" in text_nb.metadata["jupytext"]["formats"]
    paired = jupytext.read(ipynb)
    assert _code_sources(paired) == _code_sources(text_nb), (
        f"{ipynb.name} is out of sync with {md.name}: run `jupytext --sync {md}`"
    )
    raw = json.loads(ipynb.read_text())
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{ipynb.name}: committed with outputs"
            assert cell.get("execution_count") is None, f"{ipynb.name}: has execution counts"
    assert "papermill" not in raw["metadata"], f"{ipynb.name} is an executed copy"


@pytest.mark.parametrize("md", NOTEBOOK_SOURCES, ids=NOTEBOOK_IDS)
def test_notebook_declares_parameters(md: Path) -> None:
    nb = jupytext.read(md)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    declared = notebook_parameters(nb)
    missing = NOTEBOOK_PARAMETERS - set(declared)
    assert not missing, f"parameters cell lacks {sorted(missing)}"


# --------------------------------------------------------------------------- table of contents


def test_toc_entries_exist() -> None:
    for entry in toc_files():
        found = [REPO_ROOT / f"{entry}{s}" for s in (".md", ".ipynb")]
        assert any(p.exists() for p in found), f"_toc.yml lists {entry}, which does not exist"


def test_every_page_is_in_toc() -> None:
    listed = set(toc_files())
    pages = {f"book/{p.stem}" for p in BOOK_DIR.glob("*.md")}
    pages |= {f"book/{p.stem}" for p in BOOK_DIR.glob("*.ipynb")}
    assert pages - listed == set(), f"pages not in _toc.yml: {sorted(pages - listed)}"


def test_toc_notebooks_in_paper_order() -> None:
    order = list(PAPER_ORDER)
    names = [p.stem for p in toc_notebooks()]
    assert set(names) <= set(order), f"unexpected notebooks {sorted(set(names) - set(order))}"
    assert names == [n for n in order if n in names], "notebooks are not in the paper's order"
    assert toc_files()[:3] == ["book/intro", "book/reproduce", "book/deviations"]


def test_config() -> None:
    cfg = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    assert "_build" in cfg["exclude_patterns"]
    assert cfg["repository"]["branch"] == "main"
    assert cfg["launch_buttons"]["thebe"] is False
    assert cfg["launch_buttons"]["colab_url"] and cfg["launch_buttons"]["binderhub_url"]
    sphinx = cfg["sphinx"]
    assert "paper_code.sphinxext" in sphinx["extra_extensions"]
    assert sphinx["config"]["mathjax_path"] == "mathjax/tex-chtml.js"
    assert sphinx["config"]["nb_ipywidgets_js"] == {}


# --------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", ["sample", "smoke", "imagenet-1k", "imagenet"])
def test_profiles_load(name: str) -> None:
    assert name in list_profiles()
    prof = load_profile(name)
    missing = set(REQUIRED_PARAMETERS) - set(prof["parameters"])
    assert not missing, f"profile {name} lacks {sorted(missing)}"
    assert prof["name"] == name
    assert isinstance(prof["notebooks"], dict)


def test_profile_values_and_overrides(tmp_path: Path) -> None:
    sample, smoke, full = load_profile("sample"), load_profile("smoke"), load_profile("imagenet")
    assert sample["parameters"]["models"] == ["efficientnet_lite0"]
    assert sample["parameters"]["device"] == "cpu" and sample["parameters"]["n_images"] is None
    assert smoke["parameters"]["n_images"] == 2 and smoke["parameters"]["dataset"] == "sample"
    assert full["parameters"]["models"] == ["resnet50", "vgg16_bn"]  # inherited from imagenet-1k
    assert full["parameters"]["n_images"] is None
    assert profile_parameters(full, "table6")["n_images"] == 1000
    assert profile_parameters(full, "table1")["n_images"] is None
    # A user-supplied file, inheriting from a bundled profile.
    mine = tmp_path / "mine.yml"
    mine.write_text(
        "extends: smoke\nparameters: {device: cuda:1}\nnotebooks: {table1: {n_images: 1}}\n"
    )
    prof = load_profile(mine)
    assert prof["name"] == "mine" and prof["parameters"]["device"] == "cuda:1"
    assert prof["parameters"]["iterations"] == 3
    assert profile_parameters(prof, "table1")["n_images"] == 1
    with pytest.raises(FileNotFoundError, match="unknown profile"):
        load_profile("nope")


# --------------------------------------------------------------------------- helpers


def test_paper_tables_packaged() -> None:
    t1 = paper_table("table1")
    assert set(t1.columns) >= {"network", "method", "metric", "value", "direction"}
    opti = t1.query("method == 'Opti-CAM' and network == 'resnet50'").set_index("metric")["value"]
    assert opti.to_dict() == {"AD": 1.5, "AG": 68.8, "AI": 92.8, "T": 4.15}
    assert paper_table("table3")["value"].isna().sum() == 16  # the paper's "–"
    with pytest.raises(FileNotFoundError):
        paper_table("table99")


def test_provenance() -> None:
    info = provenance(0.0, "cpu", model="tiny")
    for k in ("model", "device", "hardware", "torch", "paper_code", "git_commit", "wall_time_s"):
        assert k in info


def test_run_notebook_reports_failing_cell(tmp_path: Path) -> None:
    src = tmp_path / "broken.md"
    src.write_text(
        "---\njupytext:\n  text_representation:\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "```{code-cell} ipython3\n:tags: [parameters]\n\nx = 1\n```\n\n"
        "```{code-cell} ipython3\nassert x == 2, f'x is {x}'\n```\n"
    )
    with pytest.raises(NotebookError, match=r"'broken' failed in cell \d+: AssertionError: x is 1"):
        run_notebook(src, {}, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "broken.ipynb").exists()  # the partial output is kept
    out = run_notebook(src, {"x": 2}, tmp_path / "out", progress=False)
    executed = nbformat.read(out, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert src.read_text().count("x = 1") == 1  # the source is untouched


# --------------------------------------------------------------------------- smoke runs


@pytest.mark.slow
@pytest.mark.parametrize("md", NOTEBOOK_SOURCES, ids=NOTEBOOK_IDS)
def test_notebook_smoke(md: Path, tmp_path: Path) -> None:
    """Every notebook runs end to end with the smoke profile (2 images, 3 iterations, CPU)."""
    params = {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    out = run_notebook(md, params, tmp_path / "nb", profile="smoke", progress=False)
    nb = nbformat.read(out, as_version=4)
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.output_type != "error", f"{md.stem}: {o.get('ename')}: {o.get('evalue')}"
            if o.output_type == "stream" and o.name == "stderr":
                assert "Traceback" not in o.text, o.text
    assert list((tmp_path / "out").iterdir()), "the notebook wrote nothing to output_dir"


_NB_HEADER = (
    "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
    "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
)


@pytest.mark.slow
def test_reproduce_reports_failures_and_still_builds(tmp_path: Path, capsys) -> None:
    """One failing notebook: the other still runs, the site is built, the failure is named with
    its cell error, and the status is non-zero."""
    root = tmp_path / "bookroot"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text((REPO_ROOT / "_config.yml").read_text())
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/good\n  - file: book/bad\n"
    )
    (root / "book" / "intro.md").write_text("# Intro\n\nMath: $x^2$.\n")
    cell = "```{{code-cell}} ipython3\n{}\n```\n"
    params = cell.format(":tags: [parameters]\n\nprofile = 'x'\noutput_dir = '.'")
    (root / "book" / "good.md").write_text(
        _NB_HEADER + "# Good\n\n" + params + cell.format("1 + 1")
    )
    (root / "book" / "bad.md").write_text(
        _NB_HEADER + "# Bad\n\n" + params + cell.format("raise ValueError('boom')")
    )
    profile = {"name": "t", "parameters": {"output_dir": str(tmp_path / "o")}, "notebooks": {}}
    status = reproduce_fn(profile, out=tmp_path / "o", book_root=root, progress=False)
    assert status == 1
    err = capsys.readouterr().err
    assert "FAILED bad" in err and "ValueError: boom" in err
    assert "good" not in err.split("FAILED", 1)[1].split("\n")[0].replace("bad", "")
    html = tmp_path / "o" / "_build" / "html"
    assert (html / "book" / "good.html").exists() and (html / "book" / "bad.html").exists()
    assert (tmp_path / "o" / "notebooks" / "good.ipynb").exists()
    assert not (root / "book" / "good.ipynb").exists()  # sources untouched
