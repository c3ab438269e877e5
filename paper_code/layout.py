"""Where the project's files are, and the book's pages: the repository root, the book's folder,
the pages of the reproduction and the paper's tables and figures in the paper's order.

Importable without torch (the book's orchestrator never loads it).
"""

from __future__ import annotations

from pathlib import Path

#: Repository root (where ``_config.yml`` and ``_toc.yml`` live) for a source checkout.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The book's pages (``book/*.md``, jupytext notebooks and text pages).
BOOK_DIR = REPO_ROOT / "book"

#: The pages of the book's first part, after the introduction, in this order: the report first
#: (what a reader of a reproduction wants to know), then how to run it, the choices made, and how
#: much the open protocol choices move the numbers, and how to evaluate a method of your own.
REPRODUCTION_PAGES = ("report", "reproduce", "deviations", "sensitivity", "own_method")


#: The table and figure notebooks in the paper's order (figA6 covers Figs. A.6 and A.7).
PAPER_ORDER = (
    "table1", "table2", "table3", "table4", "table5", "table6", "tableA7", "tableA8", "tableA9",
    "tableA10", "tableA11", "tableA12", "tableA13", "tableA14", "fig1", "fig2", "fig3", "figA4",
    "figA5", "figA6",
)  # fmt: skip
