"""Binder's environment.yml installs every package of pyproject.toml (core + book extra), pinned."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["book"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = {_name(r) for r in pip}
    # Every dependency is there; more names are allowed only as exact pins of packages that
    # jupyter-book pulls in (pinned so that the Binder image rebuilds the same).
    assert not wanted - have, f"missing in environment.yml: {wanted - have}"
    assert all("==" in r for r in pip), [r for r in pip if "==" not in r]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for cmd in ('pip install -e ".[dev]"', "python -m pytest", "apt-get install -y"):
        assert cmd in readme and cmd in ci, cmd


def test_citation_file_names_the_package_version_and_the_paper() -> None:
    """CITATION.cff (GitHub's "Cite this repository") parses, carries the package's version and
    cites the paper (its DOI) as the preferred citation."""
    root = Path(__file__).resolve().parents[1]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert cff["cff-version"] == "1.2.0" and cff["version"] == version
    assert cff["preferred-citation"]["doi"] == "10.1016/j.cviu.2024.104101"
    assert [a["family-names"] for a in cff["preferred-citation"]["authors"]] == [
        "Zhang", "Torres", "Sicre", "Avrithis", "Ayache",
    ]  # fmt: skip
