"""Fine-tuning recipe (App. E.2) with the tiny CNN on generated miniature medical trees."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from test_medical import make_chest_tree, make_kvasir_tree

import paper_code as pc
from paper_code.cli import main
from paper_code.finetune import (
    PAPER_STAGE1_LR,
    FinetuneConfig,
    checkpoint_info,
    evaluate,
    finetune,
    load_finetuned,
)

FAST = {"batch_size": 4, "num_workers": 0, "progress": False}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    return make_chest_tree(tmp_path_factory.mktemp("chest"), nested=True)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_defaults_follow_the_paper(tmp_path):
    cfg = FinetuneConfig(dataset="kvasir", model="vgg16_bn", root=str(tmp_path))
    assert cfg.stage1_lr == 5e-3 and cfg.stage2_lr == 1e-5 and cfg.stage2_epochs == 50
    assert cfg.momentum == 0.9
    assert FinetuneConfig(dataset="kvasir", model="resnet50", root="x").stage1_lr == 1e-4
    assert FinetuneConfig(dataset="chestxray", model="resnet50", root="x").stage1_lr == 1e-3
    assert PAPER_STAGE1_LR[("chestxray", "vgg16_bn")] == 1e-3
    with pytest.raises(ValueError, match="augment"):
        FinetuneConfig(dataset="kvasir", model="tiny", root="x", augment="mixup")


def test_stage1_trains_only_the_new_final_layer(chest, tmp_path):
    out = tmp_path / "ckpt"
    finetune(
        dataset="chestxray",
        model="tiny",
        root=str(chest),
        out=str(out),
        stage1_epochs=1,
        stage2_epochs=0,
        stage1_lr=0.5,
        **FAST,
    )
    torch.manual_seed(0)  # the run's seed: same new head before training
    before = pc.load_model("tiny", num_classes=2, fuse=False).net.state_dict()
    after = _state(out / "chestxray-tiny-last.pt")["state_dict"]
    assert after["fc.weight"].shape == (2, 16)
    assert set(before) == set(after)
    for name, value in before.items():
        if name.startswith("fc."):
            assert not torch.equal(value, after[name]), name
        else:  # convolutions, batch-norm weights and running statistics unchanged
            assert torch.equal(value, after[name]), name


def test_a_few_steps_lower_the_loss(chest, tmp_path):
    out = tmp_path / "ckpt"
    summary = finetune(
        dataset="chestxray",
        model="tiny",
        root=str(chest),
        out=str(out),
        stage1_epochs=1,
        stage2_epochs=2,
        stage1_lr=0.05,
        stage2_lr=0.01,
        augment="crop-flip",
        **FAST,
    )
    train = pc.load_dataset("chestxray", root=chest, split="train")
    torch.manual_seed(0)
    initial = pc.load_model("tiny", num_classes=2, fuse=False)
    tuned = pc.load_model("tiny", weights=summary["checkpoint"], fuse=False)
    loss0, _ = evaluate(initial, train)
    loss1, _ = evaluate(tuned, train)
    assert loss1 < loss0 - 0.02
    with open(out / "chestxray-tiny.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "1"), ("2", "1"), ("2", "2")]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert {"loss", "accuracy"} <= {k.split("_")[-1] for k in rows[0]}


def test_resume_after_interruption_matches_an_uninterrupted_run(chest, tmp_path):
    opts = dict(
        dataset="chestxray",
        model="tiny",
        root=str(chest),
        stage1_epochs=2,
        stage2_epochs=2,
        stage1_lr=0.05,
        stage2_lr=0.01,
        augment="flip",
        **FAST,
    )
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"

    def snapshot(row):  # keep the reference checkpoint at the point where the other run stops
        if (row["stage"], row["epoch"]) == (2, 1):
            shutil.copy(ref_dir / "chestxray-tiny-last.pt", tmp_path / "ref-2-1.pt")

    reference = finetune(out=str(ref_dir), on_epoch_end=snapshot, **opts)

    def interrupt(row):
        if (row["stage"], row["epoch"]) == (2, 1):
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(out=str(run_dir), on_epoch_end=interrupt, **opts)
    saved = _state(run_dir / "chestxray-tiny-last.pt")
    assert (saved["stage"], saved["epoch"]) == (2, 1)
    expected = _state(tmp_path / "ref-2-1.pt")
    momentum = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    assert momentum and all(m.abs().sum() > 0 for m in momentum)
    for k, s in saved["optimizer"]["state"].items():
        assert torch.equal(
            s["momentum_buffer"], expected["optimizer"]["state"][k]["momentum_buffer"]
        )

    seen = []
    loaded = []
    original = torch.optim.SGD.load_state_dict

    def spy(self, state):
        loaded.append(state)
        return original(self, state)

    torch.optim.SGD.load_state_dict = spy
    try:
        resumed = finetune(out=str(run_dir), on_epoch_end=seen.append, **opts)
    finally:
        torch.optim.SGD.load_state_dict = original
    assert [(r["stage"], r["epoch"]) for r in seen] == [(2, 2)]  # continues after the saved epoch
    assert len(loaded) == 1 and loaded[0]["state"].keys() == saved["optimizer"]["state"].keys()
    final, ref = _state(run_dir / "chestxray-tiny.pt"), _state(ref_dir / "chestxray-tiny.pt")
    for name, value in ref["state_dict"].items():
        assert torch.equal(value, final["state_dict"][name]), name
    assert [r["train_loss"] for r in final["history"]] == [r["train_loss"] for r in ref["history"]]
    assert resumed["test_accuracy"] == reference["test_accuracy"]
    # a different recipe in the same folder is refused rather than mixed in
    with pytest.raises(ValueError, match="other settings"):
        finetune(out=str(run_dir), **{**opts, "stage2_lr": 0.1})


def test_checkpoint_loads_back_with_class_names_and_same_logits(chest, tmp_path, capsys):
    out = tmp_path / "ckpt"
    summary = finetune(
        dataset="chestxray",
        model="tiny",
        root=str(chest),
        out=str(out),
        stage1_epochs=1,
        stage2_epochs=1,
        stage2_lr=0.01,
        select="best",
        **FAST,
    )
    text = capsys.readouterr().out
    assert "test accuracy, chestxray tiny (4 images)" in text and "paper n/a" in text
    path = out / "chestxray-tiny.pt"
    assert summary["checkpoint"] == str(path) and summary["selected"] == "best"
    info = checkpoint_info(path)
    assert info["categories"] == ["NORMAL", "PNEUMONIA"] and info["arch"] == "tiny"
    assert info["test_accuracy"] == summary["test_accuracy"]

    ck = _state(path)
    reference = pc.load_model("tiny", weights="random", num_classes=2, fuse=False)
    reference.net.load_state_dict(ck["state_dict"])
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(x)
        model = pc.load_model("tiny", weights=str(path), num_classes=2, fuse=False)
        assert model.categories == ["NORMAL", "PNEUMONIA"] and model.num_classes == 2
        assert torch.equal(model(x), want)
        fused = pc.load_model("tiny", weights=str(path))  # inference form, as the notebooks use
        assert torch.allclose(fused(x), want, atol=1e-5)
        assert torch.equal(load_finetuned(path, fuse=False)(x), want)
    assert not model.training
    with pytest.raises(ValueError, match="2 classes"):
        pc.load_model("tiny", weights=str(path), num_classes=8)
    with pytest.raises(ValueError, match="fine-tuned 'tiny'"):
        pc.load_model("resnet50", weights=str(path))


def test_cli_finetune_kvasir(tmp_path, capsys):
    root = make_kvasir_tree(tmp_path / "data")
    out = tmp_path / "ckpt"
    args = ["finetune", "--dataset", "kvasir", "--model", "tiny", "--root", str(root.parent)]
    args += ["--out", str(out), "--stage1-epochs", "1", "--stage2-epochs", "1"]
    args += ["--batch-size", "8", "--num-workers", "0", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "test accuracy, kvasir tiny (8 images)" in text
    assert (out / "kvasir-split-seed0.json").is_file()
    for suffix in ("-last.pt", "-best.pt", ".pt", ".csv", ".json"):
        assert (out / f"kvasir-tiny{suffix}").is_file(), suffix
    model = pc.load_model("tiny", weights=str(out / "kvasir-tiny.pt"))
    assert model.num_classes == 8 and model.categories[2] == "esophagitis"
    assert main(args) == 0  # a finished run: nothing to train, same export
    assert "resuming after stage 2 epoch 1" in capsys.readouterr().err
