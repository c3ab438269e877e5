"""Rehearse the paper-scale run before spending GPU hours on it.

:func:`rehearse` runs the ``rehearsal`` profile: every page of the GPU profiles on the paper's four
networks (ResNet50, VGG16-BN, ViT-B/16, DeiT-B/16) with random weights written to files, on a
synthetic folder in the ILSVRC2012 layout (:func:`paper_code.data.synthetic.write_synthetic_imagenet`)
or on your own ImageNet folder, with tiny settings. What it checks is the path, not the numbers:
layer names and channel counts of the real networks, the ImageNet loader (labels, synsets, boxes),
weights files reaching every page, and every page's code on those networks.

``python -m paper_code rehearse`` is the command; ``--root /data/ILSVRC2012/val`` checks your
layout and labels with random weights in minutes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["REHEARSAL_MODELS", "prepare_rehearsal", "rehearse"]

#: The paper's networks and the file each one's random weights are written to.
REHEARSAL_MODELS = {
    "resnet50": "resnet50-random.pth",
    "vgg16_bn": "vgg16_bn-random.pth",
    "vit_base_patch16_224": "vit_base_patch16_224-random.safetensors",
    "deit_base_patch16_224": "deit_base_patch16_224-random.safetensors",
}


def prepare_rehearsal(
    folder: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    n_images: int = 2,
    seed: int = 0,
    models: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write what the rehearsal needs under ``folder`` and return its parameters ``root`` and
    ``weights``: random weights files of ``models`` (default: the four of
    :data:`REHEARSAL_MODELS`) in ``folder/weights`` (kept: a second rehearsal reuses them), and,
    unless ``root`` names a real ImageNet folder, a synthetic one of ``n_images`` images in
    ``folder/ILSVRC2012``."""
    from ..data.synthetic import write_synthetic_imagenet
    from ..models import save_random_weights

    folder = Path(folder)
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder (point it at ILSVRC2012/val)")
    weights = {}
    for name in models or REHEARSAL_MODELS:
        path = folder / "weights" / REHEARSAL_MODELS.get(name, f"{name}-random.pth")
        if not path.is_file():
            print(f"writing random weights of {name} to {path}", flush=True)
            save_random_weights(name, path, seed=seed)
        weights[name] = str(path.resolve())
    if root is None:
        root = write_synthetic_imagenet(folder / "ILSVRC2012", n_images=n_images, seed=seed)
    return {"root": str(Path(root).resolve()), "weights": weights}


def rehearse(
    out: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    build: bool = True,
    jobs: int = 1,
    progress: bool = True,
    profile: str | os.PathLike[str] | Mapping[str, Any] = "rehearsal",
) -> int:
    """Run the ``rehearsal`` profile into ``out`` (default: its ``output_dir``) after
    :func:`prepare_rehearsal`; ``parameters`` override the profile's as in
    :func:`~paper_code.book.reproduce.reproduce` (e.g. ``{"device": "cuda", "n_images": 64,
    "iterations": 100, "methods": None}`` for the GPU rehearsal). Returns ``reproduce``'s status."""
    from .profiles import resolve_run
    from .reproduce import reproduce

    prof, out_dir = resolve_run(profile, out, parameters)
    params = prof["parameters"]
    if parameters and "weights" in parameters:  # the user's files; random ones for the rest
        given = dict(parameters["weights"] or {})
    else:
        given = {}
    models = [*params.get("models", []), *params.get("transformers", [])]
    prepared = prepare_rehearsal(
        out_dir,
        root=root if root is not None else (parameters or {}).get("root"),
        n_images=int(params.get("n_images") or 2),
        seed=int(params.get("seed") or 0),
        models=[m for m in dict.fromkeys(models) if m not in given],
    )
    prepared["weights"].update(given)
    return reproduce(
        prof,
        out=out_dir,
        only=only,
        build=build,
        parameters={**dict(parameters or {}), **prepared},
        progress=progress,
        jobs=jobs,
    )
