"""A notebook opened on Colab: a fresh runtime without ``paper_code`` (simulated by a new virtual
environment holding only ``ipykernel``, its kernel registered for papermill) runs the notebook with
the ``smoke`` parameters; its set-up cell installs ``paper_code[book]`` from the repository of the
setting, pointed at a clone of this working tree with ``$PAPER_CODE_REPOSITORY``.

The install of torch & co. into the new environment dominates (about 2-3 min on a 2-core machine,
from pip's indexes and cache); the environment is removed afterwards (it holds ~6 GB).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

from paper_code.book import environments as envs
from paper_code.book.profiles import load_profile, profile_parameters
from paper_code.book.runner import notebook_parameters
from paper_code.book.setup_cell import SETUP_TAG, setup_source, write_notebook

#: The notebook run as on Colab (any notebook of the book: override to try another).
NOTEBOOK = os.environ.get("PAPER_CODE_COLAB_NOTEBOOK", "table1")

#: ``fresh_env``: builds a new virtual environment with torch (3-10 min); ``-m "not fresh_env"``
#: leaves it out locally, CI runs it.
pytestmark = [pytest.mark.slow, pytest.mark.fresh_env]


@pytest.fixture
def colab(tmp_path: Path):
    venv = tmp_path / "colab-venv"
    try:
        yield tmp_path, venv
    finally:
        envs.remove_in_background(venv)  # ~6 GB: not left in pytest's kept tmp dirs


def test_notebook_runs_on_fresh_colab_like_kernel(colab) -> None:
    tmp, venv = colab
    clone = envs.clone_worktree(tmp / "clone")
    md = clone / "book" / f"{NOTEBOOK}.md"
    assert md.exists(), f"no notebook {NOTEBOOK}"
    # The committed notebooks get their set-up cell from `setup_cell --write`; apply it to the
    # clone's copy so that this test does not depend on it having been run.
    write_notebook(md, setup_source())
    ipynb = md.with_suffix(".ipynb")  # Colab opens the .ipynb
    nb = jupytext.read(ipynb)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert SETUP_TAG in first_code.metadata["tags"], "the set-up cell must be the first code cell"

    py = envs.fresh_venv(venv, ["ipykernel"])
    work = tmp / "work"
    work.mkdir()
    assert not envs.importable(py, "paper_code", cwd=work), "paper_code already in the fresh env"
    assert not envs.importable(py, "myst_nb", cwd=work)
    kernels = tmp / "jupyter"
    name = envs.venv_kernel(py, kernels, "colab-sim")

    declared = notebook_parameters(nb)
    params = {
        k: v
        for k, v in profile_parameters(load_profile("smoke"), NOTEBOOK).items()
        if k in declared
    }
    params.update(output_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    out = tmp / f"{NOTEBOOK}.executed.ipynb"
    proc, peak, seconds = envs.papermill_in(
        sys.executable,  # papermill here; the kernel is the fresh environment's Python
        ipynb,
        out,
        params,
        cwd=work,  # not the clone: `import paper_code` must not find the sources by accident
        kernel=name,
        env={"JUPYTER_PATH": str(kernels), "PAPER_CODE_REPOSITORY": str(clone)},
    )
    print(f"colab simulation: {NOTEBOOK} ran in {seconds:.0f} s (install included)")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert envs.importable(py, "paper_code", cwd=work), "the set-up cell did not install paper_code"
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert list((tmp / "out").iterdir()), "the notebook wrote nothing"
    source = "\n".join(c.source for c in executed.cells)
    if "paper_code.experiments.display import" in source and "glue(" in source:
        # Outside the book, glued numbers are printed where the cell runs.
        printed = "".join(
            o.get("text", "")
            for c in executed.cells
            if "glue(" in c.source
            for o in c.get("outputs", [])
            if o.output_type == "stream"
        )
        assert " = " in printed, "glue() showed nothing outside the book"
