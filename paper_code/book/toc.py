"""The book's table of contents (``_toc.yml``): its pages, which of them are notebooks, and the order
in which a run executes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..layout import PAPER_ORDER, REPO_ROOT, REPRODUCTION_PAGES


def toc_files(toc: str | os.PathLike[str] = REPO_ROOT / "_toc.yml") -> list[str]:
    """Every ``file:``/``root:`` entry of a Jupyter Book ``_toc.yml``, in order (no suffix)."""
    data = yaml.safe_load(Path(toc).read_text())
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in ("root", "file"):
                if k in node:
                    out.append(str(node[k]))
            for k in ("parts", "chapters", "sections"):
                for child in node.get(k) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(data)
    return out


def is_notebook(path: Path) -> bool:
    """True for ``.ipynb`` files and for text files with a jupytext ``kernelspec`` header."""
    if path.suffix == ".ipynb":
        return True
    if path.suffix != ".md" or not path.exists():
        return False
    text = path.read_text()
    if not text.startswith("---"):
        return False
    end = text.find("\n---", 3)
    header = yaml.safe_load(text[3:end]) if end > 0 else None
    return isinstance(header, dict) and "kernelspec" in header


#: Pages that read what the others wrote, run after them in this order whatever their place in
#: the table of contents: the page of your own method and the protocol-sensitivity page reuse the
#: tables' maps and rows, and the reproducibility report gathers every page's claim checks (and
#: the sensitivity page's).
RUN_LAST = ("own_method", "sensitivity", "report")


def run_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order a run executes them: the table of contents' order, with the pages of
    :data:`RUN_LAST` moved to the end (in that order).

    >>> run_order(["report", "table1", "sensitivity", "fig1"])
    ['table1', 'fig1', 'sensitivity', 'report']
    """
    last = [n for n in RUN_LAST if n in names]
    return [n for n in names if n not in RUN_LAST] + last


def toc_notebooks(toc: str | os.PathLike[str] = REPO_ROOT / "_toc.yml") -> list[Path]:
    """Source of every notebook in the table of contents, in order (its name is ``.stem``)."""
    base = Path(toc).parent
    out = []
    for entry in toc_files(toc):
        for suffix in (".md", ".ipynb"):
            src = base / f"{entry}{suffix}"
            if src.exists() and is_notebook(src):
                out.append(src)
                break
    return out


_TOC_HEADER = """\
# Table of contents (Jupyter Book 1). Every "file" below must exist; tests/test_book.py checks that
# each entry exists and that every notebook in book/ is listed. Regenerate after adding a notebook:
#   python -c "from paper_code.book.toc import write_toc; write_toc()"
# Notebooks go in paper order: {order} (figA6 covers Figs. A.6 and A.7).
"""


def write_toc(book_root: str | os.PathLike[str] = REPO_ROOT) -> list[str]:
    """Rewrite ``_toc.yml``: the text pages, then every notebook of :data:`PAPER_ORDER` that exists
    in ``book/`` (as ``book/<name>.md``). Returns the notebook names listed."""
    book_root = Path(book_root)
    names = [n for n in PAPER_ORDER if (book_root / "book" / f"{n}.md").exists()]
    toc = {
        "format": "jb-book",
        "root": "book/intro",
        "parts": [
            {
                "caption": "The reproduction",
                "chapters": [
                    {"file": f"book/{n}"}
                    for n in REPRODUCTION_PAGES
                    if (book_root / "book" / f"{n}.md").exists()
                ],
            },
            {"caption": "Tables and figures", "chapters": [{"file": f"book/{n}"} for n in names]},
        ],
    }
    header = _TOC_HEADER.format(order=" ".join(PAPER_ORDER))
    text = header + yaml.safe_dump(toc, sort_keys=False, default_flow_style=False)
    (book_root / "_toc.yml").write_text(text)
    return names
