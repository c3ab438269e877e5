"""Medical datasets (App. E) on generated miniature trees: Chest X-ray and Kvasir v2 layouts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from paper_code.data import DATASETS, load_dataset
from paper_code.data.medical import (
    CHESTXRAY_CLASSES,
    KVASIR_CLASSES,
    DatasetLayoutError,
    kvasir_split,
)

CHEST_COUNTS = {"train": 4, "val": 2, "test": 2}  # readable images per class
KVASIR_PER_CLASS = 5


def _image(path, value, mode="L", size=(40, 32), seed=0):
    rng = np.random.default_rng(seed)
    arr = np.clip(value + rng.normal(0, 10, size[::-1]), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, mode="L")
    if mode == "RGB":
        im = Image.merge("RGB", (im, im.point(lambda v: v // 2), im.point(lambda v: 255 - v)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def make_chest_tree(base, nested=True):
    """``base/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}``: greyscale JPEGs (NORMAL dark,
    PNEUMONIA bright), one RGB PNG, one corrupt file, a ``.DS_Store``, and (``nested``) a
    duplicate ``chest_xray/chest_xray`` tree plus ``__MACOSX``. Returns the chest_xray folder."""
    top = base / "chest_xray"
    for tree in [top, top / "chest_xray"] if nested else [top]:
        for split, n in CHEST_COUNTS.items():
            for lab, cls in enumerate(CHESTXRAY_CLASSES):
                for i in range(n):
                    value = 60 + 130 * lab
                    _image(tree / split / cls / f"IM-{i:04d}.jpeg", value, seed=i + 10 * lab)
    _image(top / "train" / "PNEUMONIA" / "rgb.png", 190, mode="RGB")  # an extra RGB image
    _corrupt(top / "train" / "NORMAL" / "broken.jpeg")
    (top / "train" / ".DS_Store").write_bytes(b"\0")
    if nested:
        (base / "__MACOSX").mkdir()
    return top


def make_kvasir_tree(base):
    """``base/kvasir-dataset-v2/<8 classes>/*.jpg``, 5 images per class; one greyscale image and
    one extra corrupt file in ``esophagitis``. Returns the class folders' parent."""
    top = base / "kvasir-dataset-v2"
    for k, cls in enumerate(KVASIR_CLASSES):
        for i in range(KVASIR_PER_CLASS):
            mode = "L" if (k, i) == (0, 0) else "RGB"
            _image(top / cls / f"{i:02d}-{cls[:3]}.jpg", 20 + 30 * k, mode=mode, seed=i)
    _corrupt(top / "esophagitis" / "zz-broken.jpg")
    return top


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    return make_chest_tree(tmp_path_factory.mktemp("chest"))


@pytest.fixture()
def kvasir_root(tmp_path):
    return make_kvasir_tree(tmp_path / "data")


def test_registered():
    assert {"chestxray", "kvasir"} <= set(DATASETS)


def test_chestxray_counts_items_and_no_double_counting(chest, caplog):
    with caplog.at_level(logging.WARNING, logger="paper_code.data"):
        train = load_dataset("chestxray", root=chest.parent, split="train")
    assert len(train) == 2 * CHEST_COUNTS["train"] + 1  # + the RGB png; corrupt file skipped
    assert [r for r, _ in train.skipped] == [str(chest / "train" / "NORMAL" / "broken.jpeg")]
    assert "broken.jpeg" in caplog.text
    assert all("chest_xray/chest_xray" not in p.as_posix() for p in train.paths)
    assert train.class_counts() == {"NORMAL": 4, "PNEUMONIA": 5}
    assert train.categories == ["NORMAL", "PNEUMONIA"] == train.classes
    for split in ("val", "test"):  # root = the chest_xray folder itself gives the same files
        a = load_dataset("chestxray", root=chest, split=split)
        b = load_dataset("chestxray", root=chest.parent, split=split)
        assert a.ids == b.ids and len(a) == 2 * CHEST_COUNTS[split]
        assert a.labels == [0] * CHEST_COUNTS[split] + [1] * CHEST_COUNTS[split]
    item = train[0]
    assert set(item) >= {"image", "label", "boxes", "id", "path"}
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert torch.equal(item["image"][0], item["image"][1])  # greyscale -> 3 equal channels
    assert item["boxes"].shape == (0, 4) and item["label"] == 0
    assert item["id"] == "train/NORMAL/IM-0000" and item["path"].endswith("IM-0000.jpeg")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("chestxray", root=chest, split="validation")


def test_chestxray_only_nested_tree(tmp_path):
    """An outer folder whose chest_xray holds only the nested copy is still found, once."""
    outer = tmp_path / "download"
    inner = outer / "chest_xray" / "chest_xray"
    for split in CHEST_COUNTS:
        for cls in CHESTXRAY_CLASSES:
            _image(inner / split / cls / "a.jpeg", 100)
    ds = load_dataset("chestxray", root=outer, split="test")
    assert len(ds) == 2 and ds.root == inner


def test_kvasir_split_full_size_is_6000_1000_1000():
    files = {c: [f"{i:04d}.jpg" for i in range(1000)] for c in KVASIR_CLASSES}
    split = kvasir_split(files, seed=0)
    assert {s: len(v) for s, v in split.items()} == {"train": 6000, "val": 1000, "test": 1000}
    for cls in KVASIR_CLASSES:
        per = {s: sum(n.startswith(cls + "/") for n in v) for s, v in split.items()}
        assert per == {"train": 750, "val": 125, "test": 125}
    names = [n for v in split.values() for n in v]
    assert len(set(names)) == 8000
    assert kvasir_split(files, seed=0) == split  # deterministic
    assert kvasir_split(files, seed=1)["test"] != split["test"]
    shuffled = {c: list(reversed(v)) for c, v in reversed(list(files.items()))}
    assert kvasir_split(shuffled, seed=0) == split  # independent of listing order


def test_kvasir_split_stratified_persisted_and_deterministic(kvasir_root, tmp_path, caplog):
    index = tmp_path / "results"
    sets = {
        s: load_dataset("kvasir", root=kvasir_root.parent, split=s, index_dir=index)
        for s in ("train", "val", "test")
    }
    split_file = index / "kvasir-split-seed0.json"
    assert split_file.is_file() and sets["test"].split_file == split_file
    stored = json.loads(split_file.read_text())
    # 5 images per class -> 3/1/1; esophagitis has a 6th (corrupt) file -> 4/1/1, then skipped
    assert stored["counts"] == {"train": 25, "val": 8, "test": 8}
    assert {s: len(d) for s, d in sets.items()} == {"train": 24, "val": 8, "test": 8}
    assert sum(len(d.skipped) for d in sets.values()) == 1
    for name, ds in sets.items():
        assert ds.categories == list(KVASIR_CLASSES)
        assert sorted(set(ds.labels)) == list(range(8)), name  # every class in every split
    ids = [set(d.ids) for d in sets.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(set.union(*ids)) == 8 * KVASIR_PER_CLASS
    grey_file = kvasir_root / "dyed-lifted-polyps" / "00-dye.jpg"
    (grey,) = [d[i] for d in sets.values() for i, p in enumerate(d.paths) if p == grey_file]
    assert grey["image"].shape == (3, 224, 224) and torch.equal(grey["image"][0], grey["image"][2])
    assert grey["id"] == "dyed-lifted-polyps/00-dye" and grey["label"] == 0

    # a rerun (root = the class folders' parent itself) reads the same file: same split
    again = load_dataset("kvasir", root=kvasir_root, split="test", index_dir=index)
    assert again.ids == sets["test"].ids
    # files added later do not move the persisted split (warning), a fresh file would include them
    _image(kvasir_root / "polyps" / "new.jpg", 50, mode="RGB")
    with caplog.at_level(logging.WARNING, logger="paper_code.data"):
        for s in ("train", "val", "test"):
            assert load_dataset("kvasir", root=kvasir_root, split=s, index_dir=index).ids == (
                sets[s].ids
            )
    assert "another file list" in caplog.text
    assert json.loads(split_file.read_text()) == stored
    # the same seed in another place gives the same split of the original files
    (kvasir_root / "polyps" / "new.jpg").unlink()
    other = tmp_path / "other.json"
    fresh = load_dataset("kvasir", root=kvasir_root, split="test", split_file=other)
    assert fresh.ids == sets["test"].ids
    with pytest.raises(ValueError, match="seed 0"):
        load_dataset("kvasir", root=kvasir_root, split="test", split_file=other, seed=3)
    seed3 = load_dataset("kvasir", root=kvasir_root, split="test", seed=3, index_dir=index)
    assert seed3.ids != sets["test"].ids and (index / "kvasir-split-seed3.json").is_file()


def test_bad_roots_say_what_was_expected_and_found(chest, kvasir_root, tmp_path):
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("chestxray", root=kvasir_root.parent, split="test", index_dir=tmp_path)
    msg = str(err.value)
    assert "Expected chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}" in msg
    assert "kvasir-dataset-v2/" in msg and 'load_dataset("kvasir"' in msg
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset("kvasir", root=chest.parent, split="test", index_dir=tmp_path)
    msg = str(err.value)
    assert "8 class folders" in msg and "dyed-lifted-polyps" in msg
    assert "chest_xray/" in msg and 'load_dataset("chestxray"' in msg
    partial = tmp_path / "partial"
    for cls in KVASIR_CLASSES[:3]:
        (partial / cls).mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"has 3 of the 8 class folders; missing"):
        load_dataset("kvasir", root=partial, index_dir=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match=r"Found in .*empty: \(empty\)"):
        load_dataset("chestxray", root=empty)
    with pytest.raises(FileNotFoundError):
        load_dataset("chestxray", root=tmp_path / "missing")
    assert not list(tmp_path.glob("*.json"))  # nothing written for a bad root
