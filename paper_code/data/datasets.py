"""Datasets by name (:func:`load_dataset`): offline sample photographs, the ILSVRC2012 validation
set, any image folder, and the medical datasets of :mod:`paper_code.data.medical`.

Every dataset is an :class:`~paper_code.data.base.ImageDataset` (items, preprocessing, decoding
and file validation are described in :mod:`paper_code.data.base`).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..imagenet import imagenet_categories
from . import medical
from .base import (  # noqa: F401  (CROP, IMAGE_EXTENSIONS, RESIZE, VALIDATE_MODES: re-exported)
    CROP,
    IMAGE_EXTENSIONS,
    RESIZE,
    VALIDATE_MODES,
    ImageDataset,
    ImageLoadError,
    collate,
    crop_offset,
    list_images,
    load_batch,
    logger,
    open_rgb,
    resized_size,
    subset_indices,
    transform_boxes,
    validate_image,
)

DATASETS = ("sample", "imagenet", "folder", "chestxray", "kvasir")
SAMPLE_JSON = Path(__file__).with_name("sample_images.json")
_WNID = re.compile(r"^n\d{8}$")

__all__ = [
    "DATASETS",
    "ImageLoadError",
    "ImageDataset",
    "collate",
    "load_batch",
    "load_dataset",
    "open_rgb",
    "transform_boxes",
    "resized_size",
    "crop_offset",
    "validate_image",
    "read_imagenet_labels",
    "read_ilsvrc_xml",
    "read_synsets",
    "sample_records",
]


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------- sample


def sample_records() -> list[dict]:
    """The entries of ``sample_images.json`` (id, source, licence, label, synonyms, boxes...)."""
    return json.loads(SAMPLE_JSON.read_text(encoding="utf-8"))["images"]


def _sample(validate: str = "full", ids: Sequence[str] | None = None) -> ImageDataset:
    """Real photographs shipped inside installed packages (scikit-image, scikit-learn, matplotlib);
    no download. Boxes were hand-drawn in original pixels. Missing packages/files are skipped."""
    recs = sample_records()
    if ids is not None:
        known = {r["id"] for r in recs}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"unknown sample ids {unknown}; valid: {sorted(known)}")
        recs = [r for r in recs if r["id"] in set(ids)]
    paths, labels, names, boxes, sizes, kept, skipped = [], [], [], [], [], [], []
    for r in recs:
        try:
            path = _package_dir(r["package"]) / r["file"]
        except FileNotFoundError as exc:
            logger.warning("skipping sample %s: %s", r["id"], exc)
            skipped.append((r["file"], str(exc)))
            continue
        paths.append(path)
        labels.append(r["label"])
        names.append(r["id"])
        boxes.append(r["boxes"])
        sizes.append(tuple(r["size"]))
        kept.append(r)
    ds = ImageDataset(paths, labels, names, boxes, sizes, kept, validate=validate, skipped=skipped)
    ds.categories = imagenet_categories()
    return ds


# --------------------------------------------------------------------------- ImageNet


def read_synsets(path: str | Path) -> list[str]:
    """WordNet ids in class-index order from a synset list file.

    Accepts one wnid per line, optionally followed by words (``LOC_synset_mapping.txt``,
    ``synset_words.txt``: ``n01440764 tench, Tinca tinca``). The line order is taken as the class
    order; for torchvision order that is the sorted wnids (the usual files are sorted)."""
    wnids = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        tok = line.strip().split()
        if tok:
            if not _WNID.match(tok[0]):
                raise ValueError(f"{path}: not a synset list (line {line!r})")
            wnids.append(tok[0])
    return wnids


def read_imagenet_labels(
    path: str | Path, filenames: Sequence[str], wnids: Sequence[str] | None = None
) -> dict[str, int]:
    """Read a validation label file into ``{filename_stem: class_index}``.

    Supported formats (torchvision class order, 0..999):

    * CSV/whitespace pairs ``filename,label`` or ``filename label`` (the official Opti-CAM
      ``revisited_imagenet_2012_val.csv``, Caffe's ``val.txt``); an optional header line
      (e.g. ``file_name,label``) is skipped. ``label`` may be an int or a wnid (or a Kaggle
      ``LOC_val_solution.csv`` prediction string, whose first token is the wnid); wnids need
      ``wnids`` (a synset list) to map to indices.
    * a plain list of integer labels, one per line, in file order: line ``i`` is the label of the
      ``i``-th of ``filenames`` (sorted ``ILSVRC2012_val_00000001.JPEG`` ...).

    The devkit's ``ILSVRC2012_validation_ground_truth.txt`` holds 1-based *devkit* ids, which are
    not torchvision indices: convert it first (a warning is logged if a file looks like it).
    """
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    wnid_index = {w: i for i, w in enumerate(wnids)} if wnids is not None else None

    def parse_label(tok: str) -> int:
        tok = tok.strip().split()[0] if tok.strip() else tok
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if _WNID.match(tok):
            if wnid_index is None:
                raise ValueError(
                    f"{path}: labels are wnids ({tok}); pass synsets= (a synset list file)"
                )
            return wnid_index[tok]
        raise ValueError(f"{path}: cannot parse label {tok!r}")

    out: dict[str, int] = {}
    if all(re.fullmatch(r"-?\d+", ln) for ln in lines):
        if len(lines) != len(filenames):
            raise ValueError(
                f"{path}: plain label list has {len(lines)} lines but {len(filenames)} images"
            )
        vals = [int(v) for v in lines]
        if vals and min(vals) >= 1 and max(vals) == 1000:
            logger.warning(
                "%s looks like devkit ILSVRC2012_IDs (1..1000, devkit order), which are not "
                "torchvision class indices",
                path,
            )
        out = {Path(f).stem: v for f, v in zip(filenames, vals)}
    else:
        delim = "," if "," in lines[0] else None
        rows = list(csv.reader(lines)) if delim == "," else [ln.split(None, 1) for ln in lines]
        for k, row in enumerate(rows):
            if len(row) < 2:
                raise ValueError(f"{path}: line {k + 1} has no label: {lines[k]!r}")
            name, lab = row[0].strip(), row[1]
            if k == 0:
                first = lab.strip().split()[0] if lab.strip() else ""
                if not (re.fullmatch(r"-?\d+", first) or _WNID.match(first)):
                    continue  # header
            out[Path(name).stem] = parse_label(lab)
    return out


def read_ilsvrc_xml(path: str | Path) -> tuple[tuple[int, int] | None, list[tuple[str, list]]]:
    """Parse an ILSVRC/PASCAL-VOC annotation: ``((width, height) or None, [(wnid, [x0,y0,x1,y1])])``."""
    root = ET.parse(path).getroot()
    size = None
    s = root.find("size")
    if s is not None:
        try:
            size = (int(float(s.findtext("width"))), int(float(s.findtext("height"))))
        except (TypeError, ValueError):
            size = None
        if size is not None and (size[0] <= 0 or size[1] <= 0):
            size = None
    objs = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        objs.append(((obj.findtext("name") or "").strip(), coords))
    return size, objs


def _find_first(candidates: Iterable[Path]) -> Path | None:
    for c in candidates:
        if c.exists():
            return c
    return None


def _imagenet(
    root: str | Path,
    labels: str | Path | None = None,
    boxes: str | Path | None = None,
    synsets: str | Path | None = None,
    subset: int | None = None,
    seed: int = 0,
    validate: str = "header",
) -> ImageDataset:
    """ILSVRC2012 validation set (see :func:`load_dataset` for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet root {root} is not a directory")
    img_dir = root / "val" if (root / "val").is_dir() else root
    subdirs = sorted(d for d in img_dir.iterdir() if d.is_dir() and _WNID.match(d.name))
    search = [root, img_dir, root.parent]
    if synsets is None:
        synsets = _find_first(
            d / n
            for d in search
            for n in ("LOC_synset_mapping.txt", "synset_words.txt", "synsets.txt", "wnids.txt")
        )
    wnids = read_synsets(synsets) if synsets is not None else None
    if subdirs:  # ImageFolder layout root/val/<wnid>/*.JPEG (e.g. after valprep.sh)
        if wnids is None:
            wnids = [d.name for d in subdirs]
            if len(wnids) != 1000:
                logger.warning(
                    "%d wnid folders (not 1000): class indices follow their sorted order",
                    len(wnids),
                )
        index = {w: i for i, w in enumerate(wnids)}
        files = [p for d in subdirs for p in list_images(d)]
        label_of = {p.stem: index.get(p.parent.name, -1) for p in files}
        files.sort(key=lambda p: p.name)
    else:
        files = list_images(img_dir)
        if labels is None:
            labels = _find_first(
                d / n
                for d in search
                for n in (
                    "revisited_imagenet_2012_val.csv",
                    "val_labels.csv",
                    "LOC_val_solution.csv",
                    "val.txt",
                    "ILSVRC2012_val_labels.txt",
                )
            )
        if labels is None:
            logger.warning("no ImageNet label file found under %s: labels are -1", root)
            label_of = {}
        else:
            label_of = read_imagenet_labels(labels, [p.name for p in files], wnids)
    if not files:
        raise FileNotFoundError(f"no images found in {img_dir}")
    if boxes is None:
        boxes = _find_first([root.parent / "bbox", root / "bbox", img_dir.parent / "bbox"])
    box_dir = Path(boxes) if boxes is not None else None
    if box_dir is not None and (box_dir / "val").is_dir():
        box_dir = box_dir / "val"

    keep = subset_indices(len(files), subset, seed)
    files = [files[i] for i in keep]
    labs, all_boxes, sizes, records = [], [], [], []
    missing_labels = 0
    for p in files:
        lab = label_of.get(p.stem, -1)
        missing_labels += lab == -1
        labs.append(lab)
        b: list = []
        size = None
        rec: dict[str, Any] = {"path": str(p)}
        if box_dir is not None:
            xml = box_dir / f"{p.stem}.xml"
            if xml.exists():
                try:
                    size, objs = read_ilsvrc_xml(xml)
                except (ET.ParseError, ValueError, TypeError) as exc:
                    logger.warning("ignoring unreadable box file %s: %s", xml, exc)
                    objs = []
                rec["xml"] = str(xml)
                rec["wnids"] = sorted({w for w, _ in objs})
                if wnids is not None and 0 <= lab < len(wnids):
                    b = [c for w, c in objs if w == wnids[lab]]
                else:
                    b = [c for _, c in objs]
        all_boxes.append(b)
        sizes.append(size)
        records.append(rec)
    if missing_labels and label_of:
        logger.warning("%d images have no label in %s (label -1)", missing_labels, labels)
    ds = ImageDataset(
        files, labs, [p.stem for p in files], all_boxes, sizes, records, validate=validate
    )
    ds.wnids = wnids  # type: ignore[attr-defined]
    ds.categories = imagenet_categories()
    return ds


# --------------------------------------------------------------------------- folder


def _folder(
    root: str | Path,
    subset: int | None = None,
    seed: int = 0,
    validate: str = "header",
    class_to_idx: dict[str, int] | None = None,
) -> ImageDataset:
    """ImageFolder-like tree ``root/<class>/*.jpg`` (labels = index of the sorted class folder
    names, or ``class_to_idx``), or a flat folder of images (labels -1). No boxes."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} is not a directory")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [d.name for d in subdirs if list_images(d)]
    files: list[Path] = []
    labs: list[int] = []
    if classes:
        if class_to_idx is None:
            class_to_idx = {c: i for i, c in enumerate(classes)}
        for c in classes:
            imgs = list_images(root / c)
            files += imgs
            labs += [class_to_idx.get(c, -1)] * len(imgs)
    flat = list_images(root)
    files += flat
    labs += [-1] * len(flat)
    if not files:
        raise FileNotFoundError(f"no images found in {root}")
    keep = subset_indices(len(files), subset, seed)
    files = [files[i] for i in keep]
    labs = [labs[i] for i in keep]
    ids = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    ds = ImageDataset(files, labs, ids, validate=validate)
    ds.classes = classes  # type: ignore[attr-defined]
    ds.class_to_idx = class_to_idx or {}  # type: ignore[attr-defined]
    return ds


# --------------------------------------------------------------------------- entry point


def load_dataset(name: str = "sample", **kw: Any) -> ImageDataset:
    """Build a dataset by name.

    * ``"sample"`` (default; ``validate="full"``, ``ids=None``): 9 real photographs shipped inside
      scikit-image, scikit-learn and matplotlib (no download), with hand-checked ImageNet labels,
      synonyms and hand-drawn boxes from ``sample_images.json`` (``dataset.records``).
    * ``"imagenet"`` (``root``; ``labels=None``, ``boxes=None``, ``synsets=None``,
      ``subset=None``, ``seed=0``, ``validate="header"``): the ILSVRC2012 validation set.
      Images are ``root/*.JPEG`` or ``root/val/*.JPEG`` (flat), or ``root[/val]/<wnid>/*.JPEG``
      (labels from the folders, ``labels=`` is then ignored; class index = position of the wnid
      in ``synsets=`` if given, else in the sorted list of wnid folders).
      For a flat layout, labels come from ``labels=`` (see :func:`read_imagenet_labels`), else
      the first of ``revisited_imagenet_2012_val.csv``, ``val_labels.csv``,
      ``LOC_val_solution.csv``, ``val.txt``, ``ILSVRC2012_val_labels.txt`` found in ``root``,
      ``root/val`` or ``root/..``; without one, labels are -1.
      Boxes come from ILSVRC XMLs ``<boxes>/ILSVRC2012_val_00000001.xml`` (``boxes=`` or the
      first existing ``root/../bbox``, ``root/bbox``; a ``val`` subfolder is used if present).
      Only boxes whose ``<name>`` is the ground-truth wnid are kept, which needs the
      wnid -> index map: ``synsets=`` (a synset list, e.g. ``LOC_synset_mapping.txt``; also
      auto-found as above) or the wnid folders. Without it, all objects' boxes are kept (in
      ILSVRC2012 val only the ground-truth class is annotated, so this is usually the same).
      ``subset=k`` takes a deterministic sample of ``k`` images: the first ``k`` of
      ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``, sorted. The paper
      does not state how its evaluation subset was chosen; this is our choice. The sample is
      drawn before validation, so files skipped as unreadable make the dataset shorter than ``k``
      (they are listed in ``dataset.skipped``).
    * ``"folder"`` (``root``; ``subset=None``, ``seed=0``, ``validate="header"``,
      ``class_to_idx=None``): an ImageFolder-like tree or a flat folder (labels -1); no boxes.
    * ``"chestxray"`` (``root``; ``split="test"``, ``subset=None``, ``seed=0``,
      ``validate="header"``) and ``"kvasir"`` (``root``; ``split="test"``, ``seed=0``,
      ``split_file=None``, ``index_dir=None``, ``fractions=(0.75, 0.125, 0.125)``,
      ``subset=None``, ``validate="header"``): the medical datasets of App. E
      (:mod:`paper_code.data.medical`); class names in ``dataset.categories``.

    >>> ds = load_dataset("sample")
    >>> item = ds[0]
    >>> len(ds), tuple(item["image"].shape), item["id"], ds.categories[item["label"]]
    (9, (3, 224, 224), 'chelsea', 'tabby')
    """
    builders = {
        "sample": _sample,
        "imagenet": _imagenet,
        "folder": _folder,
        "chestxray": medical.chestxray,
        "kvasir": medical.kvasir,
    }
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return builders[name](**kw)
