"""CONTRIBUTING.md's recipe for a new method works as written: one function with the registry's
signature, one decorator, and the method reaches Table 1 of the smoke book (through the plugins
parameter, as a module of the package would through its import), with finite values, marked as
not in the paper; the defaults come from its signature."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from paper_code.book.runner import run_notebook

CONTRIBUTING = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"

THROWAWAY = '''
"""A throwaway CAM written by following CONTRIBUTING.md: the channel mean of the layer."""

import torch
import torch.nn.functional as F

from paper_code.methods.hooks import forward_features
from paper_code.methods.maps import normalize_range
from paper_code.methods.registry import register


@register("meancam", paper_name="Mean-CAM", kind="cam", needs_layer=True, families=("cnn",))
def meancam(model, images, target, layer, *, power: float = 1.0):
    """The mean of the layer's feature maps, to a power, upsampled and range-normalized."""
    feats, _ = forward_features(model, images, layer)
    raw = feats.clamp(min=0).mean(1, keepdim=True) ** power
    up = F.interpolate(raw, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return normalize_range(up)
'''


def test_contributing_names_the_places() -> None:
    text = CONTRIBUTING.read_text()
    for place in ("paper_code/methods/", "@register(", "metrics/base.py", "PROTOCOL_OPTIONS",
                  "book/<name>.md", "PAPER_ORDER", "write_toc", "tests/test_layers.py"):  # fmt: skip
        assert place in text, place


def test_a_new_method_reaches_table1_of_the_smoke_book(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "throwaway_cam.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the notebook's kernel imports it
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "book"
    run_notebook(
        "table1",
        {"plugins": ["throwaway_cam"], "methods": ["gradcam", "meancam"], "n_images": 2,
         "repeats": 1, "output_dir": str(out), "cache_dir": str(out / "cache")},
        out / "nb",
        profile="smoke",
    )  # fmt: skip
    rows = pd.read_csv(out / "table1_rows.csv")
    mean = rows[rows["method"] == "meancam"]
    assert len(mean) == 2 and mean[["AD", "AG", "AI"]].notna().all().all()
    summary = pd.read_csv(out / "table1_summary.csv")
    assert "Mean-CAM" in set(summary["method"])
    page = (out / "nb" / "table1.ipynb").read_text()
    assert "Mean-CAM (not in the paper)" in page
    import throwaway_cam  # noqa: F401  (registers it here too)

    from paper_code.methods import METHODS

    assert dict(METHODS["meancam"].defaults) == {"power": 1.0}
    del METHODS["meancam"]
