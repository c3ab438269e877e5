"""The data of a run, from its parameters: the bundled sample, ImageNet or any folder, and the
medical datasets with their fine-tuned checkpoints (Tables A.10 and A.11).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data import load_dataset

#: The paper's medical datasets (App. E) -> their name in the paper's tables (``dataset`` column).
MEDICAL_DATASETS = {"chestxray": "chest_xray", "kvasir": "kvasir"}


#: The paper's fine-tuned networks on them.
MEDICAL_MODELS = ("resnet50", "vgg16_bn")


def medical_root(params: Mapping[str, Any], dataset: str) -> str | None:
    """The data folder of a medical ``dataset``: ``medical_root[dataset]`` (a dict parameter; a
    plain folder serves both datasets), else ``root`` when the ``dataset`` parameter names it."""
    roots = params.get("medical_root")
    if isinstance(roots, Mapping):
        root = roots.get(dataset)
    else:  # one folder holding both trees (each loader finds its own below it)
        root = roots
    if not root and params.get("dataset") == dataset:
        root = params.get("root")
    return str(root) if root else None


def checkpoint_path(params: Mapping[str, Any], dataset: str, model_name: str) -> str | None:
    """The fine-tuned checkpoint of ``model_name`` on ``dataset`` named by the ``checkpoints``
    parameter: a dict ``{"<dataset>-<model>": path}`` or the folder ``python -m paper_code
    finetune --out`` wrote (holding ``<dataset>-<model>.pt``). ``None`` when not given."""
    given = params.get("checkpoints")
    if not given:
        return None
    if isinstance(given, Mapping):
        path = given.get(f"{dataset}-{model_name}")
        return str(path) if path else None
    return str(Path(str(given)) / f"{dataset}-{model_name}.pt")


def medical_plan(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (dataset, model) of the medical tables and whether it can run with these parameters:
    the paper's four pairs (:data:`MEDICAL_DATASETS` x :data:`MEDICAL_MODELS`), then any other
    ``<dataset>-<model>`` key of ``checkpoints``. Each entry: ``dataset``, ``model``, ``root``,
    ``checkpoint`` and ``missing`` (empty when both the data folder and the checkpoint exist, else
    what is missing, in words)."""
    pairs = [(d, m) for d in MEDICAL_DATASETS for m in MEDICAL_MODELS]
    given = params.get("checkpoints")
    if isinstance(given, Mapping):
        for key in given:
            d, _, m = str(key).partition("-")
            if d in MEDICAL_DATASETS and m and (d, m) not in pairs:
                pairs.append((d, m))
    plan = []
    for d, m in pairs:
        root, ckpt = medical_root(params, d), checkpoint_path(params, d, m)
        missing = []
        if not root:
            missing.append("no data folder given (parameter medical_root)")
        elif not Path(root).exists():
            missing.append(f"data folder {root} does not exist")
        if not ckpt:
            missing.append("no fine-tuned checkpoint given (parameter checkpoints)")
        elif not Path(ckpt).is_file():
            missing.append(f"checkpoint {ckpt} does not exist")
        plan.append(
            {
                "dataset": d,
                "model": m,
                "root": root,
                "checkpoint": ckpt,
                "missing": "; ".join(missing),
            }
        )
    return plan


def _open_medical(name: str, params: Mapping[str, Any], checkpoint: str | None):
    """Test split of Chest X-ray or Kvasir; Kvasir's split is the one the checkpoint was
    fine-tuned with (the split file it records, else the same seed)."""
    root = medical_root(params, name)
    if not root or not Path(root).exists():
        raise FileNotFoundError(
            f"dataset {name!r} needs its data folder, got {root!r}; pass "
            f"-p medical_root '{{{name}: /path/to/data}}' (see the 'Reproducing the results' page)"
        )
    kw: dict[str, Any] = {"root": root, "split": params.get("split") or "test"}
    n = params.get("n_images")
    if n:  # a seeded subset of the test set
        kw["subset"] = int(n)
    if name == "chestxray":
        kw["seed"] = int(params.get("seed", 0))
    else:
        split_seed, split_file = int(params.get("split_seed") or 0), None
        if checkpoint is not None:
            from ..models import checkpoint_info

            info = checkpoint_info(checkpoint)
            split_seed = int((info.get("config") or {}).get("split_seed", split_seed))
            split_file = info.get("split_file")
        kw["seed"] = split_seed
        if split_file and Path(split_file).is_file():
            kw["split_file"] = split_file
        else:  # recomputed from the file names and the seed (deterministic), kept beside the rows
            kw["index_dir"] = params.get("output_dir") or "_build/results"
    return load_dataset(name, **kw)


def open_dataset(params: Mapping[str, Any], checkpoint: str | None = None):
    """The dataset named by notebook parameters ``dataset``, ``root``, ``n_images`` and ``seed``.

    The medical datasets (:data:`MEDICAL_DATASETS`) open their test split (``split`` parameter)
    from :func:`medical_root`; for Kvasir, ``checkpoint`` (a fine-tuned checkpoint) gives the
    split it was fine-tuned with."""
    name = params.get("dataset", "sample")
    root = params.get("root")
    n = params.get("n_images")
    if name in MEDICAL_DATASETS:
        return _open_medical(name, params, checkpoint)
    if name == "sample":
        ds = load_dataset("sample")
        if n and int(n) < len(ds):  # the first n photos, in the order of sample_images.json
            ds = load_dataset("sample", ids=ds.ids[: int(n)])
        return ds
    if not root or str(root).startswith("/path/to") or not Path(str(root)).exists():
        raise FileNotFoundError(
            f"dataset {name!r} needs root=<folder>, got {root!r}; pass -p root /path/to/ILSVRC2012/val "
            "(see the 'Reproducing the results' page)"
        )
    kw: dict[str, Any] = {"root": root}
    if n:  # a seeded subset (the paper does not say how its 1000 images were drawn)
        kw.update(subset=int(n), seed=int(params.get("seed", 0)))
    return load_dataset(name, **kw)


def dataset_ids(dataset) -> list[str]:
    """Image ids of a dataset (or a ``Subset`` of one) without decoding any image."""
    base = dataset
    idx = None
    if isinstance(dataset, torch.utils.data.Subset):
        base, idx = dataset.dataset, list(dataset.indices)
    ids = getattr(base, "ids", None)
    if ids is None:
        return [dataset[i]["id"] for i in range(len(dataset))]
    ids = list(ids)
    return [ids[i] for i in idx] if idx is not None else ids
