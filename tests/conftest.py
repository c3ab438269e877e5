"""Shared fixtures of the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole book executed once with the ``smoke`` profile (and its site built): the output
    folder, holding every notebook's rows, summaries and figures, ``notebooks/`` with the executed
    notebooks and ``_build/html`` with the site. Shared by the book, site and numbers tests so the
    notebooks run once per session. ``PAPER_CODE_SMOKE_BOOK`` points at an existing run instead."""
    prebuilt = os.environ.get("PAPER_CODE_SMOKE_BOOK")
    if prebuilt:
        return Path(prebuilt)
    from paper_code.reproduce.notebooks import reproduce

    out = tmp_path_factory.mktemp("smoke-book")
    # Does not raise when a notebook fails: each test then reports what it finds (the failing
    # notebook's own test names it); the site is still built from the others.
    # Two notebooks at a time (``--jobs 2``; Table 1 first, alone): the smoke notebooks are small,
    # so kernel start-up and imports dominate and overlap well (2-core machine: 184 s instead of
    # about 280 s one at a time); it also runs ``--jobs`` on the real book in every CI run.
    reproduce("smoke", out=out, progress=False, jobs=2)
    return out
