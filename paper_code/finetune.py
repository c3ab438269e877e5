"""Fine-tuning on the medical datasets, the paper's two-stage recipe (App. E.2 of the paper).

``python -m paper_code finetune --dataset chestxray --model resnet50 --root DATA --out ckpt/``

* **Stage 1**: a new final linear layer (as many outputs as classes) is trained on the frozen
  ImageNet backbone (every other parameter has ``requires_grad=False`` and the whole network
  stays in eval mode, so batch-norm statistics and dropout are frozen too). Learning rate from the
  paper: 1e-3 on Chest X-ray (both networks); on Kvasir 1e-4 for ResNet50, 5e-3 for VGG16.
* **Stage 2**: the whole network (train mode) with SGD, momentum 0.9, lr 1e-5, 50 epochs.

What the paper leaves open is an option with a stated default (:class:`FinetuneConfig`):
stage-1 epochs (10) and optimizer (SGD, momentum 0.9, as stage 2), no weight decay, constant
learning rates, batch size 32, no augmentation (the paper only says the images are resized to
224x224; ``flip`` and ``crop-flip`` are available), plain cross-entropy, the last epoch's model is
the exported one (``select="last"``: the paper states 50 epochs and no model selection; the
best-validation model is kept beside it and its test accuracy reported too), Kvasir split
seed 0 (:mod:`paper_code.data.medical`). Images go through the project's preprocessing (Resize 256,
CenterCrop 224, [0, 1], ImageNet standardization inside the model).

Files written in ``out`` (``<stem>`` = ``<dataset>-<model>``):

* ``<stem>-last.pt``: the resume checkpoint, rewritten (atomically) after every epoch: weights,
  optimizer state, stage, epoch, best so far, the per-epoch history and the configuration. Rerunning
  the same command after an interruption resumes after the last completed epoch, with the same
  optimizer state; the data order, augmentation and dropout of an epoch are drawn from a seed made
  of (``seed``, stage, epoch), so on a CPU a resumed run ends with the same weights as an
  uninterrupted one (on a GPU up to the nondeterminism of its kernels).
* ``<stem>-best.pt``: the model of the epoch (either stage) with the best validation accuracy
  (ties: lower validation loss).
* ``<stem>.pt``: the exported model (``select``), with its test accuracy. It loads with
  ``load_model("resnet50", weights="ckpt/chestxray-resnet50.pt")`` (``num_classes=2`` may be
  given; it must match) and has the class names in ``model.categories``; all three files do.
* ``<stem>.csv``: one row per epoch: stage, epoch, lr, train_loss, train_accuracy, val_loss,
  val_accuracy (accuracies in %), seconds.
* ``<stem>.json``: the configuration and the final test accuracies beside the paper's.
* ``kvasir-split-seed<k>.json`` (Kvasir): the train/val/test split used (unless ``split_file``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from .data import collate, load_dataset
from .experiments.results import atomic_torch_save, atomic_write_bytes
from .models import Classifier, checkpoint_info, load_model

__all__ = [
    "AUGMENTATIONS",
    "CHECKPOINT_FORMAT",
    "FINETUNE_DATASETS",
    "PAPER_STAGE1_LR",
    "PAPER_TEST_ACCURACY",
    "FinetuneConfig",
    "checkpoint_info",
    "evaluate",
    "finetune",
    "head_name",
    "load_finetuned",
]

CHECKPOINT_FORMAT = "paper_code.finetune/1"
FINETUNE_DATASETS = ("chestxray", "kvasir")
AUGMENTATIONS = ("none", "flip", "crop-flip")
STAGE1_OPTIMIZERS = ("sgd", "adam")
SELECT = ("last", "best")

#: Stage-1 learning rates of App. E.2 (dataset, model).
PAPER_STAGE1_LR: dict[tuple[str, str], float] = {
    ("chestxray", "resnet50"): 1e-3,
    ("chestxray", "vgg16_bn"): 1e-3,
    ("kvasir", "resnet50"): 1e-4,
    ("kvasir", "vgg16_bn"): 5e-3,
}
#: Test accuracies (%) reported in App. E.2 after fine-tuning.
PAPER_TEST_ACCURACY: dict[tuple[str, str], float] = {
    ("chestxray", "resnet50"): 82.0,
    ("chestxray", "vgg16_bn"): 83.2,
    ("kvasir", "resnet50"): 89.8,
    ("kvasir", "vgg16_bn"): 89.5,
}
#: Stage-1 learning rate for models the paper did not fine-tune (tiny, efficientnet_lite0).
OTHER_STAGE1_LR = 1e-3

# Settings that must match for a run to resume (epochs may be raised to extend a run).
_RESUME_KEYS = (
    "dataset",
    "model",
    "weights",
    "stage1_optimizer",
    "stage1_lr",
    "stage2_lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "augment",
    "seed",
    "split_seed",
    "max_batches",
)


@dataclass
class FinetuneConfig:
    """Options of :func:`finetune` (the CLI flags have the same names, with dashes).

    Attributes:
        dataset: ``"chestxray"`` or ``"kvasir"``.
        model: ``"resnet50"``, ``"vgg16_bn"`` (the paper's), or ``"tiny"`` / ``"efficientnet_lite0"``.
        root: the dataset folder (see :mod:`paper_code.data.medical`).
        out: folder for checkpoints, log and summary.
        weights: ImageNet weights of the backbone (``None``: torchvision's IMAGENET1K_V1 from the
            torch cache or downloaded; a path; ``"random"``).
        stage1_epochs: epochs of stage 1 (paper: not given; default 10).
        stage1_optimizer: ``"sgd"`` (momentum ``momentum``; default) or ``"adam"`` (paper: not given).
        stage1_lr: ``None`` takes the paper's (:data:`PAPER_STAGE1_LR`; 1e-3 for other models).
        stage2_epochs, stage2_lr, momentum: the paper's 50, 1e-5, 0.9 (SGD).
        weight_decay: both stages (paper: not given; 0).
        batch_size: both stages and evaluation (paper: not given; 32).
        augment: training augmentation, ``"none"`` (default; the paper states none), ``"flip"``
            (horizontal flip, p = 0.5) or ``"crop-flip"`` (random resized crop of the 224 image,
            scale 0.7-1, aspect 3/4-4/3, back to 224, then the flip).
        select: which model ``<stem>.pt`` holds: ``"last"`` (default) or ``"best"`` (validation).
        seed: head initialization, data order, augmentation and dropout.
        split_seed: Kvasir split seed (kept apart from ``seed`` so the test set never moves).
        split_file: Kvasir split JSON (default ``out/kvasir-split-seed<split_seed>.json``).
        device: ``"cpu"``, ``"cuda"``, ...
        num_workers: DataLoader worker processes (default 4).
        progress: tqdm progress bars.
        max_batches: stop each epoch after this many batches (smoke runs; ``None``: all).
        validate: image validation mode of the datasets (``"header"``, ``"full"``, ``"none"``).
        restart: ignore an existing resume checkpoint in ``out`` and start over.
    """

    dataset: str
    model: str
    root: str
    out: str = "ckpt"
    weights: str | None = None
    stage1_epochs: int = 10
    stage1_optimizer: str = "sgd"
    stage1_lr: float | None = None
    stage2_epochs: int = 50
    stage2_lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    augment: str = "none"
    select: str = "last"
    seed: int = 0
    split_seed: int = 0
    split_file: str | None = None
    device: str = "cpu"
    num_workers: int = 4
    progress: bool = True
    max_batches: int | None = None
    validate: str = "header"
    restart: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in FINETUNE_DATASETS:
            raise ValueError(f"dataset must be one of {FINETUNE_DATASETS}, got {self.dataset!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.stage1_optimizer not in STAGE1_OPTIMIZERS:
            raise ValueError(
                f"stage1_optimizer must be one of {STAGE1_OPTIMIZERS}, got {self.stage1_optimizer!r}"
            )
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {SELECT}, got {self.select!r}")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0 or self.batch_size < 1:
            raise ValueError("epochs must be >= 0 and batch_size >= 1")
        if self.stage1_lr is None:
            self.stage1_lr = PAPER_STAGE1_LR.get((self.dataset, self.model), OTHER_STAGE1_LR)
        self.root = str(self.root)
        self.out = str(self.out)

    @property
    def stem(self) -> str:
        return f"{self.dataset}-{self.model}"

    def path(self, suffix: str) -> Path:
        return Path(self.out) / f"{self.stem}{suffix}"


# --------------------------------------------------------------------------- helpers


def head_name(model: Classifier) -> str:
    """Dotted name (in ``model.net``) of the final layer: the network's last ``nn.Linear``
    (``fc`` for ResNet50 and the tiny CNN, ``classifier.6`` for VGG16-BN)."""
    return [n for n, m in model.net.named_modules() if isinstance(m, nn.Linear)][-1]


def _epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return int(seed) * 1_000_003 + stage * 10_007 + epoch


def _augment(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-image training augmentation of a batch ``[B, 3, H, W]`` (global torch RNG)."""
    if kind == "none":
        return x
    out = []
    for img in x:
        if kind == "crop-flip":
            i, j, h, w = RandomResizedCrop.get_params(img, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3))
            img = TF.resized_crop(img, i, j, h, w, list(img.shape[-2:]), antialias=True)
        if bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
        out.append(img)
    return torch.stack(out)


def _progress(iterable: Any, enabled: bool, desc: str, total: int | None = None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, file=sys.stderr)


def _loader(
    dataset: Dataset, batch_size: int, num_workers: int, device: str, seed: int | None = None
) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=seed is not None,
        generator=gen,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=False,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> tuple[float, float]:
    """``(mean cross-entropy loss, accuracy in %)`` of ``model`` (in eval mode) on ``dataset``."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    loader = _loader(dataset, batch_size, num_workers, str(device))
    for batch in _progress(loader, progress, desc):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        n += len(y)
    if n == 0:
        return math.nan, math.nan
    return loss_sum / n, 100.0 * correct / n


def _set_stage(model: Classifier, stage: int, head: str) -> list[nn.Parameter]:
    """Freeze everything but the head (stage 1) or nothing (stage 2); returns the trained params."""
    head_prefix = head + "."
    params = []
    for name, p in model.net.named_parameters():
        p.requires_grad_(stage == 2 or name.startswith(head_prefix))
        if p.requires_grad:
            params.append(p)
    for p in model.standardize.parameters():
        p.requires_grad_(False)
    return params


def _optimizer(
    cfg: FinetuneConfig, stage: int, params: Sequence[nn.Parameter]
) -> torch.optim.Optimizer:
    if stage == 1 and cfg.stage1_optimizer == "adam":
        return torch.optim.Adam(params, lr=float(cfg.stage1_lr), weight_decay=cfg.weight_decay)
    lr = float(cfg.stage1_lr) if stage == 1 else cfg.stage2_lr
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _train_epoch(
    model: Classifier,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: FinetuneConfig,
    stage: int,
    desc: str,
) -> tuple[float, float]:
    # Stage 1: the frozen backbone stays in eval mode (batch-norm statistics and dropout frozen).
    model.train(stage == 2)
    loss_sum, correct, n = 0.0, 0, 0
    total = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)
    bar = _progress(loader, cfg.progress, desc, total)
    for k, batch in enumerate(bar):
        if cfg.max_batches is not None and k >= cfg.max_batches:
            break
        x = _augment(batch["image"], cfg.augment).to(cfg.device, non_blocking=True)
        y = batch["label"].to(cfg.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        n += len(y)
        if cfg.progress:
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{100.0 * correct / n:.1f}")
    if hasattr(bar, "close"):
        bar.close()
    model.eval()
    return (loss_sum / n, 100.0 * correct / n) if n else (math.nan, math.nan)


def _meta(cfg: FinetuneConfig, categories: Sequence[str], head: str) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": cfg.model,
        "num_classes": len(categories),
        "categories": list(categories),
        "head": head,
        "dataset": cfg.dataset,
        "config": dataclasses.asdict(cfg),
    }


_LOG_COLUMNS = (
    "stage",
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
)


def _write_log(history: Sequence[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(_LOG_COLUMNS), lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: row.get(k) for k in _LOG_COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _better(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Is epoch row ``a`` better on validation than ``b``? (accuracy, then lower loss)"""
    if b is None:
        return True
    acc_a, acc_b = a["val_accuracy"], b["val_accuracy"]
    if acc_a != acc_b:
        return bool(acc_a > acc_b) or math.isnan(acc_b)
    return bool(a["val_loss"] < b["val_loss"])


def _load_resume(cfg: FinetuneConfig) -> dict[str, Any] | None:
    path = cfg.path("-last.pt")
    if cfg.restart or not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True)
    old = ck["config"]
    new = dataclasses.asdict(cfg)
    diff = {k: (old.get(k), new[k]) for k in _RESUME_KEYS if old.get(k) != new[k]}
    if diff:
        raise ValueError(
            f"{path} is a run with other settings {diff} (saved, asked): use another --out, the "
            f"same settings, or --restart"
        )
    return ck


def load_finetuned(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", fuse: bool = True
) -> Classifier:
    """``load_model(<arch of the checkpoint>, weights=path)``: the fine-tuned classifier with its
    class names (``model.categories``)."""
    return load_model(checkpoint_info(path)["arch"], weights=str(path), device=device, fuse=fuse)


# --------------------------------------------------------------------------- main loop


def _datasets(cfg: FinetuneConfig) -> dict[str, Dataset]:
    kw: dict[str, Any] = {"root": cfg.root, "validate": cfg.validate}
    if cfg.dataset == "kvasir":
        kw["seed"] = cfg.split_seed
        if cfg.split_file is not None:
            kw["split_file"] = cfg.split_file
        else:
            kw["index_dir"] = cfg.out
    return {s: load_dataset(cfg.dataset, split=s, **kw) for s in ("train", "val", "test")}


def finetune(
    config: FinetuneConfig | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run (or resume) the two-stage fine-tuning; returns the summary also written to
    ``<stem>.json`` (test accuracies of the last and best-validation models, the paper's,
    paths). ``options`` build a :class:`FinetuneConfig` when ``config`` is not given.

    ``on_epoch_end(row)`` is called after each epoch's checkpoint is written (row = the log row).
    """
    cfg = config if config is not None else FinetuneConfig(**options)
    data = _datasets(cfg)  # before creating ``out``: a bad root leaves nothing behind
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    categories = list(data["train"].categories)  # type: ignore[attr-defined]
    for split, ds in data.items():
        print(f"{cfg.dataset} {split}: {len(ds)} images", file=sys.stderr)
    if len(data["train"]) == 0:  # type: ignore[arg-type]
        raise ValueError(f"no training images in {cfg.root}")

    resume = _load_resume(cfg)
    torch.manual_seed(cfg.seed)  # initialization of the new final layer
    model = load_model(
        cfg.model,
        weights="random" if resume is not None else cfg.weights,
        num_classes=len(categories),
        fuse=False,
    )
    head = head_name(model)
    meta = _meta(cfg, categories, head)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    done_stage, done_epoch = 1, 0
    if resume is not None:
        model.net.load_state_dict(resume["state_dict"])
        history = list(resume["history"])
        best = resume.get("best")
        done_stage, done_epoch = int(resume["stage"]), int(resume["epoch"])
        print(f"resuming after stage {done_stage} epoch {done_epoch}", file=sys.stderr)
    model.to(cfg.device)

    stage_epochs = {1: cfg.stage1_epochs, 2: cfg.stage2_epochs}
    try:
        for stage in (1, 2):
            if stage < done_stage:
                continue
            start = done_epoch if stage == done_stage else 0
            if start >= stage_epochs[stage]:
                continue
            params = _set_stage(model, stage, head)
            optimizer = _optimizer(cfg, stage, params)
            if resume is not None and stage == done_stage and start > 0:
                optimizer.load_state_dict(resume["optimizer"])
            lr = optimizer.param_groups[0]["lr"]
            for epoch in range(start + 1, stage_epochs[stage] + 1):
                t0 = time.perf_counter()
                seed = _epoch_seed(cfg.seed, stage, epoch)
                torch.manual_seed(seed)  # augmentation and dropout of this epoch
                loader = _loader(data["train"], cfg.batch_size, cfg.num_workers, cfg.device, seed)
                desc = f"stage {stage} epoch {epoch}/{stage_epochs[stage]}"
                tr_loss, tr_acc = _train_epoch(model, loader, optimizer, cfg, stage, desc)
                va_loss, va_acc = evaluate(
                    model,
                    data["val"],
                    cfg.batch_size,
                    cfg.device,
                    cfg.num_workers,
                    cfg.progress,
                    "validation",
                )
                row = {
                    "stage": stage,
                    "epoch": epoch,
                    "lr": lr,
                    "train_loss": tr_loss,
                    "train_accuracy": tr_acc,
                    "val_loss": va_loss,
                    "val_accuracy": va_acc,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                history.append(row)
                state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
                if _better(row, best):
                    best = dict(row)
                    atomic_torch_save(
                        {**meta, "state_dict": state, "stage": stage, "epoch": epoch, "best": best},
                        cfg.path("-best.pt"),
                    )
                atomic_torch_save(
                    {
                        **meta,
                        "state_dict": state,
                        "optimizer": optimizer.state_dict(),
                        "stage": stage,
                        "epoch": epoch,
                        "best": best,
                        "history": history,
                    },
                    cfg.path("-last.pt"),
                )
                _write_log(history, cfg.path(".csv"))
                print(
                    f"stage {stage} epoch {epoch}: train loss {tr_loss:.4f} acc {tr_acc:.1f} % | "
                    f"val loss {va_loss:.4f} acc {va_acc:.1f} %",
                    file=sys.stderr,
                )
                if on_epoch_end is not None:
                    on_epoch_end(row)
    except KeyboardInterrupt:
        print(
            f"interrupted; rerun the same command to resume from {cfg.path('-last.pt')}",
            file=sys.stderr,
        )
        raise
    return _finish(cfg, model, data, meta, history, best)


def _finish(
    cfg: FinetuneConfig,
    model: Classifier,
    data: dict[str, Dataset],
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
) -> dict[str, Any]:
    """Test accuracy of the last and best-validation models; export; summary."""
    last_path, best_path = cfg.path("-last.pt"), cfg.path("-best.pt")
    if not last_path.is_file():  # zero epochs in both stages: export the initial model
        state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
        atomic_torch_save({**meta, "state_dict": state, "stage": 0, "epoch": 0}, last_path)
    ev = (cfg.batch_size, cfg.device, cfg.num_workers, cfg.progress)
    results: dict[str, Any] = {}
    for which, path in (("last", last_path), ("best", best_path)):
        if not path.is_file():
            continue
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model.net.load_state_dict(ck["state_dict"])
        loss, acc = evaluate(model, data["test"], *ev, desc=f"test ({which})")
        results[which] = {
            "stage": ck["stage"],
            "epoch": ck["epoch"],
            "test_loss": loss,
            "test_accuracy": acc,
        }
    chosen = cfg.select if cfg.select in results else "last"
    ck = torch.load(
        last_path if chosen == "last" else best_path, map_location="cpu", weights_only=True
    )
    ck.pop("optimizer", None)
    ck.update(meta)
    ck["selected"] = chosen
    ck["test_accuracy"] = results[chosen]["test_accuracy"]
    ck["test_images"] = len(data["test"])  # type: ignore[arg-type]
    split_file = getattr(data["test"], "split_file", None)
    ck["split_file"] = str(split_file) if split_file is not None else None
    ck["history"] = history
    export = cfg.path(".pt")
    atomic_torch_save(ck, export)
    paper = PAPER_TEST_ACCURACY.get((cfg.dataset, cfg.model))
    summary = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "categories": meta["categories"],
        "test_images": len(data["test"]),  # type: ignore[arg-type]
        "selected": chosen,
        "test_accuracy": results[chosen]["test_accuracy"],
        "paper_test_accuracy": paper,
        "models": results,
        "checkpoint": str(export),
        "split_file": ck["split_file"],
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_bytes(
        cfg.path(".json"), (json.dumps(summary, indent=1, default=str) + "\n").encode("utf-8")
    )
    parts = [
        f"{k} {v['test_accuracy']:.1f} % (stage {v['stage']} epoch {v['epoch']})"
        for k, v in results.items()
    ]
    paper_text = f"{paper:.1f} %" if paper is not None else "n/a (not in the paper)"
    print(
        f"test accuracy, {cfg.dataset} {cfg.model} ({summary['test_images']} images): "
        f"{'; '.join(parts)} | paper {paper_text}"
    )
    print(f"exported ({chosen}): {export}")
    return summary
