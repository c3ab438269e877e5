"""Tests for paper_code.data: sample photographs, ILSVRC layout, folders, robust decoding."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from paper_code.data import (
    DATASETS,
    ImageLoadError,
    collate,
    load_batch,
    load_dataset,
    open_rgb,
    resized_size,
    transform_boxes,
)

WNIDS = [f"n{i:08d}" for i in range(1000)]  # stand-in synsets, sorted = class order


def _xml(path, width, height, objects):
    objs = "".join(
        f"<object><name>{w}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for w, b in objects
    )
    path.write_text(
        f"<annotation><filename>{path.stem}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>"
    )


def _image_with_box(width, height, box):
    """Black image with a white rectangle at ``box`` (x0, y0, x1, y1; pixel edges)."""
    arr = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


@pytest.fixture()
def ilsvrc(tmp_path):
    """root/val/*.JPEG, root/bbox/*.xml, root/val/revisited_imagenet_2012_val.csv, synsets."""
    root = tmp_path / "ILSVRC"
    val, bbox = root / "val", root / "bbox"
    val.mkdir(parents=True)
    bbox.mkdir()
    specs = [  # (size, label, white box, xml objects)
        (
            (500, 375),
            3,
            (100, 50, 300, 200),
            [
                (WNIDS[3], (100, 50, 300, 200)),
                (WNIDS[3], (0, 0, 40, 300)),  # outside crop
                (WNIDS[7], (200, 100, 400, 300)),
            ],
        ),  # other class
        ((300, 400), 10, (30, 20, 270, 380), [(WNIDS[10], (30, 20, 270, 380))]),
        ((224, 224), 999, (0, 0, 224, 224), [(WNIDS[999], (10, 20, 30, 40))]),
        ((640, 480), 0, (0, 0, 10, 10), []),
        ((256, 300), 500, (0, 0, 10, 10), [(WNIDS[500], (0, 0, 256, 300))]),
    ]
    rows = ["file_name,label"]
    for i, ((w, h), lab, box, objs) in enumerate(specs, start=1):
        name = f"ILSVRC2012_val_{i:08d}"
        _image_with_box(w, h, box).save(val / f"{name}.JPEG", quality=95)
        if objs or i != 4:
            _xml(bbox / f"{name}.xml", w, h, objs)
        rows.append(f"{name}.JPEG,{lab}")
    (val / "revisited_imagenet_2012_val.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} thing {k}\n" for k, w in enumerate(WNIDS))
    )
    return root, [s[1] for s in specs]


def test_resize_rounding_matches_torchvision():
    for w, h in [
        (500, 375),
        (300, 400),
        (224, 224),
        (333, 257),
        (1000, 257),
        (17, 11),
        (257, 1001),
    ]:
        assert transforms.Resize(256)(Image.new("RGB", (w, h))).size == resized_size(w, h)


def test_imagenet_labels_and_boxes(ilsvrc):
    root, labels = ilsvrc
    ds = load_dataset("imagenet", root=root)
    assert len(ds) == 5 and ds.skipped == []
    assert ds.ids[0] == "ILSVRC2012_val_00000001"
    assert [ds[i]["label"] for i in range(5)] == labels
    it = ds[0]
    assert it["image"].shape == (3, 224, 224)
    # 500x375 -> Resize(256) -> 341x256; crop left round(58.5)=58, top 16.
    # Box (100,50,300,200) -> (100*341/500-58, 50*256/375-16, 300*341/500-58, 200*256/375-16).
    # The box outside the crop and the box of another wnid are dropped.
    expect = torch.tensor(
        [[100 * 0.682 - 58, 50 * 256 / 375 - 16, 300 * 0.682 - 58, 200 * 256 / 375 - 16]]
    )
    torch.testing.assert_close(it["boxes"], expect)
    # the white rectangle drawn at the box lands inside the transformed box
    x0, y0, x1, y1 = it["boxes"][0].round().int().tolist()
    img = it["image"].mean(0)
    assert img[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3].min() > 0.9
    assert img[y1 + 3 :, :].max() < 0.1 and img[:, x1 + 3 :].max() < 0.1
    # portrait 300x400 -> 256x341; left 16, top round(58.5)=58; clipped to [0, 224]
    b = ds[1]["boxes"]
    torch.testing.assert_close(
        b, torch.tensor([[30 * 256 / 300 - 16, 0.0, 270 * 256 / 300 - 16, 224.0]])
    )
    # 224x224 -> 256x256, offset 16: (10,20,30,40) -> (10*8/7-16, ...) = partly clipped
    torch.testing.assert_close(
        ds[2]["boxes"], torch.tensor([[0.0, 20 * 8 / 7 - 16, 30 * 8 / 7 - 16, 40 * 8 / 7 - 16]])
    )
    assert ds[3]["boxes"].shape == (0, 4)  # no XML
    torch.testing.assert_close(ds[4]["boxes"], torch.tensor([[0.0, 0.0, 224.0, 224.0]]))


def test_imagenet_box_helper_and_all_boxes_without_synsets(ilsvrc):
    root, _ = ilsvrc
    (root / "LOC_synset_mapping.txt").unlink()
    ds = load_dataset("imagenet", root=root)
    assert ds.wnids is None
    assert len(ds[0]["boxes"]) == 2  # all objects kept (minus the one outside the crop)
    assert transform_boxes([[0, 0, 10, 10]], 500, 375).shape == (0, 4)


def test_imagenet_label_formats(ilsvrc, tmp_path):
    root, labels = ilsvrc
    (root / "val" / "revisited_imagenet_2012_val.csv").unlink()
    tmp_path = tmp_path / "labels"  # not root/.., where label files are auto-discovered
    tmp_path.mkdir()
    plain = tmp_path / "plain.txt"
    plain.write_text("\n".join(map(str, labels)) + "\n")
    assert load_dataset("imagenet", root=root, labels=plain).labels == labels
    caffe = tmp_path / "val.txt"  # "filename label", no header, shuffled order
    caffe.write_text(
        "".join(f"ILSVRC2012_val_{i:08d}.JPEG {labels[i - 1]}\n" for i in (3, 1, 5, 2, 4))
    )
    assert load_dataset("imagenet", root=root, labels=caffe).labels == labels
    kaggle = tmp_path / "LOC_val_solution.csv"
    kaggle.write_text(
        "ImageId,PredictionString\n"
        + "".join(
            f"ILSVRC2012_val_{i:08d},{WNIDS[lab]} 1 2 3 4\n" for i, lab in enumerate(labels, 1)
        )
    )
    assert load_dataset("imagenet", root=root, labels=kaggle).labels == labels
    # no label file at all -> -1
    assert load_dataset("imagenet", root=root).labels == [-1] * 5


def test_imagenet_wnid_folders(tmp_path):
    root = tmp_path / "imagenet"
    for k, w in enumerate(["n00000002", "n00000001"]):
        (root / "val" / w).mkdir(parents=True)
        Image.new("RGB", (300, 260), (k * 200, 0, 0)).save(
            root / "val" / w / f"ILSVRC2012_val_0000000{k + 1}.JPEG"
        )
    ds = load_dataset("imagenet", root=root)
    assert ds.ids == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]
    assert ds.labels == [1, 0]


def test_imagenet_subset_deterministic(ilsvrc):
    root, labels = ilsvrc
    a = load_dataset("imagenet", root=root, subset=3, seed=0)
    b = load_dataset("imagenet", root=root, subset=3, seed=0)
    c = load_dataset("imagenet", root=root, subset=3, seed=1)
    assert a.ids == b.ids and len(a) == 3
    want = sorted(torch.randperm(5, generator=torch.Generator().manual_seed(0))[:3].tolist())
    assert a.ids == [f"ILSVRC2012_val_{i + 1:08d}" for i in want]
    assert a.labels == [labels[i] for i in want]
    assert a.ids == sorted(a.ids) and c.ids == sorted(c.ids)
    assert len(load_dataset("imagenet", root=root, subset=50)) == 5


def _odd_files(d):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    noise.save(d / "good.jpg", quality=95)
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(200))
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("hello")
    png = d / "truncpng.png"
    noise.save(png)
    png.write_bytes(png.read_bytes()[:3000])
    Image.new("L", (300, 250), 128).save(d / "gray.png")
    rgba = np.zeros((240, 260, 4), np.uint8)
    rgba[..., 0] = 255  # red where opaque, fully transparent elsewhere
    rgba[:120, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.new("LA", (240, 240), (0, 0)).save(d / "la.png")
    Image.new("CMYK", (260, 240), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((240, 250), 65535, np.uint16)).save(d / "sixteen.png")
    pal = Image.new("P", (240, 240), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(d / "palette.png")
    pal.save(d / "palette_transparent.png", transparency=1)
    Image.new("RGB", (5, 3), (0, 255, 0)).save(d / "tiny.png")
    Image.new("1", (230, 230), 1).save(d / "bilevel.png")
    (d / "notes.txt").write_text("not an image, ignored by extension")
    return {"truncated.jpg", "corrupt.jpg", "empty.png", "text.png", "truncpng.png"}


def test_robust_loading_converts_or_skips(tmp_path, caplog):
    d = tmp_path / "odd"
    bad = _odd_files(d)
    with caplog.at_level(logging.WARNING, logger="paper_code.data"):
        ds = load_dataset("folder", root=d)
    assert {p.split("/")[-1] for p, _ in ds.skipped} == bad
    assert all(reason for _, reason in ds.skipped)
    assert sum("skipping" in r.message for r in caplog.records) == len(bad)
    assert len(ds) == 10 and all(lab == -1 for lab in ds.labels)
    items = {it["id"]: it for it in (ds[i] for i in range(len(ds)))}
    for it in items.values():
        assert it["image"].shape == (3, 224, 224) and it["image"].dtype == torch.float32
        assert 0 <= it["image"].min() and it["image"].max() <= 1
        assert it["boxes"].shape == (0, 4)
    px = {k: v["image"][:, 112, 112] for k, v in items.items()}
    torch.testing.assert_close(px["gray"], torch.full((3,), 128 / 255))
    torch.testing.assert_close(px["sixteen"], torch.ones(3))
    torch.testing.assert_close(px["tiny"], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(px["palette"], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(px["palette_transparent"], torch.ones(3))  # transparent -> white
    torch.testing.assert_close(px["la"], torch.ones(3))
    torch.testing.assert_close(px["bilevel"], torch.ones(3))
    rgba = items["rgba"]["image"]
    torch.testing.assert_close(rgba[:, 10, 112], torch.tensor([1.0, 0.0, 0.0]))  # opaque red
    torch.testing.assert_close(rgba[:, 214, 112], torch.ones(3))  # transparent -> white
    cmyk = px["cmyk"]
    assert cmyk[0] > 0.9 and cmyk[1] < 0.1 and cmyk[2] < 0.1  # C=0 M=Y=255 -> red


def test_full_validation_and_clear_error(tmp_path):
    d = tmp_path / "odd"
    bad = _odd_files(d)
    full = load_dataset("folder", root=d, validate="full")
    assert {p.split("/")[-1] for p, _ in full.skipped} == bad
    ds = load_dataset("folder", root=d, validate="none")
    assert ds.skipped == [] and len(ds) == 15
    i = ds.ids.index("truncated")
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        ds[i]
    with pytest.raises(ImageLoadError, match="corrupt.jpg"):
        open_rgb(d / "corrupt.jpg")
    with pytest.raises(ValueError, match="validate"):
        load_dataset("folder", root=d, validate="sometimes")


def test_folder_classes_collate_and_load_batch(tmp_path):
    root = tmp_path / "tree"
    for c, n in [("dog", 2), ("cat", 3)]:
        (root / c).mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (240 + 10 * k, 230), (k * 40, 0, 0)).save(root / c / f"{c}{k}.png")
    (root / "empty_class").mkdir()
    ds = load_dataset("folder", root=root)
    assert ds.classes == ["cat", "dog"] and ds.labels == [0, 0, 0, 1, 1]
    assert ds.ids[0] == "cat/cat0"
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 3, 224, 224)
    assert batch["label"].tolist() == [0, 0, 0, 1] and batch["label"].dtype == torch.long
    assert isinstance(batch["boxes"], list) and batch["boxes"][0].shape == (0, 4)
    assert batch["id"][3] == "dog/dog0"
    x, y = load_batch(ds, [4, 0])
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [1, 0]
    torch.testing.assert_close(x[1], ds[0]["image"])
    assert len(load_dataset("folder", root=root, subset=2, seed=3)) == 2


def test_sample_dataset(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    ds = load_dataset()
    assert len(ds) >= 8 and ds.skipped == []
    assert len(set(ds.ids)) == len(ds)
    for i in range(len(ds)):
        it = ds[i]
        rec = ds.records[i]
        assert it["image"].shape == (3, 224, 224)
        assert 0 <= it["image"].min() and it["image"].max() <= 1
        assert it["image"].std() > 0.05
        assert 0 <= it["label"] < 1000 and it["label"] == rec["label"]
        assert ds.categories[rec["label"]] == rec["label_name"]
        assert [ds.categories[k] for k in rec["synonyms"]] == rec["synonym_names"]
        b = it["boxes"]
        assert b.ndim == 2 and b.shape[1] == 4 and len(b) >= 1
        assert (b >= 0).all() and (b <= 224).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert rec["licence"] and rec["source"] and rec["attribution"]
        w, h = rec["size"]
        assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in rec["boxes"])
    x, y = load_batch(ds, range(len(ds)))
    assert x.shape == (len(ds), 3, 224, 224) and y.shape == (len(ds),)
    assert len(load_dataset("sample", ids=["coffee"])) == 1


def test_sample_json_matches_files():
    from paper_code.data.datasets import SAMPLE_JSON, _package_dir

    recs = json.loads(SAMPLE_JSON.read_text())["images"]
    for r in recs:
        with Image.open(_package_dir(r["package"]) / r["file"]) as im:
            assert list(im.size) == r["size"] and im.mode == r["mode"]


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown sample ids"):
        load_dataset("sample", ids=["nope"])
