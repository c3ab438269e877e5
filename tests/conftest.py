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
    from paper_code.book.reproduce import reproduce

    out = tmp_path_factory.mktemp("smoke-book")
    # Does not raise when a notebook fails: each test then reports what it finds (the failing
    # notebook's own test names it); the site is still built from the others.
    # Two notebooks at a time (``--jobs 2``; Table 1 first, alone): the smoke notebooks are small,
    # so kernel start-up and imports dominate and overlap well (2-core machine: 184 s instead of
    # about 280 s one at a time); it also runs ``--jobs`` on the real book in every CI run.
    reproduce("smoke", out=out, progress=False, jobs=2)
    return out


@pytest.fixture(scope="session")
def rehearsal_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``rehearsal`` profile run once for the suite (``python -m paper_code rehearse``): every
    page of the GPU profiles on ResNet50, VGG16-BN, ViT-B/16 and DeiT-B/16 with random weights
    written to files, on a synthetic ILSVRC2012 folder. The torch and Hugging Face caches point at
    empty folders and the hub is offline, so a page that tried to download weights instead of
    using the files would fail. ``PAPER_CODE_REHEARSAL_BOOK`` points at an existing run instead."""
    prebuilt = os.environ.get("PAPER_CODE_REHEARSAL_BOOK")
    if prebuilt:
        return Path(prebuilt)
    from paper_code.book.rehearsal import rehearse
    from paper_code.runtime import environment

    out = tmp_path_factory.mktemp("rehearsal-book")
    empty = out / "empty-caches"  # tests/test_rehearsal.py checks that nothing was written here
    env = {"TORCH_HOME": str(empty / "torch"), "HF_HOME": str(empty / "hf"),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    with environment(env):
        rehearse(out=out, progress=False, jobs=2)
    return out
