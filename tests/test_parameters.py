"""Parameters of a run reach the pages that declare them, and only them: a typo is an error, not a
silent default; `weights` is read in one place and reaches every page; `methods` decides every row
a page computes (Table 1's run-to-run `repeats` included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paper_code import experiments as ex
from paper_code.book.profiles import REQUIRED_PARAMETERS, load_profile
from paper_code.book.reproduce import reproduce
from paper_code.book.runner import _absolute, check_parameters, declared_parameters, run_notebook
from paper_code.book.toc import toc_notebooks


def test_a_parameter_no_page_declares_is_refused_with_the_valid_ones() -> None:
    declared = {"fig1": {"models", "iterations", "lr"}, "table3": {"models", "id_step"}}
    check_parameters({"iterations": 5, "id_step": 12544}, declared)  # each declared somewhere
    check_parameters({"compile_evaluation": True}, declared)  # a process setting: always valid
    with pytest.raises(ValueError) as err:
        check_parameters({"itterations": 5, "models": ["tiny"]}, declared)
    msg = str(err.value)
    assert "'itterations'" in msg and "valid: compile_evaluation, id_step, iterations, lr" in msg
    assert "\n" not in msg


def test_reproduce_and_run_refuse_a_typo_before_any_work(tmp_path: Path) -> None:
    """The issue's example: ``reproduce --profile smoke --only fig1 -p itterations 5`` ran and
    reported success with the default iterations. Now both entry points refuse it, and the same
    way; nothing is executed (no notebook folder is written)."""
    with pytest.raises(ValueError, match="'itterations'.*valid:.*iterations"):
        reproduce("smoke", out=tmp_path / "r", only=["fig1"], parameters={"itterations": 5})
    with pytest.raises(ValueError, match="'itterations'.*valid:.*iterations"):
        run_notebook("fig1", {"itterations": 5}, tmp_path / "n", profile="smoke")
    assert not (tmp_path / "r" / "notebooks").exists() and not (tmp_path / "n").exists()
    res = subprocess.run(
        [sys.executable, "-m", "paper_code", "reproduce", "--profile", "smoke", "--only", "fig1",
         "--out", str(tmp_path / "c"), "-p", "itterations", "5"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "unknown parameter(s) 'itterations'" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("parameter", ["weights", "cam_layers"])
def test_every_page_declares_the_per_model_parameters_and_every_profile_sets_them(
    parameter: str,
) -> None:
    assert parameter in REQUIRED_PARAMETERS
    declared = declared_parameters(toc_notebooks())
    assert all(parameter in d for d in declared.values()), [
        n for n, d in declared.items() if parameter not in d
    ]
    for name in ("sample", "smoke", "imagenet-1k", "imagenet", "rehearsal"):
        assert parameter in load_profile(name)["parameters"], name


def test_cam_layers_moves_the_layer_of_every_cam_method_and_its_keys(tmp_path: Path) -> None:
    """``cam_layers: {model: layer}`` is the layer of that network's CAM methods on every page (it
    is read in one place, :func:`experiments.setup`): the maps change and so do their keys, so a
    map of the paper's layer is never reused for another; a wrong name is a one-line error."""
    from paper_code.experiments.keys import map_key
    from paper_code.methods import explain

    base = {"models": ["tiny"], "dataset": "sample", "n_images": 2, "output_dir": str(tmp_path)}
    default, data, _, _ = ex.setup(base, "tiny")
    moved, _, _, _ = ex.setup({**base, "cam_layers": {"tiny": "features.4"}}, "tiny")
    assert (default.target_layer_name, moved.target_layer_name) == ("features.7", "features.4")
    assert map_key(default, "gradcam", "ground_truth", {}) != map_key(
        moved, "gradcam", "ground_truth", {}
    )
    x = data[0]["image"][None]
    a, b = explain("gradcam", default, x, [1]), explain("gradcam", moved, x, [1])
    assert not bool((a - b).abs().max() < 1e-3), "the maps did not move with the layer"
    for bad, message in (({"tiny": "features.99"}, "no layer 'features.99'"),
                         ({"tinny": "features.4"}, r"cam_layers names unknown model\(s\) tinny; valid: ")):  # fmt: skip
        with pytest.raises(ValueError, match=message) as err:
            ex.setup({**base, "cam_layers": bad}, "tiny")
        assert "\n" not in str(err.value)


def test_every_profile_parameter_is_declared_by_some_page() -> None:
    """A profile key that no page declares would be dropped without a word (a typo in a profile)."""
    declared = declared_parameters(toc_notebooks())
    valid = set().union(*declared.values()) | {"compile_evaluation"}
    for name in ("sample", "smoke", "imagenet-1k", "imagenet", "rehearsal"):
        prof = load_profile(name)
        keys = set(prof["parameters"]).union(*(set(v) for v in prof["notebooks"].values()))
        assert keys <= valid, f"{name}: {sorted(keys - valid)} declared by no page"
        for page, over in prof["notebooks"].items():
            assert set(over) <= declared[page], f"{name}.{page}: {set(over) - declared[page]}"


def test_parameter_names_mean_one_thing_across_pages() -> None:
    """``checkpoints`` meant fine-tuned checkpoints on the medical pages and iteration budgets on
    Fig. A.5: a ``-p checkpoints`` for the medical tables reached Fig. A.5 too."""
    declared = declared_parameters(toc_notebooks())
    assert "checkpoints" not in declared["figA5"] and "budgets" in declared["figA5"]


def test_weights_are_read_in_one_place(tmp_path: Path) -> None:
    params = {"weights": {"resnet50": "/w/r50.pth", "vit_base_patch16_224": "random"}}
    assert ex.model_weights(params, "resnet50") == "/w/r50.pth"
    assert ex.model_weights(params, "vgg16_bn") is None  # not named: the published weights
    assert ex.model_weights({"weights": None}, "resnet50") is None
    with pytest.raises(ValueError, match="unknown model.*resnet5 .*valid: .*resnet50"):
        ex.model_weights({"weights": {"resnet5 ": "/w"}}, "resnet50")
    with pytest.raises(ValueError, match="weights must map model names to values"):
        ex.model_weights({"weights": "/w/r50.pth"}, "resnet50")


def test_weight_paths_become_absolute_for_the_kernel(tmp_path: Path, monkeypatch) -> None:
    """A notebook's kernel runs in the output folder: a relative weights path must be resolved
    against the caller's folder before injection; ``random`` is a keyword, not a path."""
    monkeypatch.chdir(tmp_path)
    out = _absolute({"weights": {"resnet50": "w/r50.pth", "vgg16_bn": "random"}, "root": None})
    assert out["weights"] == {"resnet50": str(tmp_path / "w" / "r50.pth"), "vgg16_bn": "random"}
    assert out["root"] is None and "medical_root" not in out


def test_weights_file_reaches_the_page_and_its_keys(tmp_path: Path) -> None:
    """``-p weights`` on a page that declares it: the model loads that file (its content hash is in
    the page's provenance and in its result keys, which differ from the published weights')."""
    from paper_code.models import save_random_weights

    path = save_random_weights("efficientnet_lite0", tmp_path / "lite0.pth", seed=1)
    common = {"models": ["efficientnet_lite0"], "n_images": 2, "methods": ["fakecam", "gradcam"],
              "iterations": 2, "batch_size": 2, "repeats": 1}  # fmt: skip
    for name, weights in (("file", {"efficientnet_lite0": str(path)}), ("default", None)):
        out = tmp_path / name
        run_notebook("table1", {**common, "weights": weights, "output_dir": str(out),
                                "cache_dir": str(out / "cache")}, out / "nb", profile="smoke")  # fmt: skip
    import json

    from paper_code.models import weights_identity

    sha = weights_identity(path)
    prov = json.loads((tmp_path / "file" / "table1_provenance.json").read_text())
    assert prov["weights"] == {"efficientnet_lite0": sha}
    keys = json.loads((tmp_path / "file" / "table1_configs.json").read_text())
    default = json.loads((tmp_path / "default" / "table1_configs.json").read_text())
    assert {k["maps"]["weights"] for k in keys.values()} == {sha}
    assert {k["maps"]["weights"] for k in default.values()} == {"default"}
    assert not set(keys) & set(default)


def test_methods_decide_every_row_repeats_included(tmp_path: Path) -> None:
    """``-p methods '[fakecam, gradcam]'`` on Table 1 with ``repeats`` 2 ran Opti-CAM anyway (for
    its run-to-run spread) and added its row."""
    out = tmp_path / "t1"
    run_notebook(
        "table1",
        {"methods": ["fakecam", "gradcam"], "repeats": 2, "n_images": 2, "iterations": 2,
         "output_dir": str(out), "cache_dir": str(out / "cache")},
        out / "nb", profile="smoke",
    )  # fmt: skip
    rows = pd.read_csv(out / "table1_rows.csv")
    assert set(rows["method"]) == {"fakecam", "gradcam"}
