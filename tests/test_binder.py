"""The Binder route: ``environment.yml`` + ``postBuild``, built the way repo2docker builds them.

repo2docker needs Docker and conda-forge, which these machines cannot reach: its two steps are
emulated (paper_code.book.environments) in a fresh virtual environment of the pinned Python:
``pip install`` of environment.yml's ``pip:`` section, then ``bash postBuild`` in a clone of the
working tree. A notebook then runs there with the ``smoke`` parameters, as a Binder user would run
it, under Binder's 2 GB memory limit (papermill and its kernel together). The GitHub workflow
``.github/workflows/binder.yml`` runs the real repo2docker.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

from paper_code.book import environments as envs
from paper_code.book.profiles import load_profile, profile_parameters
from paper_code.book.runner import notebook_parameters
from paper_code.layout import REPO_ROOT

NOTEBOOK = os.environ.get("PAPER_CODE_BINDER_NOTEBOOK", "table1")
#: mybinder.org's memory limit for a session.
BINDER_MEMORY = 2 * 1024**3
_NAME = re.compile(r"^([A-Za-z0-9_.\-]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    project = data["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["book"])
    return {_norm(_NAME.match(r)[1]): r for r in reqs}


# --------------------------------------------------------------------------- static checks


def test_environment_covers_pyproject_and_is_pinned() -> None:
    conda, pip_reqs = envs.binder_requirements(REPO_ROOT / "environment.yml")
    assert any(re.fullmatch(r"python=\d+\.\d+", c) for c in conda), "pin python=X.Y"
    pinned = {}
    for r in pip_reqs:
        name, _, version = r.partition("==")
        assert version and re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version), f"not pinned: {r}"
        pinned[_norm(name)] = version
    missing = set(_pyproject_requirements()) - set(pinned)
    assert not missing, f"environment.yml lacks {sorted(missing)} (pyproject.toml needs them)"


def test_postbuild_installs_the_package() -> None:
    post = REPO_ROOT / "postBuild"
    assert os.access(post, os.X_OK) or post.read_text().startswith("#!/bin/bash")
    text = post.read_text()
    assert "pip install --no-deps -e ." in text and "set -euo pipefail" in text


# --------------------------------------------------------------------------- the build


@pytest.fixture
def binder(tmp_path: Path):
    venv = tmp_path / "binder-venv"
    try:
        yield tmp_path, venv
    finally:
        envs.remove_in_background(venv)  # ~6 GB: not left in pytest's kept tmp dirs


@pytest.mark.slow
@pytest.mark.fresh_env  # a new virtual environment with torch (3-10 min); CI runs it
def test_binder_build_and_smoke_run(binder) -> None:
    tmp, venv = binder
    clone = envs.clone_worktree(tmp / "clone")
    conda, pip_reqs = envs.binder_requirements(clone / "environment.yml")
    python = next(c.split("=", 1)[1] for c in conda if c.startswith("python="))
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != python:
        pytest.skip(f"environment.yml pins python={python}; this interpreter is {here}")

    # Step 1 (repo2docker: conda env from environment.yml): the same Python, the pip section.
    py = envs.fresh_venv(venv)
    envs.pip(py, ["install", "-q", *pip_reqs])
    # Step 2: postBuild, in the repository, with the environment first on PATH.
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    subprocess.run(["bash", "postBuild"], cwd=clone, env=env, check=True)

    work = tmp / "work"
    work.mkdir()
    nb_path = clone / "book" / f"{NOTEBOOK}.ipynb"
    declared = notebook_parameters(nbformat.read(nb_path, as_version=4))
    params = {
        k: v
        for k, v in profile_parameters(load_profile("smoke"), NOTEBOOK).items()
        if k in declared
    }
    params.update(output_dir=str(tmp / "out"), cache_dir=str(tmp / "cache"))
    out = tmp / f"{NOTEBOOK}.executed.ipynb"
    proc, peak, seconds = envs.papermill_in(py, nb_path, out, params, cwd=work)
    print(
        f"binder emulation: {NOTEBOOK} ran in {seconds:.0f} s, peak memory {peak / 2**20:.0f} MiB"
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert peak < BINDER_MEMORY, f"peak memory {peak / 2**30:.2f} GiB over Binder's 2 GB"
