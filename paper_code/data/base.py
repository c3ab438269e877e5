"""What every dataset of :mod:`paper_code.data` shares: image decoding, the preprocessing geometry,
file validation and the :class:`ImageDataset` they all are.

Every dataset returned by :func:`paper_code.data.load_dataset` is a map-style :class:`torch.utils.data.Dataset`
whose items are dicts::

    {"image": FloatTensor[3, 224, 224] in [0, 1],
     "label": int,                      # ImageNet class index (torchvision order), -1 if unknown
     "boxes": FloatTensor[n, 4],        # x0, y0, x1, y1 in pixels of the 224x224 crop
     "id": str}

Images go through the paper's preprocessing, ``Resize(256)`` (shorter side) then
``CenterCrop(224)`` then ``ToTensor`` (identical to ``Classifier.transform`` in
:mod:`paper_code.models`). Boxes go through the same geometry (:func:`transform_boxes`):
scaled by the resize factors that torchvision actually uses (long side ``int(256 * long / short)``),
shifted by the crop offset ``int(round((size - 224) / 2))``, clipped to the crop; boxes that
become empty are dropped. Box coordinates are taken as pixel-edge coordinates of the stored image
(ILSVRC XML values are used as they are, no 1-based shift).

Image decoding (:func:`open_rgb`) is shared by all datasets and converts every PIL mode to RGB:

* ``1``, ``L``, ``P`` (without transparency), ``YCbCr``, ``LAB``, ``HSV``, ``CMYK``: PIL's
  ``convert("RGB")`` (CMYK by PIL's plain conversion, no ICC colour management).
* ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La`` and ``P`` with a transparency key: **composited on
  white** (transparent pixels become white; the alpha channel is not simply dropped, which would
  expose whatever colour the transparent pixels happen to store).
* ``I;16*`` (16-bit) and ``I`` (32-bit integer): divided by 257 (65535 -> 255) when the maximum
  exceeds 255, otherwise used as 8-bit values. ``F`` (float): taken as [0, 1] if its maximum is
  <= 1, else as [0, 255]; clipped.
* Multi-frame files (GIF, TIFF) use their first frame. EXIF orientation is *not* applied
  (as in torchvision's ``ImageFolder``; ILSVRC boxes refer to the stored pixel grid).
* Images smaller than 224 are upsampled by ``Resize(256)``, as in torchvision.

Unreadable files never stop a long run halfway: each dataset validates its files at construction
(``validate="header"``: ``PIL.Image.verify()``, which also checks PNG chunk CRCs, plus a check
that a JPEG ends with its end-of-image marker, with a full decode of any JPEG lacking one;
``validate="full"``: decode every file; ``"none"``: no check). Files that fail are excluded, a
warning is logged on the ``paper_code.data`` logger, and ``dataset.skipped`` lists
``(path, reason)``. If a file that passed validation still fails to decode in ``__getitem__``,
:class:`ImageLoadError` is raised naming the file (re-run with ``validate="full"`` to exclude it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

logger = logging.getLogger("paper_code.data")

RESIZE = 256
CROP = 224
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)
VALIDATE_MODES = ("header", "full", "none")


class ImageLoadError(RuntimeError):
    """An image file could not be decoded (the message names the file)."""


# --------------------------------------------------------------------------- image decoding


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (see module docstring for the rules)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.ndim == 3:  # e.g. "I;16" variants never are, but be safe
            arr = arr[..., 0]
        if mode == "F":
            arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr
        elif arr.size and arr.max() > 255:
            arr = arr / 257.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully and return it as an RGB PIL image.

    Raises :class:`ImageLoadError` (naming the file) if it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im).copy()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        raise ImageLoadError(f"cannot decode image {str(path)!r}: {exc}") from exc


def validate_image(path: str | Path, mode: str = "header") -> str | None:
    """Return ``None`` if ``path`` looks decodable, else a short reason string.

    ``mode``: ``"header"`` (cheap: ``Image.verify()`` plus a JPEG end-of-image marker check, with a
    full decode only for JPEGs missing it), ``"full"`` (decode everything) or ``"none"``.
    """
    if mode not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {mode!r}")
    if mode == "none":
        return None
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as im:
            fmt = im.format
            w, h = im.size
            im.verify()
        if w <= 0 or h <= 0:
            return f"invalid size {w}x{h}"
        need_decode = mode == "full"
        if fmt == "JPEG" and not need_decode:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 4096))
                tail = f.read()
            need_decode = b"\xff\xd9" not in tail
        if need_decode:
            open_rgb(path)
    except ImageLoadError as exc:
        return str(exc.__cause__ or exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------- geometry


def resized_size(width: int, height: int, size: int = RESIZE) -> tuple[int, int]:
    """(new_width, new_height) of torchvision's ``Resize(size)`` (shorter side -> ``size``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def crop_offset(width: int, height: int, crop: int = CROP) -> tuple[int, int]:
    """(left, top) of torchvision's ``CenterCrop(crop)`` on an image of that size (no padding)."""
    return int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))


def transform_boxes(
    boxes: torch.Tensor | Sequence[Sequence[float]],
    width: int,
    height: int,
    size: int = RESIZE,
    crop: int = CROP,
) -> torch.Tensor:
    """Map boxes (x0, y0, x1, y1) in a ``width`` x ``height`` image through Resize+CenterCrop.

    Returns a float tensor [m, 4] in crop pixels, clipped to [0, crop]; empty boxes are dropped.
    """
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if b.numel() == 0:
        return torch.zeros(0, 4)
    new_w, new_h = resized_size(width, height, size)
    left, top = crop_offset(new_w, new_h, crop)
    scale = torch.tensor([new_w / width, new_h / height, new_w / width, new_h / height])
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    out = (b * scale - shift).clamp(0.0, float(crop))
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep]


# --------------------------------------------------------------------------- base dataset


class ImageDataset(Dataset):
    """Generic list of image files with labels and original-pixel boxes.

    Attributes:
        paths, labels, ids: per item.
        skipped: ``[(path, reason)]`` for files excluded at construction.
        records: per-item metadata dicts (JSON entries for ``sample``; XML info for ``imagenet``).
        categories: class names (torchvision ImageNet order) when known.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        ids: Sequence[str],
        boxes: Sequence[Any] | None = None,
        box_sizes: Sequence[tuple[int, int] | None] | None = None,
        records: Sequence[dict] | None = None,
        validate: str = "header",
        skipped: Iterable[tuple[str, str]] = (),
    ) -> None:
        if validate not in VALIDATE_MODES:
            raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {validate!r}")
        n = len(paths)
        boxes = list(boxes) if boxes is not None else [[] for _ in range(n)]
        box_sizes = list(box_sizes) if box_sizes is not None else [None] * n
        records = list(records) if records is not None else [{} for _ in range(n)]
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.paths: list[Path] = []
        self.labels: list[int] = []
        self.ids: list[str] = []
        self._boxes: list[torch.Tensor] = []
        self._box_sizes: list[tuple[int, int] | None] = []
        self.records: list[dict] = []
        for i in range(n):
            reason = validate_image(paths[i], validate)
            if reason is not None:
                logger.warning("skipping %s: %s", paths[i], reason)
                self.skipped.append((str(paths[i]), reason))
                continue
            self.paths.append(Path(paths[i]))
            self.labels.append(int(labels[i]))
            self.ids.append(str(ids[i]))
            self._boxes.append(torch.as_tensor(boxes[i], dtype=torch.float32).reshape(-1, 4))
            self._box_sizes.append(box_sizes[i])
            self.records.append(records[i])
        self.transform = transforms.Compose(
            [transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor()]
        )
        self.categories: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def original_boxes(self, index: int) -> torch.Tensor:
        """Boxes of item ``index`` in original-image pixels (as annotated)."""
        return self._boxes[index].clone()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        path = self.paths[index]
        im = open_rgb(path)
        w, h = im.size
        boxes = self._boxes[index]
        ann = self._box_sizes[index]
        if boxes.numel() and ann is not None and tuple(ann) != (w, h):
            # annotation made for a different stored size: rescale to the actual image
            aw, ah = ann
            boxes = boxes * torch.tensor([w / aw, h / ah, w / aw, h / ah])
        return {
            "image": self.transform(im),
            "label": self.labels[index],
            "boxes": transform_boxes(boxes, w, h),
            "id": self.ids[index],
        }


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn``: stacks ``image`` [B,3,224,224] and ``label`` [B] (long);
    keeps ``boxes`` as a list of [n_i, 4] tensors and ``id`` as a list of str."""
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([int(it["label"]) for it in items], dtype=torch.long),
        "boxes": [it["boxes"] for it in items],
        "id": [it["id"] for it in items],
    }


def load_batch(
    dataset: Dataset, indices: Iterable[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked ``(images [B,3,224,224], labels [B])`` for ``indices`` (default: all items).

    Use ``collate([dataset[i] for i in indices])`` to also get boxes and ids."""
    if indices is None:
        indices = range(len(dataset))  # type: ignore[arg-type]
    batch = collate([dataset[int(i)] for i in indices])
    return batch["image"], batch["label"]


# --------------------------------------------------------------------------- helpers


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (by extension, hidden files left out), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def subset_indices(n: int, subset: int | None, seed: int) -> list[int]:
    """Deterministic, sorted sample of ``subset`` indices out of ``n`` (all when None/>= n)."""
    if subset is None or subset >= n:
        return list(range(n))
    if subset < 0:
        raise ValueError(f"subset must be >= 0, got {subset}")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=g)[:subset].tolist())
