"""The CPU allocator setting: applied once on glibc, skipped when the user opted out."""

from __future__ import annotations

import sys

import pytest

from paper_code import runtime


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(runtime, "_done", False)
    for var in ("PAPER_CODE_NO_MALLOPT", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_opt_out_and_user_settings_are_respected(fresh):
    fresh.setenv("PAPER_CODE_NO_MALLOPT", "1")
    assert runtime.tune_cpu_allocator() is False
    fresh.delenv("PAPER_CODE_NO_MALLOPT")
    fresh.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own glibc setting wins
    assert runtime.tune_cpu_allocator() is False
    assert runtime._done is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_applied_once_on_linux(fresh):
    assert runtime.tune_cpu_allocator() is True
    assert runtime._done is True
    fresh.setenv("PAPER_CODE_NO_MALLOPT", "1")
    assert runtime.tune_cpu_allocator() is True  # already applied in this process
