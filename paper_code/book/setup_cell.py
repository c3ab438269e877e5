"""The set-up cell every notebook of the book starts with (before its first code cell).

Opened on Colab (or in any kernel without ``paper_code``), a notebook must install the package
before its first import; everywhere else (the book's runs, Binder, a developer's checkout) the cell
does nothing. In the rendered book it is hidden (tag ``remove-cell``). It installs
``paper_code[book]`` from the repository of the one setting (``_config.yml``'s ``repository.url``,
see :mod:`paper_code.book.publish`); at run time ``$PAPER_CODE_REPOSITORY`` overrides it (a
local clone's folder in the tests).

Insert or update the cell in every notebook of ``_toc.yml`` (idempotent; ``.md`` and ``.ipynb``
of each jupytext pair stay in sync)::

    python -m paper_code.book.setup_cell --write
    python -m paper_code.book.setup_cell --check   # exit 1 when a notebook lacks it
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..layout import REPO_ROOT
from .toc import toc_notebooks

__all__ = ["SETUP_TAG", "check", "setup_source", "write", "write_notebook"]

#: Tag identifying the set-up cell (with ``remove-cell``, which hides it in the book).
SETUP_TAG = "paper-code-setup"
TAGS = ["remove-cell", SETUP_TAG]

_TEMPLATE = """\
# Set-up (hidden in the book): installs paper_code and its [book] extra where it is missing
# (Colab, a fresh kernel); does nothing where it is installed.
import importlib.util

if importlib.util.find_spec("paper_code") is None:
    import importlib, os, subprocess, sys  # noqa: E401

    _repo = os.environ.get("PAPER_CODE_REPOSITORY") or {url}
    _spec = f"{{_repo}}[book]" if os.path.isdir(_repo) else f"paper_code[book] @ git+{{_repo}}@{ref}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", _spec], check=True)
    importlib.invalidate_caches()"""


def setup_source(url: str | None = None, ref: str | None = None) -> str:
    """Source of the set-up cell for repository ``url`` and branch ``ref`` (default: the
    setting, ``_config.yml``'s ``repository.url`` and ``branch``)."""
    from .. import repository

    cfg = repository.book_config() if url is None or ref is None else {}
    if url is None:  # the committed setting (not $PAPER_CODE_REPOSITORY, a run-time override)
        setting = str((cfg.get("repository") or {}).get("url") or "")
        url = repository.links(url=setting, config=cfg)["repository"]
    ref = str((cfg.get("repository") or {}).get("branch") or "main") if ref is None else ref
    return _TEMPLATE.format(url=json.dumps(url), ref=ref)


_FENCE = "```{code-cell} ipython3"
_CELL_RE = re.compile(
    r"```\{code-cell\} ipython3\n:tags: \[[^\]\n]*"
    + re.escape(SETUP_TAG)
    + r"[^\]\n]*\]\n\n.*?\n```\n\n",
    re.S,
)


def _md_cell(source: str) -> str:
    return f"{_FENCE}\n:tags: [{', '.join(TAGS)}]\n\n{source}\n```\n\n"


def _update_md(text: str, source: str) -> str:
    cell = _md_cell(source)
    if _CELL_RE.search(text):
        return _CELL_RE.sub(lambda _: cell, text, count=1)
    at = text.find(_FENCE)
    if at < 0:
        return text.rstrip("\n") + "\n\n" + cell.rstrip("\n") + "\n"
    return text[:at] + cell + text[at:]


def _update_nb(nb, source: str) -> bool:
    import nbformat

    for cell in nb.cells:
        if cell.cell_type == "code" and SETUP_TAG in cell.metadata.get("tags", []):
            changed = cell.source != source
            cell.source = source
            return changed
    new = nbformat.v4.new_code_cell(source, metadata={"tags": list(TAGS)})
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first, new)
    return True


def write_notebook(src: str | os.PathLike[str], source: str | None = None) -> bool:
    """Insert or update the set-up cell of one notebook (``.md`` jupytext text or ``.ipynb``),
    then sync its jupytext pair. Returns True when a file changed."""
    import jupytext
    from jupytext.cli import jupytext as jupytext_cli

    src = Path(src)
    source = setup_source() if source is None else source
    if src.suffix == ".md":
        text = src.read_text()
        new = _update_md(text, source)
        changed = new != text
        if changed:
            src.write_text(new)
    else:
        nb = jupytext.read(src)
        changed = _update_nb(nb, source)
        if changed:
            jupytext.write(nb, src)
    pair = src.with_suffix(".ipynb" if src.suffix == ".md" else ".md")
    if pair.exists() and (changed or not _in_sync(src, pair)):
        jupytext_cli(["--sync", "--quiet", str(src)])
        changed = True
    return changed


def _sources(path: Path) -> list[tuple[str, str]]:
    import jupytext

    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


def _in_sync(a: Path, b: Path) -> bool:
    return _sources(a) == _sources(b)


def _has_cell(path: Path, source: str) -> bool:
    import jupytext

    nb = jupytext.read(path)
    cells = [c for c in nb.cells if SETUP_TAG in c.metadata.get("tags", [])]
    if len(cells) != 1 or cells[0].source.strip() != source.strip():
        return False
    if "remove-cell" not in cells[0].metadata.get("tags", []):
        return False
    code = [c for c in nb.cells if c.cell_type == "code"]
    return code[0] is cells[0]


def check(book_root: str | os.PathLike[str] = REPO_ROOT, source: str | None = None) -> list[str]:
    """Problems with the set-up cells of the table of contents' notebooks (empty: all good)."""
    source = setup_source() if source is None else source
    problems = []
    for src in toc_notebooks(Path(book_root) / "_toc.yml"):
        for path in dict.fromkeys([src, src.with_suffix(".ipynb")]):
            if path.exists() and not _has_cell(path, source):
                problems.append(f"{path.relative_to(book_root)}: set-up cell missing or outdated")
    return problems


def write(book_root: str | os.PathLike[str] = REPO_ROOT, source: str | None = None) -> list[Path]:
    """Insert or update the set-up cell in every notebook of ``_toc.yml``; the changed ones."""
    source = setup_source() if source is None else source
    return [
        src for src in toc_notebooks(Path(book_root) / "_toc.yml") if write_notebook(src, source)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_code.book.setup_cell", description=__doc__.split("\n\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="insert/update the cell everywhere")
    group.add_argument(
        "--check", action="store_true", help="exit 1 if a notebook is not up to date"
    )
    group.add_argument("--show", action="store_true", help="print the cell's source")
    parser.add_argument("--book-root", default=str(REPO_ROOT), help="folder with _toc.yml")
    args = parser.parse_args(argv)
    if args.show:
        print(setup_source())
        return 0
    if args.write:
        changed = write(args.book_root)
        print(f"set-up cell written in {len(changed)} notebook(s)")
        for p in changed:
            print(f"  {p}")
        return 0
    problems = check(args.book_root)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print("run: python -m paper_code.book.setup_cell --write", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
