"""The resumable experiment loop every notebook uses: maps from a shared cache, per-image metric rows.

A notebook describes *what* to compute; :func:`run_rows` does the bookkeeping:

1. images are processed ``batch_size`` at a time, so memory stays bounded on 50,000 images;
2. saliency maps come from a :class:`~paper_code.results.MapCache` shared by all notebooks (the
   Opti-CAM maps of Table 1 are reused by Tables 3, 4, 5, A.7 ...), computed only when missing;
3. per-image rows are appended to a :class:`~paper_code.results.ResultTable` after each batch, and
   images already in the table are skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data import collate, load_dataset
from ..methods import explain, get_method
from ..methods.cams import scorecam_classes
from ..models import Classifier, load_model
from . import distributed as _dist
from .results import MapCache, ResultTable, key_hash

#: How the class to explain is chosen (Table A.9 uses the last four).
TARGET_RULES = ("ground_truth", "most_probable", "second_most_probable", "least_probable")


@dataclass
class Batch:
    """One chunk of the dataset on the device."""

    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    labels: torch.Tensor  # [B] ground-truth class (-1 unknown)
    boxes: list[torch.Tensor]  # per image [n, 4]
    ids: list[str]
    logits: torch.Tensor  # [B, C] of the clean images


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
    return _ids(dataset)


def _ids(dataset) -> list[str]:
    base = dataset
    idx = None
    if isinstance(dataset, torch.utils.data.Subset):
        base, idx = dataset.dataset, list(dataset.indices)
    ids = getattr(base, "ids", None)
    if ids is None:
        return [dataset[i]["id"] for i in range(len(dataset))]
    ids = list(ids)
    return [ids[i] for i in idx] if idx is not None else ids


#: ``batch_size: auto`` on a CPU (memory rarely binds there; speed per image is flat from 4 to 16).
CPU_AUTO_BATCH = 8
#: Measured ``auto`` batch sizes per (network, device), so a notebook probes once.
_AUTO_BATCH: dict[tuple[str, str, bool, str], int] = {}


def batch_for_memory(
    free_bytes: int,
    per_image_bytes: float,
    fraction: float = 0.8,
    cap: int = 512,
    multiple: int = 8,
) -> int:
    """The largest multiple of ``multiple`` (at least 1) whose images take at most ``fraction`` of
    ``free_bytes`` at ``per_image_bytes`` each, and at most ``cap``."""
    if per_image_bytes <= 0:
        return cap
    n = int(fraction * free_bytes // per_image_bytes)
    if n >= multiple:
        n -= n % multiple
    return max(1, min(cap, n))


def resolve_batch_size(
    batch_size: int | str | None, model: Classifier, device: str | torch.device, probe: int = 8
) -> int:
    """``batch_size`` as an int; ``"auto"`` picks one for the device's memory (issue 12).

    On CUDA, ``auto`` runs two Opti-CAM iterations (the protocol's largest working set: forward and
    backward of the whole network) on ``probe`` images, takes the peak memory per image, doubles it
    (Table A.12's in/out objectives forward twice the batch) and fills 80% of the free memory with
    a batch that is a multiple of 8, at most 512 (:func:`batch_for_memory`). On a CPU it is
    :data:`CPU_AUTO_BATCH`. ``None`` means 8. Not yet run on a GPU (none was available); the
    arithmetic is tested."""
    if batch_size is None:
        return 8
    if not (isinstance(batch_size, str) and batch_size.strip().lower() == "auto"):
        value = int(batch_size)
        if value < 1:
            raise ValueError(f"batch_size must be >= 1 or 'auto', got {batch_size!r}")
        return value
    dev = torch.device(device)
    if dev.type != "cuda":
        return CPU_AUTO_BATCH
    key = (
        model.name,
        getattr(model, "weights_id", ""),
        bool(getattr(model, "fused", False)),
        str(dev),
    )
    if key not in _AUTO_BATCH:
        from ..methods.opticam import optimize
        from ..methods.targets import ClassLogit

        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        x = torch.rand(probe, 3, 224, 224, device=dev)
        classes = torch.zeros(probe, dtype=torch.long, device=dev)
        optimize(model, x, ClassLogit(classes), model.target_layer, iterations=2, tol=-1.0)
        torch.cuda.synchronize(dev)
        per_image = (torch.cuda.max_memory_allocated(dev) - base) / probe
        del x
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(dev)
        _AUTO_BATCH[key] = batch_for_memory(free, 2 * per_image)
    return _AUTO_BATCH[key]


def batches(
    model: Classifier,
    dataset,
    batch_size: int | str,
    device: str | torch.device,
    skip: set[str] = frozenset(),
):
    """Yield :class:`Batch` chunks of ``dataset`` (images whose id is in ``skip`` are left out);
    ``batch_size`` may be ``"auto"`` (:func:`resolve_batch_size`)."""
    batch_size = resolve_batch_size(batch_size, model, device)
    ids = _ids(dataset)
    todo = [i for i, x in enumerate(ids) if x not in skip]
    for start in range(0, len(todo), batch_size):
        items = [dataset[i] for i in todo[start : start + batch_size]]
        b = collate(items)
        images = b["image"].to(device)
        with torch.no_grad():
            logits = model(images)
        yield Batch(images, b["label"].to(device), b["boxes"], b["id"], logits)


def target_classes(batch: Batch, rule: str = "ground_truth") -> torch.Tensor:
    """Class per image under ``rule`` (one of :data:`TARGET_RULES`)."""
    if rule == "ground_truth":
        if (batch.labels < 0).any():
            raise ValueError("ground-truth targets need labelled images (label -1 found)")
        return batch.labels
    order = batch.logits.argsort(1, descending=True)
    if rule == "most_probable":
        return order[:, 0]
    if rule == "second_most_probable":
        return order[:, 1]
    if rule == "least_probable":
        return order[:, -1]
    raise ValueError(f"unknown target rule {rule!r}; valid: {', '.join(TARGET_RULES)}")


def model_key(model: Classifier) -> dict:
    """What identifies the network a result came from: architecture, weights, inference form and
    whether it standardizes its input (Table A.14 switches that off)."""
    return {
        "model": model.name,
        "weights": getattr(model, "weights_id", "unknown"),
        "fused": bool(getattr(model, "fused", False)),
        "standardized": bool(model.standardize.enabled),
    }


def method_options(
    params: Mapping[str, Any], method: str, iterations: int | None = None
) -> dict[str, Any]:
    """The options a notebook passes to ``method``: Opti-CAM's iteration count (``iterations``, or
    the given one) and whatever the ``method_options`` parameter sets for it (e.g. fewer LIME samples
    in the ``smoke`` profile, ``{"lime": {"num_samples": 50}}``). Every option enters the cache key."""
    options: dict[str, Any] = {}
    if method == "opticam":
        options["iterations"] = int(iterations or params.get("iterations") or 100)
    options.update((params.get("method_options") or {}).get(method, {}))
    return options


def map_key(model: Classifier, method: str, target_rule: str, options: Mapping[str, Any]) -> dict:
    """What identifies a set of cached maps: the method and every option that changes its maps
    (iterations, objective, normalization, layer, ...), the class rule and the network
    (:func:`model_key`: weights file and inference form included)."""
    spec = get_method(method)
    return {
        "method": method,
        **model_key(model),
        "layer": (options.get("layer") or model.target_layer_name) if spec.needs_layer else None,
        "target": target_rule,
        "options": {k: v for k, v in sorted(options.items()) if k not in ("layer", "progress")},
    }


def result_key(
    model: Classifier,
    method: str,
    target_rule: str = "ground_truth",
    options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict:
    """What identifies a row of a result table: the maps' key plus the settings of the metric and the
    table (``settings``, e.g. insertion step, noise samples, variant). Every notebook keys its rows
    with :func:`config_id` of this, so a rerun with any changed parameter computes new rows instead
    of reusing stale ones."""
    return {"maps": map_key(model, method, target_rule, dict(options or {})), "settings": settings}


def config_id(key: Mapping[str, Any]) -> str:
    """Short stable hash of a :func:`result_key` (the ``config`` column of the result tables)."""
    return key_hash(key, 12)


def cached_maps(
    cache: MapCache,
    model: Classifier,
    method: str,
    batch: Batch,
    target_rule: str = "ground_truth",
    options: Mapping[str, Any] | None = None,
    key_extra: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Maps ``[B, 1, H, W]`` (on the batch's device) and seconds per image for ``method``.

    ``key_extra`` distinguishes maps of otherwise identical settings (e.g. a randomized model).
    Maps already stored under another target rule that names the same class for an image are
    reused (copied), not recomputed.
    """
    options = dict(options or {})
    key = _key(model, method, target_rule, options, key_extra)
    classes = target_classes(batch, target_rule)
    _reuse_same_class(cache, model, method, batch, target_rule, options, key_extra, classes)

    def compute(pos: list[int]) -> torch.Tensor:
        idx = torch.tensor(pos, device=batch.images.device)
        return explain(method, model, batch.images[idx], classes[idx], **options)

    maps = cache.get_or_compute(key, batch.ids, compute)
    return maps.to(batch.images.device), list(cache.last_seconds)


def fill_maps_for_rules(
    cache: MapCache,
    model: Classifier,
    method: str,
    batch: Batch,
    rules: Sequence[str],
    options: Mapping[str, Any] | None = None,
) -> None:
    """Store the maps of ``method`` for every rule in ``rules`` that ``cached_maps`` would compute.

    For Score-CAM the classes of all rules are explained from one set of masked forward passes
    (:func:`paper_code.cams.scorecam_classes`); other methods are computed rule by rule. Maps that
    another rule already stored for the same class are reused, as in :func:`cached_maps`.
    """
    options = dict(options or {})
    if method != "scorecam" or set(options) - {"batch_size", "align_corners", "layer"}:
        for rule in rules:
            cached_maps(cache, model, method, batch, rule, options)
        return
    keys = [_key(model, method, r, options, None) for r in rules]
    classes = torch.stack([target_classes(batch, r) for r in rules], dim=1)  # [B, R]
    missing = {
        r: set(_reuse_same_class(cache, model, method, batch, rule, options, None, classes[:, r]))
        for r, rule in enumerate(rules)
    }
    todo = sorted(set().union(*missing.values()))
    if not todo:
        return
    idx = torch.tensor(todo, device=batch.images.device)
    layer = model.get_layer(options.get("layer"))
    kw = {k: v for k, v in options.items() if k != "layer"}
    t0 = time.perf_counter()
    maps = scorecam_classes(model, batch.images[idx], classes[idx], layer, **kw)
    n_maps = sum(len(m) for m in missing.values())
    seconds = (time.perf_counter() - t0) / max(n_maps, 1)  # one run serves every class
    for r, key in enumerate(keys):
        pos = [i for i, j in enumerate(todo) if j in missing[r]]
        if pos:
            ids = [batch.ids[todo[i]] for i in pos]
            cache.store(key, ids, maps[pos, r : r + 1].cpu(), seconds)


def fill_rules(
    cache: MapCache,
    model: Classifier,
    dataset,
    method: str,
    rules: Sequence[str],
    options: Mapping[str, Any] | None,
    batch_size: int,
    device: str | torch.device,
) -> None:
    """:func:`fill_maps_for_rules` over a dataset, skipping images stored under every rule."""
    options = dict(options or {})
    ids = _ids(dataset)
    keys = [_key(model, method, r, options, None) for r in rules]
    done = set(ids)
    for key in keys:
        done &= {ids[i] for i in cache.stored(key, ids)}
    for batch in batches(model, dataset, batch_size, device, skip=done):
        fill_maps_for_rules(cache, model, method, batch, rules, options)


def _reuse_same_class(
    cache: MapCache,
    model: Classifier,
    method: str,
    batch: Batch,
    target_rule: str,
    options: Mapping[str, Any],
    key_extra: Mapping[str, Any] | None,
    classes: torch.Tensor,
) -> list[int]:
    """Copy maps stored under another target rule that names the same class for an image.

    A map depends on the image and the class, not on the rule that chose the class: where the
    network is right, the most probable class *is* the ground truth, so Table A.9's and Table 4's
    predicted-class maps are those of Table 1 for most images. Exact; saves the recomputation.
    Returns the positions in the batch whose map is still missing.
    """
    dest = _key(model, method, target_rule, options, key_extra)
    missing = cache.missing(dest, batch.ids)
    for rule in TARGET_RULES:
        if rule == target_rule or not missing:
            continue
        if rule == "ground_truth" and bool((batch.labels < 0).any()):
            continue
        source = _key(model, method, rule, options, key_extra)
        other = target_classes(batch, rule)
        same = [j for j in missing if int(other[j]) == int(classes[j])]
        have = set(cache.stored(source, [batch.ids[j] for j in same]))
        found = [same[i] for i in sorted(have)]
        if found:
            cache.copy(source, dest, [batch.ids[j] for j in found])
            missing = sorted(set(missing) - set(found))
    return missing


def _key(
    model: Classifier,
    method: str,
    target_rule: str,
    options: Mapping[str, Any],
    key_extra: Mapping[str, Any] | None,
) -> dict:
    key = map_key(model, method, target_rule, options)
    if key_extra:
        key.update(key_extra)
    return key


RowFn = Callable[[Batch], Sequence[Mapping[str, Any]]]


def run_rows(
    table: ResultTable,
    model: Classifier,
    dataset,
    rows_for_batch: RowFn,
    tag: Mapping[str, Any],
    batch_size: int | str = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str | None = None,
) -> None:
    """Append ``rows_for_batch(batch)`` for every image not yet in ``table`` under ``tag``.

    ``tag`` (e.g. ``{"model": "resnet50", "method": "opticam"}``) is added to each row and is what
    "already done" is checked against, so one table can hold many methods and models.

    Under ``torchrun`` (:mod:`paper_code.reproduce.distributed`) each rank computes only its shard
    of the images (every N-th id), appends to its own rows file (``table.for_rank()``), counts as
    done the rows of every rank file (so a rerun with another N reuses every finished image), and
    waits at a barrier at the end, so that whatever reads ``table`` next sees every rank's rows.
    """
    done = table.done_ids(**{k: str(v) for k, v in tag.items()})
    ids = _ids(dataset)
    if _dist.is_distributed():
        mine = set(_dist.shard(ids))
        done = done | {x for x in ids if x not in mine}
        out = table.for_rank()
    else:
        out = table
    todo = [x for x in ids if x not in done]
    if todo:
        bar = tqdm(total=len(todo), desc=desc or str(dict(tag)), disable=not progress, leave=False)
        for batch in batches(model, dataset, batch_size, device, skip=done):
            rows = [{**tag, **row} for row in rows_for_batch(batch)]
            out.append(rows)
            bar.update(len(batch.ids))
        bar.close()
    _dist.barrier(f"rows:{table.path.name}:{key_hash(dict(tag), 12)}")


def model_weights(params: Mapping[str, Any], model_name: str) -> str | None:
    """The weights file of ``model_name`` named by the ``weights`` parameter, the one place every
    page reads it: a mapping ``{model: file}`` (``"random"`` for random initialization); models
    it does not name load their published weights (``None``). A key that is no model name is
    refused with the valid names (a typo would otherwise download the published weights)."""
    from ..names import MODELS

    given = params.get("weights")
    if given is None:
        return None
    if not isinstance(given, Mapping):
        raise ValueError(
            f"weights must map model names to files, e.g. {{resnet50: /path/r50.pth}}; "
            f"got {given!r}"
        )
    unknown = sorted(set(map(str, given)) - set(MODELS))
    if unknown:
        raise ValueError(
            f"weights names unknown model(s) {', '.join(unknown)}; valid: {', '.join(MODELS)}"
        )
    w = given.get(model_name)
    return None if w is None else str(w)


def setup(
    params: Mapping[str, Any], model_name: str | None = None
) -> tuple[Classifier, Any, MapCache, Path]:
    """Model, dataset, shared map cache and output folder from notebook parameters.

    On a medical dataset (:data:`MEDICAL_DATASETS`) the model is the fine-tuned checkpoint of
    (dataset, model) named by the ``checkpoints`` parameter (:func:`checkpoint_path`); it is
    required (ImageNet weights cannot classify X-rays) and its classes must be the dataset's."""
    device = params.get("device", "cpu")
    name = model_name or (params.get("models") or ["efficientnet_lite0"])[0]
    weights = model_weights(params, name)
    dataset_name = params.get("dataset")
    checkpoint = None
    if dataset_name in MEDICAL_DATASETS:
        checkpoint = checkpoint_path(params, dataset_name, name)
        if not checkpoint or not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"{dataset_name} {name}: no fine-tuned checkpoint ({checkpoint!r}); run "
                f"python -m paper_code finetune --dataset {dataset_name} --model {name} ... and "
                f"pass -p checkpoints '{{{dataset_name}-{name}: /path/to/{dataset_name}-{name}.pt}}'"
            )
        weights = checkpoint
    model = load_model(name, weights=weights, device=device)
    dataset = open_dataset(params, checkpoint)
    if checkpoint is not None and list(model.categories) != list(dataset.categories):
        raise ValueError(
            f"{checkpoint} was fine-tuned on classes {list(model.categories)}, not on the "
            f"{dataset_name} classes {list(dataset.categories)}"
        )
    out = Path(params.get("output_dir", "_build/results"))
    out.mkdir(parents=True, exist_ok=True)
    cache = MapCache(params.get("cache_dir") or out / "cache")
    return model, dataset, cache, out
