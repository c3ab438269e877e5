"""Your explainer and your images in the paper's protocol, in one call: :func:`evaluate` (and
``python -m paper_code evaluate``).

It runs the given methods and the paper's baselines on a network and a set of images, with the
paper's metrics: AD, AG and AI (eqs. 13-15), insertion and deletion (Section 5.3.2) and, where the
images have boxes, the localization metrics of Appendix B; every mean with its 95% bootstrap
interval over images, and every method's paired difference with Opti-CAM (the paper's method)
with its interval and verdict. It writes, under ``out``:

- ``evaluate_rows.csv``: one row per image, method and configuration, appended as computed, keyed
  by the full configuration, so an interrupted run resumes and a changed option never reuses a
  stale row (the book's storage); the maps are cached in ``out/cache``;
- ``evaluate_summary.csv`` (means, interval bounds, time per map) and ``evaluate.md`` (the table
  and the verdicts, in Markdown);
- ``evaluate_maps.png``: a few images with every method's map.

A method is an id (a built-in one, or one registered with :func:`paper_code.register`) or
``module:function`` (the module is imported; an unregistered function is registered under its
name, with the layer of the network's CAM methods).

The class explained and evaluated is the ground truth where the images have labels, else the class
the network predicts (``target_rule``); insertion and deletion always use the predicted class, as
in the paper.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..methods import METHODS, PAPER_NAMES, get_method, load_plugins
from ..methods.plugins import register
from ..metrics import METRICS, classification
from .display import with_interval
from .loop import Batch, batches, cached_maps, target_classes
from .scores import LOCALIZATION_METRICS, insertion_deletion_scores, localization_scores
from .tablerun import TableRun

__all__ = ["BASELINES", "METRIC_GROUPS", "EvaluationResult", "evaluate", "resolve_method"]

#: ``--baselines`` choices: the CAM baselines and Opti-CAM (quick on a CPU), every method of the
#: paper's Table 1 for the network's family (Score-CAM, Extremal Perturbation, LIME and
#: GradientSHAP cost seconds to minutes per image on a CPU), or Opti-CAM alone.
BASELINES = {
    "cams": ("fakecam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "opticam"),
    "paper": None,
    "none": ("opticam",),
}
#: The metric groups and the columns each adds.
METRIC_GROUPS = {
    "classification": ["AD", "AG", "AI"],
    "insertion_deletion": ["I", "D"],
    "localization": [m for m in LOCALIZATION_METRICS if m != "BoxAcc"],
}


def resolve_method(spec: str) -> str:
    """The registry id of ``spec``: an id, or ``module:function`` (imported; registered under the
    function's name when the module did not register it). Errors name what is wrong."""
    load_plugins()
    if ":" not in spec:
        get_method(spec)  # unknown ids fail with the list of valid ones
        return spec
    module, _, name = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        raise ValueError(f"--method {spec}: module {module!r} could not be imported: {e}") from None
    fn = getattr(mod, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"--method {spec}: {module!r} has no function {name!r}")
    for mid, s in METHODS.items():
        if s.fn is fn or getattr(s.fn, "__wrapped__", None) is fn:
            return mid
    register(name, kind="cam", needs_layer=True)(fn)
    return name


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed: per-image rows, the summary, the verdicts against Opti-CAM
    and the files written."""

    per_image: pd.DataFrame
    summary: pd.DataFrame
    verdicts: pd.DataFrame
    markdown: str
    files: dict[str, Path]


def _scores(groups: Sequence[str], params: Mapping[str, Any], labelled: bool):
    """One score function for the chosen metric groups (one pass over each batch)."""
    id_score = insertion_deletion_scores(int(params.get("id_step") or 224), params)
    loc_score = localization_scores(params)

    def score(model, batch: Batch, maps: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "classification" in groups:
            cls = batch.labels if labelled else batch.logits.argmax(1)
            r = classification(model, batch.images, maps, cls)
            out.update({m: r[m] for m in METRIC_GROUPS["classification"]})
        if "insertion_deletion" in groups:
            r = id_score(model, batch, maps)
            out.update({m: r[m] for m in ("I", "D")})
        if "localization" in groups:
            r = loc_score(model, batch, maps)
            out.update({k: v for k, v in r.items() if k not in ("P", "R", "IoU", "n_boxes")})
        return out

    settings: dict[str, Any] = {"groups": list(groups), "labelled": labelled}
    if "insertion_deletion" in groups:
        settings.update(id_score.settings)
    if "localization" in groups:
        settings.update(loc_score.settings)
    return score, settings


def evaluate(
    methods: Sequence[str],
    model: str = "efficientnet_lite0",
    data: str = "sample",
    *,
    out: str | Path = "_build/evaluate",
    metrics: Sequence[str] = ("classification", "insertion_deletion", "localization"),
    baselines: str | Sequence[str] = "cams",
    n_images: int | None = None,
    weights: str | None = None,
    layer: str | None = None,
    device: str = "cpu",
    batch_size: int | str | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    id_step: int = 224,
    seed: int = 0,
    show: int = 4,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate ``methods`` beside the paper's baselines (see the module docstring).

    Args:
        methods: ids or ``module:function`` specs (:func:`resolve_method`).
        model: a network name (:func:`paper_code.load_model`; ``timm:...``/``hf:...`` too).
        data: ``"sample"`` (the bundled photos, with ImageNet labels and boxes) or a folder of
            images (``folder/<class>/*.jpg`` whose class names are the network's class names or
            indices, or a flat folder: the predicted class is then explained).
        out: output folder (rows, cache, summary, Markdown, figure); a rerun resumes.
        metrics: groups of :data:`METRIC_GROUPS`; localization only where the images have boxes.
        baselines: a key of :data:`BASELINES` or a list of method ids; Opti-CAM always runs.
        n_images: the first ``n_images`` images (``None``: all).
        weights: a weights file of the network (``None``: its published weights).
        layer: the layer of the CAM methods, a dotted name in ``model.net`` (``None``: the
            paper's layer, or the rule of :mod:`paper_code.models.external`).
        method_options: per-method options, e.g. ``{"opticam": {"iterations": 50}}``.
        id_step: insertion/deletion step in pixels (224: the paper's 224 steps).
        show: images in the figure.
        progress: a progress bar over the methods.

    >>> import tempfile                                                      # doctest: +SKIP
    >>> r = evaluate(["paper_code.examples.centre_prior:centre_prior"], "tiny",  # doctest: +SKIP
    ...              "sample", out=tempfile.mkdtemp(), baselines="none", n_images=2)
    """
    from tqdm import tqdm

    bad = sorted(set(metrics) - set(METRIC_GROUPS))
    if bad:
        raise ValueError(f"unknown metric group(s) {bad}; valid: {', '.join(METRIC_GROUPS)}")
    ids = [resolve_method(m) for m in methods]
    out = Path(out)
    params: dict[str, Any] = {
        "models": [model], "weights": {model: weights} if weights else None,
        "cam_layers": {model: layer} if layer else None,
        "n_images": n_images, "device": device, "batch_size": batch_size, "seed": seed,
        "output_dir": str(out), "cache_dir": str(out / "cache"), "id_step": id_step,
        "method_options": dict(method_options or {}), "iterations": None,
    }  # fmt: skip
    if data == "sample":
        params.update(dataset="sample", root=None)
    else:
        if not Path(data).is_dir():
            raise FileNotFoundError(f"--data {data}: not a folder (or 'sample')")
        params.update(dataset="folder", root=str(Path(data).resolve()))
    run = TableRun("evaluate", params, [m for g in metrics for m in METRIC_GROUPS[g]])
    net, dataset, cache = run.setup(model)
    if params["dataset"] == "folder":
        _name_classes(dataset, net)
    labelled = all(lab >= 0 for lab in dataset.labels)
    has_boxes = any(len(dataset.original_boxes(i)) for i in range(len(dataset)))
    groups = [g for g in metrics if g != "localization" or has_boxes]
    family = getattr(net, "family", "cnn")
    if isinstance(baselines, str):
        if baselines not in BASELINES:
            raise ValueError(f"unknown baselines {baselines!r}; valid: {', '.join(BASELINES)}")
        chosen = BASELINES[baselines]
        if chosen is None:
            from .tablerun import table_methods

            chosen = table_methods("table1" if family == "cnn" else "table2",
                                   "resnet50" if family == "cnn" else "vit_b", family)[0]  # fmt: skip
    else:
        chosen = [resolve_method(b) for b in baselines]
    todo = list(dict.fromkeys([*ids, *chosen, "opticam"]))
    todo = [m for m in todo if family in METHODS[m].families]
    score, settings = _scores(groups, params, labelled)
    rule = "ground_truth" if labelled else "most_probable"
    for method in tqdm(todo, desc="evaluate", disable=not progress):
        run.run(net, dataset, cache, method, score=score, settings=settings, target_rule=rule)
    per_image = run.collect(dataset)
    valid = per_image
    if "localization" in groups:
        valid = per_image.assign(valid=per_image["valid"].fillna(0) > 0)
    summary = run.summarize(per_image, by=("model", "method"))
    verdicts = _verdicts(run, valid, model, todo, groups)
    md = _markdown(summary, verdicts, run.metrics, model, data, len(dataset), labelled, ids)
    files = {
        "rows": run.table.path,
        "summary": run.out / "evaluate_summary.csv",
        "markdown": out / "evaluate.md",
        "figure": out / "evaluate_maps.png",
    }
    files["markdown"].write_text(md)
    _figure(net, dataset, cache, todo, rule, params, files["figure"], show)
    return EvaluationResult(per_image, summary, verdicts, md, files)


def _name_classes(dataset, net) -> None:
    """Folder labels are the sorted folder names' positions: map them to the network's classes
    when the folder names are its class names (any case) or class indices, else unknown (-1)."""
    classes = list(getattr(dataset, "classes", []) or [])
    if not classes:
        return
    names = {c.lower(): i for i, c in enumerate(getattr(net, "categories", []) or [])}
    mapping = {}
    for i, c in enumerate(classes):
        if c.lower() in names:
            mapping[i] = names[c.lower()]
        elif c.isdigit() and int(c) < len(names):
            mapping[i] = int(c)
    dataset.labels = [mapping.get(lab, -1) if lab >= 0 else -1 for lab in dataset.labels]


def _verdicts(
    run: TableRun, per_image: pd.DataFrame, model: str, methods: Sequence[str], groups
) -> pd.DataFrame:
    from ..metrics.uncertainty import verdict

    rows = []
    mine = per_image.assign(variant="")
    for method in methods:
        if method == "opticam":
            continue
        for m in run.metrics:
            if m not in mine or mine[m].isna().all():
                continue
            part = mine
            if m in LOCALIZATION_METRICS:
                part = mine[mine["valid"]]
            d, lo, hi = run.paired(part, m, {"method": method}, {"method": "opticam"})
            if math.isnan(d):
                continue
            rows.append(
                {"method": PAPER_NAMES.get(method, method), "metric": m, "difference": d,
                 "low": lo, "high": hi,
                 "verdict": verdict(lo, hi, METRICS[m].direction)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def _markdown(summary, verdicts, metrics, model, data, n, labelled, ours) -> str:
    cols = [m for m in metrics if m in summary]
    table = pd.DataFrame(
        {
            f"{m} {'↑' if METRICS[m].direction == 'higher' else '↓'}": with_interval(summary, m)
            for m in cols
        }  # fmt: skip
    )
    table.insert(0, "method", summary["method"])
    if "T" in summary:
        table["T (s)"] = summary["T"].map(lambda v: f"{v:.2f}")
    mine = {PAPER_NAMES.get(m, m) for m in ours}
    table["method"] = table["method"].map(lambda m: f"**{m}**" if m in mine else m)
    cls = "ground-truth class" if labelled else "predicted class (the images have no labels)"
    lines = [
        f"# Evaluation on `{data}` ({n} images), network `{model}`",
        "",
        f"Means ± half the 95% bootstrap interval over images; class explained: {cls}. "
        "AD/AG/AI: eqs. 13-15 of the paper; I/D: insertion/deletion (Section 5.3.2); OM..SM: "
        "Appendix B. Your methods in bold.",
        "",
        _md_table(table),
        "",
        "## Paired against Opti-CAM",
        "",
        "Mean per-image difference (method minus Opti-CAM) with its 95% paired bootstrap interval; "
        "*better* / *worse* when the interval excludes zero, else *not resolved*.",
        "",
    ]
    if len(verdicts):
        word = {"holds": "better", "contradicted": "worse"}
        v = verdicts.assign(
            result=[
                f"{r.difference:+.2f} [{r.low:+.2f}, {r.high:+.2f}] "
                f"{word.get(r.verdict, 'not resolved')}"
                for r in verdicts.itertuples()
            ]
        ).pivot_table(index="method", columns="metric", values="result", aggfunc="first",
                      sort=False)  # fmt: skip
        lines.append(_md_table(v.reset_index()))
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def _figure(net, dataset, cache, methods, rule, params, path: Path, show: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import overlay
    from .keys import method_options

    n = min(show, len(dataset))
    if n == 0:
        return
    subset = torch.utils.data.Subset(dataset, list(range(n)))
    batch = next(batches(net, subset, n, params.get("device", "cpu")))
    classes = target_classes(batch, rule)
    fig, axes = plt.subplots(n, len(methods) + 1, figsize=(1.8 * (len(methods) + 1), 1.9 * n),
                             squeeze=False)  # fmt: skip
    maps = {
        m: cached_maps(cache, net, m, batch, rule, method_options(params, m))[0] for m in methods
    }
    for i in range(n):
        axes[i, 0].imshow(batch.images[i].permute(1, 2, 0).cpu().numpy())
        cats = getattr(net, "categories", [])
        c = int(classes[i])
        axes[i, 0].set_title(cats[c][:18] if c < len(cats) else str(c), fontsize=7)
        for j, m in enumerate(methods, 1):
            axes[i, j].imshow(overlay(batch.images[i].cpu(), maps[m][i, 0].cpu()))
            if i == 0:
                axes[i, j].set_title(PAPER_NAMES.get(m, m), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
