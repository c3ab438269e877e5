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

from ..data import collate
from ..methods import explain
from ..methods.cams import scorecam_classes
from ..models import Classifier, load_model
from . import distributed as _dist
from .keys import map_key, model_layer, model_weights
from .results import MapCache, ResultTable, key_hash
from .sources import MEDICAL_DATASETS, checkpoint_path, dataset_ids, open_dataset

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
    """``batch_size`` as an int; ``"auto"`` picks one for the device's memory.

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
    ids = dataset_ids(dataset)
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
    ids = dataset_ids(dataset)
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

    Under ``torchrun`` (:mod:`paper_code.experiments.distributed`) each rank computes only its shard
    of the images (every N-th id), appends to its own rows file (``table.for_rank()``), counts as
    done the rows of every rank file (so a rerun with another N reuses every finished image), and
    waits at a barrier at the end, so that whatever reads ``table`` next sees every rank's rows.
    """
    done = table.done_ids(**{k: str(v) for k, v in tag.items()})
    ids = dataset_ids(dataset)
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


def setup(
    params: Mapping[str, Any], model_name: str | None = None
) -> tuple[Classifier, Any, MapCache, Path]:
    """Model, dataset, shared map cache and output folder from notebook parameters.

    On a medical dataset (:data:`MEDICAL_DATASETS`) the model is the fine-tuned checkpoint of
    (dataset, model) named by the ``checkpoints`` parameter (:func:`checkpoint_path`); it is
    required (ImageNet weights cannot classify X-rays) and its classes must be the dataset's."""
    from ..methods import load_plugins

    load_plugins(params.get("plugins"))  # methods from outside the package (the plugins parameter)
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
    layer = model_layer(params, name)
    if layer is not None:
        model.get_layer(layer)  # an unknown name: a one-line error with similar names
        model.target_layer_name = layer
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
