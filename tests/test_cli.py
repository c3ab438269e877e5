"""The command line: explain one image end to end, and clear errors."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paper_code", *args], capture_output=True, text=True, timeout=300
    )


def test_explain_writes_overlay_and_map(tmp_path):
    img = tmp_path / "in.png"
    Image.new("L", (300, 260), 128).save(img)  # grayscale input is converted to RGB
    out, raw = tmp_path / "overlay.png", tmp_path / "map.pt"
    res = run(
        "explain", str(img), "--model", "tiny", "-o", "iterations", "3", "--out", str(out),
        "--save-map", str(raw), "--quiet", "--target", "4",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "predicted:" in res.stdout and "explained: 4 class_4" in res.stdout
    assert Image.open(out).size == (224, 224)
    import torch

    m = torch.load(raw)
    assert m.shape == (1, 224, 224) and 0 <= m.min() and m.max() <= 1


def test_explain_errors_are_messages_not_tracebacks(tmp_path):
    res = run("explain", str(tmp_path / "missing.jpg"), "--model", "tiny")
    assert res.returncode == 2 and "missing.jpg" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = run("explain", str(bad), "--model", "tiny")
    assert res.returncode == 2 and "bad.jpg" in res.stderr and "Traceback" not in res.stderr
    res = run("explain", str(bad), "--method", "nope")
    assert res.returncode == 2 and "unknown method 'nope'" in res.stderr and "opticam" in res.stderr
    # Options come from the method's signature: a wrong one is named with the valid ones, at once.
    res = run("explain", str(bad), "--method", "scorecam", "-o", "iterations", "3")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "scorecam has no option iterations; its options: batch_size, align_corners" in res.stderr
    res = run("list", "--options")
    assert res.returncode == 0 and "iterations=None, lr=0.1, objective='mask'" in res.stdout
