"""Methods and networks from outside the package: paper_code.register, the entry-point group and
the plugins parameter, timm:/hf: networks, and python -m paper_code evaluate; every bad input
gives a one-line error naming the problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import paper_code as pc
from paper_code.methods import METHODS, PluginError, load_plugins
from paper_code.methods import plugins as plugins_mod


@pytest.fixture
def clean_registry():
    """Methods registered by a test are removed afterwards (the registry is process-wide)."""
    before, modules = dict(METHODS), set(sys.modules)
    loaded = set(plugins_mod._LOADED_MODULES)
    yield
    for name in set(METHODS) - set(before):
        del METHODS[name]
    plugins = ("paper_code.examples", "myplug", "epplug", "broken")
    for mod in set(sys.modules) - modules:  # a plugin module registers again when re-imported
        if mod.startswith(plugins):
            del sys.modules[mod]
    plugins_mod._LOADED_MODULES.intersection_update(loaded)


def _bump(model, images, target, layer=None, *, width: float = 0.5):
    b, _, h, w = images.shape
    return torch.full((b, 1, h, w), width)


def test_register_a_method_and_explain_with_it(clean_registry) -> None:
    pc.register("half", paper_name="Half", kind="sanity", needs_layer=False)(_bump)
    spec = METHODS["half"]
    assert not spec.builtin and spec.paper_name == "Half" and dict(spec.defaults) == {"width": 0.5}
    x = torch.rand(2, 3, 224, 224)
    maps = pc.explain("half", pc.load_model("tiny"), x, [1, 2], width=0.25)
    assert torch.equal(maps, torch.full((2, 1, 224, 224), 0.25))
    assert pc.methods.PAPER_NAMES["half"] == "Half"  # the live mapping sees it


def test_register_refuses_clashes_and_wrong_signatures(clean_registry) -> None:
    with pytest.raises(PluginError, match="'gradcam' clashes with the built-in method"):
        pc.register("gradcam")(_bump)
    with pytest.raises(PluginError, match="label 'Opti-CAM' is the built-in 'opticam'"):
        pc.register("mine", paper_name="Opti-CAM")(_bump)
    with pytest.raises(PluginError, match=r"must take \(model, images, target, layer.*takes \(x\)"):
        pc.register("bad")(lambda x: x)


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda x: torch.zeros(x.shape[0], x.shape[-2], x.shape[-1]), "shape .*need \\[2, 1, 224"),
        (lambda x: torch.full((x.shape[0], 1, 224, 224), 2.0), "maps must lie in \\[0, 1\\]"),
        (lambda x: torch.full((x.shape[0], 1, 224, 224), float("nan")), "NaN or infinite"),
        (lambda x: [0.5], "returned list, not a tensor"),
    ],
)
def test_a_plugins_output_is_checked(clean_registry, output, message) -> None:
    def method(model, images, target, layer=None):
        return output(images)

    pc.register("weird", kind="sanity", needs_layer=False)(method)
    with pytest.raises((ValueError, TypeError), match=message):
        pc.explain("weird", pc.load_model("tiny"), torch.rand(2, 3, 224, 224), [0, 1])


def test_plugin_modules_and_entry_points(clean_registry, tmp_path, monkeypatch) -> None:
    """A module named in ``plugins`` registers its methods on import; an installed package's entry
    point of the group ``paper_code.methods`` is loaded once per process; a module that does not
    import is one clear error."""
    pkg = tmp_path / "myplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        import torch, paper_code

        @paper_code.register("flat_plugin", kind="sanity", needs_layer=False)
        def flat_plugin(model, images, target, layer=None):
            return torch.ones(images.shape[0], 1, *images.shape[-2:]) * 0.5
    '''))  # fmt: skip
    (tmp_path / "epplug.py").write_text(textwrap.dedent('''
        import torch, paper_code

        @paper_code.register("ep_plugin", kind="sanity", needs_layer=False)
        def ep_plugin(model, images, target, layer=None):
            return torch.zeros(images.shape[0], 1, *images.shape[-2:])
    '''))  # fmt: skip
    dist = tmp_path / "epplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[paper_code.methods]\nmine = epplug\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins_mod, "_ENTRY_POINTS_LOADED", False)
    found = load_plugins(["myplug"])
    assert {"flat_plugin", "ep_plugin"} <= set(found)
    with pytest.raises(PluginError, match=r"^plugin module 'nosuch\.mod' could not be imported: "):
        load_plugins(["nosuch.mod"])
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match="'broken' could not be imported: RuntimeError: boom"):
        load_plugins(["broken"])


def test_plugin_in_the_tables_beside_the_papers_rows(clean_registry) -> None:
    import paper_code.examples.centre_prior  # noqa: F401  (registers "centre_prior")
    from paper_code.experiments.tablerun import methods_not_in_paper, table_methods

    assert methods_not_in_paper() == ["centre_prior"]
    for table in ("table1", "table3", "table4", "tableA7"):
        ids, _ = table_methods(table, "resnet50", "cnn")
        assert ids[-1] == "centre_prior", table
    ids, _ = table_methods("table6", "vgg16", "cnn")  # a study table: Opti-CAM's variants only
    assert "centre_prior" not in ids
    assert "centre_prior" not in table_methods("table1", "resnet50", "cnn", ["gradcam"])[0]


# --------------------------------------------------------------------------- networks


def test_timm_network_with_random_weights_no_download(tmp_path, monkeypatch) -> None:
    """timm CNNs get the CAM layer of timm's last feature stage and their own standardization;
    timm transformers the paper's layer and token reshape. Offline, with the hub cache empty,
    random weights and weights files load; the published weights give the clear error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cnn = pc.load_model("timm:resnet18", weights="random")
    assert (cnn.name, cnn.family, cnn.target_layer_name) == ("timm:resnet18", "cnn", "layer4")
    assert cnn.weights_id == "random" and cnn.categories[1] == "goldfish"
    x = torch.rand(2, 3, 224, 224)
    assert pc.explain("gradcam", cnn, x, [1, 2]).shape == (2, 1, 224, 224)
    vit = pc.load_model("timm:vit_tiny_patch16_224", weights="random")
    assert vit.family == "vit" and vit.target_layer_name == "blocks.11.norm1"
    assert pc.explain("rollout", vit, x, [1, 2]).shape == (2, 1, 224, 224)
    path = tmp_path / "r18.pth"
    torch.save(cnn.net.state_dict(), path)
    again = pc.load_model("timm:resnet18", weights=str(path))
    assert torch.allclose(again(x), cnn(x))  # same weights, same logits (same float ops)
    assert again.weights_id.startswith("sha256:")
    with pytest.raises(pc.models.WeightsUnavailableError, match="timm:resnet18.*weights='random'"):
        pc.load_model("timm:resnet18")


def test_hf_network_from_a_folder_no_download(tmp_path, monkeypatch) -> None:
    """An ``hf:`` network saved with save_pretrained (the hub's offline form): the layer by the
    package's rule (the last spatial layer run once), the image processor's mean and std."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    num_labels=4)  # fmt: skip
    transformers.ResNetForImageClassification(cfg).save_pretrained(tmp_path)
    transformers.ConvNextImageProcessor(image_mean=[0.4] * 3, image_std=[0.2] * 3).save_pretrained(
        tmp_path
    )
    model = pc.load_model(f"hf:{tmp_path}")
    assert model.target_layer_name.endswith("stages.1.layers.0.activation")
    assert model.standardize.mean.flatten().tolist() == pytest.approx([0.4] * 3)
    assert model.num_classes == 4
    x = torch.rand(2, 3, 224, 224)
    assert pc.explain("layercam", model, x, [0, 3]).shape == (2, 1, 224, 224)
    with pytest.raises(pc.models.WeightsUnavailableError, match="hf:nobody/nothing"):
        pc.load_model("hf:nobody/nothing")


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*timm:<model> or hf:"):
        pc.load_model("resnet5")
    with pytest.raises(ValueError, match="unknown model prefix 'tv'"):
        from paper_code.models.external import load_external

        load_external("tv:resnet50")


# --------------------------------------------------------------------------- evaluate


def _folder(tmp_path: Path, n: int = 3) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        a = (torch.rand(40, 60, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(a).resize((300, 200)).save(root / f"img{i}.jpg")
    return root


def test_evaluate_a_folder_of_images(clean_registry, tmp_path) -> None:
    """Your method beside the baselines on a folder of unlabelled images: the predicted class is
    explained; the table, the CSV, the Markdown and the figure are written; a rerun resumes."""
    from paper_code.experiments.evaluate import evaluate

    out = tmp_path / "out"
    args = dict(out=out, baselines=["gradcam"], metrics=["classification", "insertion_deletion"],
                id_step=12544, method_options={"opticam": {"iterations": 2}}, progress=False)  # fmt: skip
    res = evaluate(["paper_code.examples.centre_prior:centre_prior"], "tiny", str(_folder(tmp_path)),
                   **args)  # fmt: skip
    assert set(res.summary["method"]) == {"Centre prior", "Grad-CAM", "Opti-CAM"}
    assert res.summary[["AD", "AG", "AI", "I", "D"]].notna().all().all()
    assert len(res.per_image) == 3 * 3
    assert "predicted class (the images have no labels)" in res.markdown
    assert "| **Centre prior** |" in res.markdown and "## Paired against Opti-CAM" in res.markdown
    assert set(res.verdicts["method"]) == {"Centre prior", "Grad-CAM"}
    for f in res.files.values():
        assert f.exists(), f
    rows = res.files["rows"].read_text()
    again = evaluate(["centre_prior"], "tiny", str(tmp_path / "images"), **args)
    assert res.files["rows"].read_text() == rows  # resumed: nothing recomputed
    assert again.summary.equals(res.summary)


def test_evaluate_errors_are_one_line(tmp_path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "paper_code", "evaluate", *args],
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    cases = [
        (["--method", "nosuch"], "unknown method 'nosuch'; valid methods:"),
        (["--method", "nomod.x:f"], "module 'nomod.x' could not be imported"),
        (["--method", "paper_code.examples.centre_prior:nope"], "has no function 'nope'"),
        (["--method", "gradcam", "--data", str(tmp_path / "none")], "not a folder (or 'sample')"),
        (["--method", "gradcam", "--baselines", "some"], "unknown baselines 'some'; valid: cams"),
        (["--method", "gradcam", "-o", "iterations", "3"], "write METHOD.NAME"),
    ]
    for args, message in cases:
        res = run(*args, "--model", "tiny", "--out", str(tmp_path / "o"))
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
