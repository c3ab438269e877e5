"""The book: notebook pairs, table of contents, profiles, helpers, and a papermill smoke run of every
notebook with the ``smoke`` profile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from paper_code import repository
from paper_code.book import setup_cell
from paper_code.book.profiles import (
    REQUIRED_PARAMETERS,
    list_profiles,
    load_profile,
    profile_parameters,
)
from paper_code.book.reproduce import reproduce as reproduce_fn
from paper_code.book.runner import NotebookError, notebook_parameters, run_notebook
from paper_code.book.schedule import TIMINGS_FILE, RunTimes
from paper_code.book.site import publishable_notebook
from paper_code.book.toc import is_notebook, toc_files, toc_notebooks
from paper_code.experiments import display
from paper_code.experiments.paper import paper_table, provenance
from paper_code.layout import BOOK_DIR, PAPER_ORDER, REPO_ROOT, REPRODUCTION_PAGES
from paper_code.repository import ENV_REPOSITORY

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
    """The reproduction's pages first (the report right after the introduction), then the tables
    and figures in the paper's order."""
    order = list(REPRODUCTION_PAGES) + list(PAPER_ORDER)
    names = [p.stem for p in toc_notebooks()]
    assert set(names) <= set(order), f"unexpected notebooks {sorted(set(names) - set(order))}"
    assert names == [n for n in order if n in names], "notebooks are not in the paper's order"
    assert toc_files()[:4] == ["book/intro", "book/report", "book/reproduce", "book/deviations"]


def test_config() -> None:
    cfg = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["only_build_toc_files"] is True
    assert "_build" in cfg["exclude_patterns"]
    assert cfg["repository"]["branch"] == "main"
    assert cfg["launch_buttons"]["thebe"] is False
    assert cfg["launch_buttons"]["colab_url"] and cfg["launch_buttons"]["binderhub_url"]
    sphinx = cfg["sphinx"]
    assert "paper_code.book.sphinxext" in sphinx["extra_extensions"]
    assert sphinx["config"]["mathjax_path"] == "mathjax/tex-chtml.js"
    assert sphinx["config"]["nb_ipywidgets_js"] == {}
    for static in sphinx["config"]["html_static_path"]:
        for css in sphinx["config"]["html_css_files"]:
            assert (REPO_ROOT / static / css).exists(), f"{static}/{css} missing"


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


def test_compile_evaluation_reaches_the_kernel_not_the_notebook(tmp_path: Path) -> None:
    """``-p compile_evaluation X`` switches the metrics' compiled forward passes on
    in the kernel's process (PAPER_CODE_COMPILE), without a parameter in every notebook."""
    from paper_code.methods.forward import ENV_COMPILE, compile_setting

    src = tmp_path / "env.md"
    src.write_text(
        "---\njupytext:\n  text_representation:\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "```{code-cell} ipython3\n:tags: [parameters]\n\nx = 1\n```\n\n"
        f"```{{code-cell}} ipython3\nimport os\nprint('env=' + os.environ.get('{ENV_COMPILE}', '-'))\n```\n"
    )
    profile = {"name": "t", "parameters": {"x": 2, "compile_evaluation": "aot_eager"}}
    out = run_notebook(src, None, tmp_path / "out", profile=profile, progress=False)
    text = "".join(
        o.get("text", "")
        for c in nbformat.read(out, as_version=4).cells
        for o in c.get("outputs", [])
    )
    assert "env=aot_eager" in text
    assert ENV_COMPILE not in os.environ  # restored in this process
    assert compile_setting(None) is False and compile_setting("true") is True
    assert compile_setting("0") is False and compile_setting("max-autotune") == "max-autotune"


# --------------------------------------------------------------------------- smoke runs


@pytest.mark.slow
@pytest.mark.parametrize("md", NOTEBOOK_SOURCES, ids=NOTEBOOK_IDS)
def test_notebook_smoke(md: Path, smoke_book: Path) -> None:
    """Every notebook ran end to end with the smoke profile (2 images, 3 iterations, CPU) in the
    session's one run of the whole book (``smoke_book`` in conftest.py)."""
    out = smoke_book / "notebooks" / f"{md.stem}.ipynb"
    assert out.exists(), f"{md.stem} was not executed (see the reproduce output above)"
    nb = nbformat.read(out, as_version=4)
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.output_type != "error", f"{md.stem}: {o.get('ename')}: {o.get('evalue')}"
            if o.output_type == "stream" and o.name == "stderr":
                assert "Traceback" not in o.text, o.text
    written = [
        p for p in smoke_book.iterdir() if p.name.startswith(f"{md.stem}_") or p.name == md.stem
    ]
    assert written, f"{md.stem} wrote nothing to output_dir"


_NB_HEADER = (
    "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
    "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
)
_CELL = "```{{code-cell}} ipython3\n{}\n```\n"
_PARAMS = _CELL.format(":tags: [parameters]\n\nprofile = 'x'\noutput_dir = '.'")


def _mini_book(
    tmp_path: Path, pages: dict[str, str], intro: str = "# Intro\n", static: bool = False
) -> Path:
    """A book root (the project's ``_config.yml``, an intro page) with one notebook page per entry
    of ``pages`` (name -> what follows its parameters cell), listed in that order."""
    root = tmp_path / "bookroot"
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text((REPO_ROOT / "_config.yml").read_text())
    if static:
        shutil.copytree(REPO_ROOT / "book" / "_static", root / "book" / "_static")
    chapters = "".join(f"  - file: book/{n}\n" for n in pages)
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: book/intro\nchapters:\n{chapters}")
    (root / "book" / "intro.md").write_text(intro)
    for name, body in pages.items():
        (root / "book" / f"{name}.md").write_text(_NB_HEADER + f"# {name}\n\n" + _PARAMS + body)
    return root


@pytest.mark.slow
def test_reproduce_reports_failures_and_still_builds(tmp_path: Path, capsys) -> None:
    """One failing notebook: the other still runs, the site is built, the failure is named with
    its cell error, and the status is non-zero."""
    pages = {"good": _CELL.format("1 + 1"), "bad": _CELL.format("raise ValueError('boom')")}
    root = _mini_book(tmp_path, pages, intro="# Intro\n\nMath: $x^2$.\n")
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
    assert json.loads((tmp_path / "o" / TIMINGS_FILE).read_text())["seconds"].keys() == {"good"}


@pytest.mark.slow
def test_reproduce_prints_site_path_times_and_no_kernel_warning(
    tmp_path: Path, capfd, monkeypatch
) -> None:
    """The printed site path is the README's; elapsed/remaining times are shown (from the last
    run's times in the output folder); the kernel's TCP warning does not reach the terminal; and
    the book builds with -W (no broken link) for a repository setting that is not on GitHub."""
    monkeypatch.setenv(ENV_REPOSITORY, str(tmp_path / "some-local-clone"))
    body = _CELL.format("import os\nprint('book run:', os.environ.get('PAPER_CODE_BOOK_RUN'))")
    root = _mini_book(tmp_path, {"a": body, "b": body}, static=True)
    out = tmp_path / "o"
    out.mkdir()
    (out / TIMINGS_FILE).write_text(json.dumps({"seconds": {"a": 30.0, "b": 90.0}}))
    profile = {"name": "t", "parameters": {}, "notebooks": {}}
    status = reproduce_fn(profile, out=out, book_root=root, progress=False)
    captured = capfd.readouterr()
    assert status == 0, captured.err
    assert "without encryption" not in captured.err + captured.out
    assert "estimated time: about 2:00" in captured.out
    assert re.search(
        r"\[1/2\] a ok \(\d:\d\d\); run \d:\d\d elapsed, about \d:\d\d left", captured.out
    )
    site_line = [line for line in captured.out.splitlines() if line.startswith("site: ")]
    printed = Path(site_line[-1].removeprefix("site: "))
    assert printed == out / "_build" / "html" / "index.html" and printed.exists()
    readme = (REPO_ROOT / "README.md").read_text()
    documented = re.search(r"site is in `_build/reproduce/<profile>/([^`]+)`", readme)
    assert documented, "README no longer says where the site is"
    assert printed.relative_to(out).as_posix() == documented[1]
    executed = nbformat.read(out / "notebooks" / "a.ipynb", as_version=4)
    assert "book run: 1" in "".join(
        o.get("text", "") for c in executed.cells for o in c.get("outputs", [])
    )
    page = (out / "_build" / "html" / "book" / "a.html").read_text()
    assert str(out) not in page, "the page shows the machine's absolute output path"
    assert "colab.research.google.com" not in page  # no launch button for a non-GitHub setting


@pytest.mark.slow
def test_reproduce_only_into_a_fresh_folder_still_builds(tmp_path: Path, capsys) -> None:
    """``reproduce --only a`` into a new folder: page b never ran, so its glued number is missing;
    the site is still built (warnings allowed) and the note names the empty page."""
    pages = {
        name: _CELL.format(f"from myst_nb import glue\nglue('{name}_n', 7)")
        + f"\nThe number is {{glue:text}}`{name}_n`.\n"
        for name in ("a", "b")
    }
    root = _mini_book(tmp_path, pages, static=True)
    out = tmp_path / "o"
    profile = {"name": "t", "parameters": {}, "notebooks": {}}
    status = reproduce_fn(profile, out=out, only=["a"], book_root=root, progress=False)
    captured = capsys.readouterr()
    assert status == 0, captured.err[-3000:]
    assert "1 page(s) never ran" in captured.out and ": b (run them" in captured.out
    assert (out / "_build" / "html" / "book" / "b.html").exists()
    page = (out / "_build" / "html" / "book" / "a.html").read_text()
    assert re.search(r"The number is <span[^>]*>7</span>", page)  # a ran: its number is there


_NO_TORCH = """
import sys
from pathlib import Path


class NoTorch:  # any import of torch in this process (the orchestrator) fails loudly
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("the orchestrator imported " + name)


sys.meta_path.insert(0, NoTorch())
from paper_code.book.reproduce import reproduce

root, out = Path(sys.argv[1]), Path(sys.argv[2])
profile = {"name": "t", "parameters": {"compile_evaluation": True}, "notebooks": {}}
sys.exit(reproduce(profile, out=out, book_root=root, progress=False, build=True))
"""


@pytest.mark.slow
def test_reproduce_orchestrator_never_imports_torch(tmp_path: Path) -> None:
    """``reproduce`` only starts kernels and builds the site: importing torch there would add about
    0.75 GB to every run's peak memory (seen: sample's peak went from 1.76 to 2.49 GB when the
    compile setting's name was imported from the torch side). The notebook itself uses torch."""
    body = _CELL.format("import os, torch\nprint('compile:', os.environ.get('PAPER_CODE_COMPILE'))")
    root = _mini_book(tmp_path, {"a": body}, static=True)
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH)
    run = subprocess.run([sys.executable, str(script), str(root), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    executed = nbformat.read(tmp_path / "o" / "notebooks" / "a.ipynb", as_version=4)
    assert "compile: True" in "".join(
        o.get("text", "") for c in executed.cells for o in c.get("outputs", [])
    )


@pytest.mark.slow
def test_reproduce_jobs_runs_notebooks_at_once(tmp_path: Path, capsys) -> None:
    """``reproduce(jobs=2)``: the first notebook alone with every core, then two
    notebooks at the same time, each process with cores/2 threads and imports this checkout's paper_code; each notebook's output goes to its
    log; a failure is reported with its log and the others still run; the rows are those of a
    one-at-a-time run (here: every notebook executed once)."""
    from paper_code.book.schedule import job_environment

    names = ("a", "b", "c")
    body = _CELL.format(
        "import json, os, sys, time\nimport paper_code, torch\n"
        "t0 = time.time(); time.sleep(4)\n"
        "print('marker', json.dumps({'start': t0, 'end': time.time(), "
        "'threads': torch.get_num_threads(), 'code': paper_code.__file__}))"
    )
    pages = {**dict.fromkeys(names, body), "bad": _CELL.format("raise ValueError('boom')")}
    root = _mini_book(tmp_path, pages)
    out = tmp_path / "o"
    profile = {"name": "t", "parameters": {}, "notebooks": {}}
    status = reproduce_fn(profile, out=out, book_root=root, build=False, jobs=2, progress=False)
    captured = capsys.readouterr()
    assert status == 1  # the bad notebook
    assert "FAILED bad" in captured.err and str(out / "logs" / "bad.log") in captured.err
    runs = {}
    for name in names:
        nb = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
        runs[name] = json.loads(text.split("marker ", 1)[1])
        assert (out / "logs" / f"{name}.log").exists()
        assert re.search(rf"\[\d/4\] {name} ok", captured.out)
    # the first notebook (Table 1 in the book: it computes the shared maps) alone, with every core;
    # then two at a time
    assert runs["a"]["end"] <= min(runs["b"]["start"], runs["c"]["start"])
    assert runs["b"]["start"] < runs["c"]["end"] and runs["c"]["start"] < runs["b"]["end"]
    assert runs["a"]["threads"] == int(job_environment(1)["OMP_NUM_THREADS"])
    threads = int(job_environment(2)["OMP_NUM_THREADS"])
    assert runs["b"]["threads"] == runs["c"]["threads"] == threads
    assert {Path(r["code"]).resolve() for r in runs.values()} == {
        (REPO_ROOT / "paper_code" / "__init__.py").resolve()
    }
    assert json.loads((out / TIMINGS_FILE).read_text())["seconds"].keys() == set(names)


def test_job_threads_split_the_cores() -> None:
    from paper_code.book.schedule import job_environment

    assert job_environment(2, cores=8)["OMP_NUM_THREADS"] == "4"
    assert job_environment(3, cores=8)["OMP_NUM_THREADS"] == "2"
    assert job_environment(4, cores=2)["OMP_NUM_THREADS"] == "1"  # never 0


# --------------------------------------------------------------------------- readers' paths


def test_every_notebook_has_the_setup_cell() -> None:
    """Run `python -m paper_code.book.setup_cell --write` after editing notebooks or the
    repository setting."""
    problems = setup_cell.check()
    assert not problems, "\n".join(problems) + "\nrun: python -m paper_code.book.setup_cell --write"


def test_setup_cell_writer_is_idempotent_and_keeps_pairs_in_sync(tmp_path: Path) -> None:
    shutil.copy2(REPO_ROOT / "_toc.yml", tmp_path / "_toc.yml")
    (tmp_path / "book").mkdir()
    for src in toc_notebooks()[:2]:
        for suffix in (".md", ".ipynb"):
            shutil.copy2(src.with_suffix(suffix), tmp_path / "book" / src.with_suffix(suffix).name)
    names = [p.stem for p in toc_notebooks()[:2]]
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/" + names[0] + "\nchapters:\n  - file: book/" + names[1] + "\n"
    )
    source = setup_cell.setup_source("https://github.com/o/r", "main")
    assert setup_cell.check(tmp_path, source)
    changed = setup_cell.write(tmp_path, source)
    assert len(changed) == 2
    before = {p: p.read_text() for p in (tmp_path / "book").iterdir()}
    assert setup_cell.write(tmp_path, source) == []  # idempotent
    assert {p: p.read_text() for p in (tmp_path / "book").iterdir()} == before
    assert setup_cell.check(tmp_path, source) == []
    for name in names:
        md, ipynb = tmp_path / "book" / f"{name}.md", tmp_path / "book" / f"{name}.ipynb"
        assert _code_sources(jupytext.read(md)) == _code_sources(jupytext.read(ipynb))
        nb = jupytext.read(md)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert setup_cell.SETUP_TAG in code[0].metadata["tags"]
        assert "remove-cell" in code[0].metadata["tags"]  # hidden in the book
        assert "parameters" in code[1].metadata["tags"]  # papermill still finds its cell
        raw = json.loads(ipynb.read_text())
        assert all(c.get("outputs", []) == [] for c in raw["cells"] if c["cell_type"] == "code")
    # A new setting updates the cell in place.
    other = setup_cell.setup_source("https://github.com/me/fork", "main")
    assert len(setup_cell.write(tmp_path, other)) == 2
    assert "me/fork" in (tmp_path / "book" / f"{names[0]}.ipynb").read_text()
    assert (tmp_path / "book" / f"{names[0]}.md").read_text().count(setup_cell.SETUP_TAG) == 1


def test_setup_cell_is_a_noop_where_paper_code_is_installed(tmp_path: Path) -> None:
    env = {"PAPER_CODE_REPOSITORY": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"}
    code = setup_cell.setup_source() + "\nprint('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize(
    ("url", "pages", "colab"),
    [
        ("https://github.com/Me/opticam.git", "https://me.github.io/opticam/", True),
        ("https://github.com/me/me.github.io", "https://me.github.io/", True),
        ("https://gitlab.com/me/opticam", "", False),
        ("/tmp/a-clone", "", False),
    ],
)
def test_links_from_one_setting(url: str, pages: str, colab: bool) -> None:
    links = repository.links(url=url, ref="main")
    assert links["pages"] == pages
    assert bool(links["colab"]) == colab
    if colab:
        assert links["colab"].endswith("/blob/main/book/table1.ipynb")
        assert links["binder"].startswith("https://mybinder.org/v2/gh/")
        assert links["pip"].startswith("paper_code[book] @ git+https://github.com/")
        assert repository.commit_url("0123456789ab+dirty", url).endswith("/commit/0123456789ab")
    cfg = repository.site_config(repository.book_config(), url=url, ref="main")
    if pages:
        assert cfg["html"]["baseurl"] == pages and cfg["repository"]["url"].startswith("https://")
    else:  # only links that work: no repository or launch buttons
        assert "url" not in cfg["repository"] and not cfg["html"]["use_repository_button"]
        assert "colab_url" not in cfg["launch_buttons"]
    assert repository.pip_requirement("/tmp/a-clone") == "/tmp/a-clone[book]"


def test_urls_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "paper_code", "urls", "--repository", "https://github.com/o/r"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "https://o.github.io/r/" in done.stdout
    assert "colab.research.google.com/github/o/r/blob/main/book/table1.ipynb" in done.stdout


def test_glue_outside_the_book_shows_values(monkeypatch, capsys) -> None:
    monkeypatch.delenv(display.ENV_BOOK, raising=False)
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # not installed
    display.glue("x_auc", 0.123456)
    assert display.GLUED["x_auc"] == 0.123456
    assert capsys.readouterr().out == "x_auc = 0.1235\n"
    monkeypatch.setenv(display.ENV_BOOK, "1")  # executed for the book: the prose shows it
    display.glue("y", 2)
    assert capsys.readouterr().out == ""


def test_commit_link() -> None:
    url = "https://github.com/o/r"
    assert display.commit_link({"git_commit": "0123456789ab"}, url) == (
        "[`0123456789ab`](https://github.com/o/r/commit/0123456789ab)"
    )
    assert display.commit_link("0123456789ab+dirty", url).endswith("with uncommitted changes")
    assert display.commit_link({"git_commit": "unknown"}, url) == "`unknown`"
    assert display.commit_link("0123456789ab", "/tmp/clone") == "`0123456789ab`"


def test_run_times_estimates(tmp_path: Path) -> None:
    path = tmp_path / TIMINGS_FILE
    path.write_text(json.dumps({"seconds": {"a": 10.0, "b": 20.0, "c": 30.0}}))
    t = RunTimes(path, ["a", "b", "c", "d"])
    assert t.remaining() is None  # d never ran here
    t = RunTimes(path, ["a", "b", "c"])
    assert t.remaining() == 60.0 and "about 1:00" in t.describe_total()
    t.done("a", 20.0, True)  # twice as slow as last time: the rest is scaled
    assert t.estimate("b") == 40.0 and t.remaining() == 100.0
    assert json.loads(path.read_text())["seconds"]["a"] == 20.0
    fresh = RunTimes(tmp_path / "none.json", ["x", "y"])
    assert fresh.remaining() is None
    fresh.done("x", 12.0, True)
    assert fresh.remaining() == 12.0  # the mean of this run so far
    # A profile's measured times stand in for a first run, and are rescaled as it goes.
    first = RunTimes(tmp_path / "none2.json", ["x", "y"], {"x": 10.0, "y": 30.0})
    assert first.remaining() == 40.0 and "profile's measured times" in first.describe_total()
    first.done("x", 20.0, True)
    assert first.remaining() == 60.0
    assert set(load_profile("sample")["expected_seconds"]) == {
        n.stem for n in toc_notebooks()
    } - set(load_profile("sample")["skip"])


def test_run_times_parallel_schedule(tmp_path: Path) -> None:
    """With ``jobs`` N the estimate is the wall time of the first notebook alone, then the others
    N at a time in order (list scheduling), not the sum of every notebook's time."""
    times = {"t1": 100.0, "a": 40.0, "b": 30.0, "c": 20.0, "d": 10.0}
    t = RunTimes(tmp_path / "none.json", list(times), times)
    assert t.remaining() == 200.0  # one at a time: the sum
    t.parallel(2, "t1")
    # t1 alone (100), then a|b on two slots, c after b (30 + 20), d after a (40 + 10): 50
    assert t.remaining() == 150.0 and "2 at a time after t1" in t.describe_total()
    t.parallel(4, "t1")
    assert t.remaining() == 140.0  # t1, then the longest of the four (a)
    t.parallel(2, "t1")
    t.done("t1", 100.0, True)  # as expected: no rescaling
    t.running = {"a": time.perf_counter() - 35.0, "b": time.perf_counter() - 10.0}
    # a has ~5 s left, b ~20: c starts on a's slot (5 + 20 = 25), d on b's (20 + 10 = 30)
    assert t.remaining() == pytest.approx(30.0, abs=0.5)


def test_publishable_notebook_has_no_absolute_paths(tmp_path: Path) -> None:
    out_dir = REPO_ROOT / "_build" / "reproduce" / "x"
    home_path = Path.home() / "data" / "val"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("output_dir = '_build/x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            f'# Parameters\noutput_dir = "{out_dir}"\nroot = "{home_path}"\n',
            metadata={"tags": ["injected-parameters"]},
        ),
        nbformat.v4.new_code_cell("print(output_dir)"),
    ]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{out_dir}\n")]
    nb.metadata["papermill"] = {"parameters": {"output_dir": str(out_dir)}}
    src = tmp_path / "in.ipynb"
    nbformat.write(nb, src)
    dest = publishable_notebook(src, tmp_path / "out.ipynb", REPO_ROOT)
    text = dest.read_text()
    assert str(REPO_ROOT) not in text and str(Path.home()) + "/" not in text
    pub = nbformat.read(dest, as_version=4)
    assert len(pub.cells) == 2  # the injected cell is gone ...
    assert 'output_dir = "_build/reproduce/x"' in pub.cells[0].source  # ... its values shown once
    assert 'root = "~/data/val"' in pub.cells[0].source
    assert pub.cells[1].outputs[0]["text"] == "_build/reproduce/x\n"


def test_profile_skip_leaves_notebooks_out_of_the_run_and_the_site(tmp_path: Path) -> None:
    """`sample` cannot run the transformer and medical pages offline: they are not executed and
    its site lists exactly the pages it ran (no placeholder pages); `smoke` runs every page."""
    from paper_code.book.reproduce import prepare_build_tree

    assert set(load_profile("sample")["skip"]) == {"table2", "tableA8", "tableA10", "tableA11"}
    assert load_profile("smoke")["skip"] == []
    tree = prepare_build_tree(REPO_ROOT, tmp_path / "src", exclude=["table2", "tableA8"])
    listed = [
        c["file"]
        for part in yaml.safe_load((tree / "_toc.yml").read_text())["parts"]
        for c in part["chapters"]
    ]
    assert "book/table2" not in listed and "book/tableA8" not in listed and "book/table1" in listed
    assert (
        not (tree / "book" / "table2.ipynb").exists() and (tree / "book" / "table1.ipynb").exists()
    )
