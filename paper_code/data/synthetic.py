"""A synthetic ILSVRC2012 validation folder: the layout and files of the real one, random pixels.

For rehearsing the paper-scale path (``python -m paper_code rehearse``) without ImageNet: every
loader code path of the real data runs on it (JPEGs of various sizes and modes, a label file, a
synset list, ILSVRC XML boxes in the original image coordinates), in seconds.

>>> import tempfile
>>> from paper_code.data import load_dataset
>>> root = write_synthetic_imagenet(tempfile.mkdtemp(), n_images=3)
>>> ds = load_dataset("imagenet", root=root)
>>> len(ds), tuple(ds[0]["image"].shape), ds[0]["label"] == ds.labels[0]
(3, (3, 224, 224), True)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SYNTHETIC_CLASSES", "synthetic_wnids", "write_synthetic_imagenet"]

#: Number of classes of the synthetic synset list (ImageNet's).
SYNTHETIC_CLASSES = 1000

#: Image sizes (width, height) cycled through: landscape, portrait, square, small and large, so the
#: resize-and-crop and the box transform see every case of the real validation set.
_SIZES = ((500, 375), (375, 500), (256, 256), (640, 427), (300, 225), (1024, 683))
#: Image modes cycled through, the rare ones first so that a 2-image rehearsal decodes them
#: (ILSVRC2012 val has greyscale and CMYK JPEGs too).
_MODES = ("L", "CMYK", "RGB", "RGB", "RGB", "RGB")


def synthetic_wnids(n: int = SYNTHETIC_CLASSES) -> list[str]:
    """Well-formed, sorted WordNet-like ids ``n00000000`` ... (not the real ones: the class order
    of a synset list is its line order, which is all the loader uses)."""
    return [f"n{i:08d}" for i in range(n)]


def _xml(name: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, ...]]]) -> str:
    w, h = size
    objs = "".join(
        f"<object><name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for wnid, (x0, y0, x1, y1) in objects
    )
    return (
        f"<annotation><folder>val</folder><filename>{name}</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>\n"
    )


def write_synthetic_imagenet(
    root: str | os.PathLike[str], n_images: int = 8, seed: int = 0
) -> Path:
    """Write a folder in the ILSVRC2012 validation layout and return it (the ``root`` to pass)::

        root/val/ILSVRC2012_val_00000001.JPEG ...   random images, sizes and modes cycled
        root/val.txt                                Caffe's "filename label" lines (torchvision order)
        root/LOC_synset_mapping.txt                 1000 "wnid name" lines
        root/bbox/val/ILSVRC2012_val_00000001.xml   ILSVRC boxes: 1-2 of the label's class, and
                                                    sometimes one of another class

    Labels are drawn uniformly (seeded); boxes are random rectangles of at least a tenth of each
    side. Rewriting the same folder with the same arguments gives the same files.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    root = Path(root)
    (root / "val").mkdir(parents=True, exist_ok=True)
    (root / "bbox" / "val").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wnids = synthetic_wnids()
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} synthetic class {i}\n" for i, w in enumerate(wnids))
    )
    labels = []
    for i in range(n_images):
        name = f"ILSVRC2012_val_{i + 1:08d}"
        w, h = _SIZES[i % len(_SIZES)]
        mode = _MODES[i % len(_MODES)]
        # Smooth random blobs rather than white noise: JPEG keeps them, and saliency maps of a
        # random network then have some structure to rank.
        coarse = rng.integers(0, 256, size=(h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC).convert(mode)
        img.save(root / "val" / f"{name}.JPEG", quality=90)
        label = int(rng.integers(0, len(wnids)))
        labels.append(label)
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            x0, y0 = int(rng.integers(0, w * 0.6)), int(rng.integers(0, h * 0.6))
            x1 = int(rng.integers(x0 + w // 10, w + 1))
            y1 = int(rng.integers(y0 + h // 10, h + 1))
            objects.append((wnids[label], (x0, y0, x1, y1)))
        if rng.random() < 0.3:  # a box of another class: the loader must leave it out
            objects.append((wnids[(label + 1) % len(wnids)], (0, 0, w // 2, h // 2)))
        (root / "bbox" / "val" / f"{name}.xml").write_text(_xml(f"{name}.JPEG", (w, h), objects))
    (root / "val.txt").write_text(
        "".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {lab}\n" for i, lab in enumerate(labels))
    )
    return root
