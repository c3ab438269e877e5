"""The paper's medical datasets (App. E): Chest X-ray (Kermany et al. 2018) and Kvasir v2
(Pogorelov et al. 2017).

Both are :class:`MedicalDataset` objects (an :class:`~paper_code.data.base.ImageDataset`) with
the same items as every other dataset (``image`` [3, 224, 224] in [0, 1] after Resize 256 +
CenterCrop 224, ``label``, ``boxes`` (always empty), ``id``, ``path``) and the same bad-file
handling: greyscale X-rays become 3-channel through :func:`~paper_code.data.base.open_rgb`,
unreadable files are excluded at construction and listed in ``dataset.skipped``. Class names are
``dataset.categories`` (= ``dataset.classes``, the folder names in sorted order, label = index).

**Chest X-ray** (``load_dataset("chestxray", root=..., split="test")``): the Kaggle layout
``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (5216 / 16 / 624 images). ``root`` may
be the ``chest_xray`` folder or the folder that contains it. The Kaggle archive also holds a nested
duplicate ``chest_xray/chest_xray/...`` (and ``__MACOSX``): only the shallowest complete tree is
read, and files are listed directly inside each class folder (never recursively), so nothing is
counted twice.

**Kvasir v2** (``load_dataset("kvasir", root=..., split="test")``): 8 class folders of 1000 JPEGs
(``kvasir-dataset-v2/<class>/*.jpg``; ``root`` may be that folder or the one containing it). The
paper's 6000 / 1000 / 1000 split is not published; ours is seeded, stratified and deterministic
(:func:`kvasir_split`): within each class the sorted file names are permuted with
``torch.Generator().manual_seed(seed * 1000 + class_index)`` and cut 75 / 12.5 / 12.5 %
(750 / 125 / 125 per class on the full tree, i.e. 6000 / 1000 / 1000; proportional, with at least
one validation and one test image per class of 3 or more images, on smaller trees). The split
depends only on the file names and the seed (not on the file system order, nor on which files
fail to decode: a corrupt file keeps its slot and is then skipped). It is written to a JSON file
the first time and read back afterwards, so a rerun uses the same split even if the tree changed:
``split_file=`` names it; else ``index_dir=`` (e.g. the results folder) holds
``kvasir-split-seed<seed>.json``; else ``_build/splits/`` under the working directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .base import ImageDataset, list_images, subset_indices

logger = logging.getLogger("paper_code.data")

CHESTXRAY_SPLITS = ("train", "val", "test")
CHESTXRAY_CLASSES = ("NORMAL", "PNEUMONIA")
KVASIR_CLASSES = (
    "dyed-lifted-polyps",
    "dyed-resection-margins",
    "esophagitis",
    "normal-cecum",
    "normal-pylorus",
    "normal-z-line",
    "polyps",
    "ulcerative-colitis",
)
KVASIR_SPLITS = ("train", "val", "test")
#: Fractions of each Kvasir class in train / val / test (the paper's 6000 / 1000 / 1000 of 8000).
KVASIR_FRACTIONS = (0.75, 0.125, 0.125)
SPLIT_FORMAT = "paper_code.kvasir_split/1"

__all__ = [
    "CHESTXRAY_CLASSES",
    "CHESTXRAY_SPLITS",
    "KVASIR_CLASSES",
    "KVASIR_FRACTIONS",
    "DatasetLayoutError",
    "MedicalDataset",
    "chestxray",
    "find_chestxray_root",
    "find_kvasir_root",
    "kvasir",
    "kvasir_split",
]


class DatasetLayoutError(ValueError):
    """A dataset root does not have the expected folder layout (the message says what was
    expected and what was found)."""


class MedicalDataset(ImageDataset):
    """:class:`ImageDataset` with class names and the split it holds.

    Attributes (besides those of :class:`ImageDataset`):
        classes: class folder names, index = label (``categories`` is the same list).
        class_to_idx: ``{folder name: label}``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: the resolved dataset folder (``.../chest_xray`` or the folder of the 8 classes).
        split_file: the Kvasir split JSON (``None`` for Chest X-ray, whose split is the folders).
    """

    classes: list[str]
    class_to_idx: dict[str, int]
    split: str
    root: Path
    split_file: Path | None

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item.setdefault("path", str(self.paths[index if index >= 0 else index + len(self)]))
        return item

    def class_counts(self) -> dict[str, int]:
        """Number of (readable) images per class name."""
        counts = dict.fromkeys(self.classes, 0)
        for lab in self.labels:
            counts[self.classes[lab]] += 1
        return counts


def _listing(folder: Path, limit: int = 12) -> str:
    """Short description of a folder's entries for error messages."""
    if not folder.is_dir():
        return "(not a directory)" if folder.exists() else "(does not exist)"
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return "[" + ", ".join(names) + more + "]" if names else "(empty)"


def _has_dirs(folder: Path, names: Sequence[str]) -> bool:
    return all((folder / n).is_dir() for n in names)


def _is_chestxray(folder: Path) -> bool:
    return _has_dirs(folder, CHESTXRAY_SPLITS) and all(
        _has_dirs(folder / s, CHESTXRAY_CLASSES) for s in CHESTXRAY_SPLITS
    )


def _is_kvasir(folder: Path) -> bool:
    return _has_dirs(folder, KVASIR_CLASSES)


def find_chestxray_root(root: str | os.PathLike[str]) -> Path:
    """The folder holding ``{train,val,test}/{NORMAL,PNEUMONIA}``: ``root``, ``root/chest_xray``
    or ``root/chest_xray/chest_xray``, the shallowest that is complete.

    Raises :class:`DatasetLayoutError` (or ``FileNotFoundError`` if ``root`` is not a folder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Chest X-ray root {root} is not a directory")
    for cand in (root, root / "chest_xray", root / "chest_xray" / "chest_xray"):
        if _is_chestxray(cand):
            nested = cand / "chest_xray"
            if nested.is_dir():
                logger.info("ignoring the nested duplicate tree %s", nested)
            return cand
    found = f"Found in {root}: {_listing(root)}"
    if (root / "chest_xray").is_dir():
        found += f"; in {root / 'chest_xray'}: {_listing(root / 'chest_xray')}"
    hint = ""
    if _is_kvasir(root) or any(_is_kvasir(d) for d in root.iterdir() if d.is_dir()):
        hint = ' This looks like Kvasir v2: use load_dataset("kvasir", root=...).'
    raise DatasetLayoutError(
        f"{root} is not a Chest X-ray tree. Expected chest_xray/{{train,val,test}}/"
        f"{{NORMAL,PNEUMONIA}}/*.jpeg (root may be the chest_xray folder or its parent). "
        f"{found}.{hint}"
    )


def find_kvasir_root(root: str | os.PathLike[str]) -> Path:
    """The folder holding the 8 Kvasir v2 class folders: ``root`` or one subfolder of it
    (``kvasir-dataset-v2``, or any other name; one level, then one more for a nested duplicate).

    Raises :class:`DatasetLayoutError` (or ``FileNotFoundError`` if ``root`` is not a folder)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Kvasir root {root} is not a directory")
    if _is_kvasir(root):
        return root
    level = [root]
    for _ in range(2):
        level = sorted(d for f in level for d in f.iterdir() if d.is_dir() and d.name != "__MACOSX")
        hits = [d for d in level if _is_kvasir(d)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DatasetLayoutError(
                f"{root} holds several Kvasir trees {[str(h) for h in hits]}: pass one as root"
            )
    present = [c for c in KVASIR_CLASSES if (root / c).is_dir()]
    missing = [c for c in KVASIR_CLASSES if c not in present]
    detail = f" (has {len(present)} of the 8 class folders; missing: {missing})" if present else ""
    hint = ""
    if _is_chestxray(root) or _is_chestxray(root / "chest_xray"):
        hint = ' This looks like Chest X-ray: use load_dataset("chestxray", root=...).'
    raise DatasetLayoutError(
        f"{root} is not a Kvasir v2 tree. Expected 8 class folders {list(KVASIR_CLASSES)} of "
        f"JPEGs, in root or in one subfolder of it (e.g. kvasir-dataset-v2/). "
        f"Found in {root}: {_listing(root)}{detail}.{hint}"
    )


def _check_split(split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"split must be one of {tuple(valid)}, got {split!r}")


def _build(
    files: Sequence[Path],
    labels: Sequence[int],
    ids: Sequence[str],
    classes: Sequence[str],
    split: str,
    root: Path,
    validate: str,
    skipped: Sequence[tuple[str, str]] = (),
) -> MedicalDataset:
    records = [
        {"path": str(p), "class": classes[lab], "split": split} for p, lab in zip(files, labels)
    ]
    ds = MedicalDataset(
        list(files), list(labels), list(ids), records=records, validate=validate, skipped=skipped
    )
    ds.classes = list(classes)
    ds.class_to_idx = {c: i for i, c in enumerate(classes)}
    ds.categories = list(classes)
    ds.split = split
    ds.root = root
    ds.split_file = None
    return ds


# --------------------------------------------------------------------------- Chest X-ray


def chestxray(
    root: str | os.PathLike[str],
    split: str = "test",
    subset: int | None = None,
    seed: int = 0,
    validate: str = "header",
    index_dir: str | os.PathLike[str] | None = None,
) -> MedicalDataset:
    """Chest X-ray, pneumonia vs. normal (labels: NORMAL 0, PNEUMONIA 1); see the module docstring.

    ``subset=k`` keeps a deterministic sample of ``k`` images (as for ImageNet, drawn with
    ``seed`` before validation). Ids are ``<split>/<class>/<file stem>``. ``index_dir`` is
    accepted for symmetry with :func:`kvasir` and unused (the split is the folders)."""
    del index_dir
    _check_split(split, CHESTXRAY_SPLITS)
    base = find_chestxray_root(root)
    files: list[Path] = []
    labels: list[int] = []
    for lab, cls in enumerate(CHESTXRAY_CLASSES):
        imgs = list_images(base / split / cls)
        files += imgs
        labels += [lab] * len(imgs)
    if not files:
        raise DatasetLayoutError(
            f"no images in {base / split}/{{NORMAL,PNEUMONIA}}: found {_listing(base / split)}"
        )
    keep = subset_indices(len(files), subset, seed)
    files = [files[i] for i in keep]
    labels = [labels[i] for i in keep]
    ids = [p.relative_to(base).with_suffix("").as_posix() for p in files]
    return _build(files, labels, ids, CHESTXRAY_CLASSES, split, base, validate)


# --------------------------------------------------------------------------- Kvasir


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """(train, val, test) sizes of a class of ``n`` images."""
    n_val = _round_half_up(n * fractions[1])
    n_test = _round_half_up(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    return n - n_val - n_test, n_val, n_test


def kvasir_split(
    files_by_class: dict[str, Sequence[str]],
    seed: int = 0,
    fractions: Sequence[float] = KVASIR_FRACTIONS,
) -> dict[str, list[str]]:
    """Stratified, seeded split of ``{class: [relative file names]}`` into
    ``{"train": [...], "val": [...], "test": [...]}`` (relative names ``<class>/<file>``, sorted).

    Classes are taken in sorted order; within class ``c`` (index ``k``) the sorted names are
    permuted by ``torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + k))``:
    the first ``round(n * fractions[1])`` go to val, the next ``round(n * fractions[2])`` to test,
    the rest to train (at least one val and one test image when ``n >= 3``)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k, cls in enumerate(sorted(files_by_class)):
        names = sorted(f"{cls}/{name}" for name in files_by_class[cls])
        _, n_val, n_test = _split_counts(len(names), fractions)
        g = torch.Generator().manual_seed(int(seed) * 1000 + k)
        order = [names[i] for i in torch.randperm(len(names), generator=g).tolist()]
        out["val"] += order[:n_val]
        out["test"] += order[n_val : n_val + n_test]
        out["train"] += order[n_val + n_test :]
    return {s: sorted(v) for s, v in out.items()}


def _fingerprint(names: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_split_file(seed: int = 0, index_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`kvasir` keeps its split when no ``split_file`` is given."""
    folder = Path(index_dir) if index_dir is not None else Path("_build") / "splits"
    return folder / f"kvasir-split-seed{int(seed)}.json"


def kvasir(
    root: str | os.PathLike[str],
    split: str = "test",
    seed: int = 0,
    split_file: str | os.PathLike[str] | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    fractions: Sequence[float] = KVASIR_FRACTIONS,
    subset: int | None = None,
    validate: str = "header",
) -> MedicalDataset:
    """Kvasir v2, 8 classes (labels = index in :data:`KVASIR_CLASSES`, the sorted folder names);
    see the module docstring for the split and where it is stored.

    An existing split file is used as it is (its ``seed`` and ``fractions`` must match the
    arguments); files it lists that no longer exist are skipped (``dataset.skipped``), files of
    the tree it does not list are left out with a warning. ``subset=k`` then keeps a deterministic
    sample of ``k`` images of the split (drawn with ``seed``). Ids are ``<class>/<file stem>``."""
    _check_split(split, KVASIR_SPLITS)
    base = find_kvasir_root(root)
    files_by_class = {c: [p.name for p in list_images(base / c)] for c in KVASIR_CLASSES}
    if not any(files_by_class.values()):
        raise DatasetLayoutError(f"{base}: the 8 Kvasir class folders hold no images")
    all_names = [f"{c}/{n}" for c, ns in files_by_class.items() for n in ns]
    path = Path(split_file) if split_file is not None else default_split_file(seed, index_dir)
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("format") != SPLIT_FORMAT:
            raise ValueError(f"{path} is not a Kvasir split file (format {stored.get('format')!r})")
        if stored["seed"] != int(seed) or [float(f) for f in stored["fractions"]] != [
            float(f) for f in fractions
        ]:
            raise ValueError(
                f"{path} holds the split of seed {stored['seed']}, fractions "
                f"{stored['fractions']}, not seed {seed}, fractions {list(fractions)}: pass "
                f"another split_file/index_dir or delete it"
            )
        splits = stored["splits"]
        if stored.get("fingerprint") != _fingerprint(all_names):
            listed = {n for s in splits.values() for n in s}
            extra = len(set(all_names) - listed)
            logger.warning(
                "%s was made from another file list than %s (%d files of the tree are not in "
                "it and are left out); using the stored split",
                path,
                base,
                extra,
            )
    else:
        splits = kvasir_split(files_by_class, seed, fractions)
        _write_json_atomic(
            path,
            {
                "format": SPLIT_FORMAT,
                "dataset": "kvasir-v2",
                "seed": int(seed),
                "fractions": [float(f) for f in fractions],
                "classes": list(KVASIR_CLASSES),
                "root": str(base),
                "fingerprint": _fingerprint(all_names),
                "counts": {s: len(v) for s, v in splits.items()},
                "splits": splits,
            },
        )
        logger.info("wrote the Kvasir split (seed %d) to %s", seed, path)
    class_to_idx = {c: i for i, c in enumerate(KVASIR_CLASSES)}
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for rel in splits[split]:
        cls = rel.split("/", 1)[0]
        p = base / rel
        if cls not in class_to_idx:
            raise ValueError(f"{path}: unknown class in entry {rel!r}")
        if not p.is_file():
            logger.warning("skipping %s: listed in %s but missing", p, path)
            skipped.append((str(p), f"listed in {path} but missing"))
            continue
        files.append(p)
        labels.append(class_to_idx[cls])
    keep = subset_indices(len(files), subset, seed)
    files = [files[i] for i in keep]
    labels = [labels[i] for i in keep]
    ids = [p.relative_to(base).with_suffix("").as_posix() for p in files]
    ds = _build(files, labels, ids, KVASIR_CLASSES, split, base, validate, skipped)
    ds.split_file = path
    return ds
