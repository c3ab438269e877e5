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


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_is_stable_over_many_batches():
    """The long run, scaled down: Opti-CAM plus the insertion/deletion forwards on
    a small CNN over 120 batches; the process's resident memory after the warm-up batches does not
    grow (a leak of one map or graph per batch would add megabytes here)."""
    import torch
    from torch import nn

    from paper_code import explain
    from paper_code.metrics import insertion_deletion

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(8), nn.Flatten(),
        nn.Linear(8 * 64, 10),
    ).eval()  # fmt: skip
    images = torch.rand(4, 3, 32, 32)
    classes = torch.tensor([0, 1, 2, 3])
    rss = []
    for step in range(120):
        maps = explain("opticam", model, images, classes, layer="1", iterations=5, progress=False)
        insertion_deletion(model, images, maps, classes, step=128)
        if step in (20, 119):
            rss.append(_rss_mb())
    assert rss[1] - rss[0] < 8, f"resident memory grew from {rss[0]:.0f} to {rss[1]:.0f} MB"
