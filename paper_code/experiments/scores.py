"""The score functions of the tables: what a table computes for each batch of images and maps,
with the settings that change the values (:class:`Score`, which puts them into the result
key), and the open protocol choices of each metric (:data:`PROTOCOL_OPTIONS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from ..methods import PAPER_NAMES
from ..metrics import classification
from . import loop as ex

#: Score function of a table: ``score(model, batch, maps) -> {column: [B] values}``.
ScoreFn = Callable[[Any, "ex.Batch", torch.Tensor], Mapping[str, Any]]


#: The open protocol choices of each metric (the paper leaves them to the reference code; see the
#: book's deviations and protocol-sensitivity pages): the keyword options of the functions of
#: :mod:`paper_code.metrics` that the ``protocol`` parameter may set, e.g.
#: ``-p protocol '{insertion_deletion: {blur_kernel: sampled}}'``. Their defaults are the
#: functions' own (read from the signatures, stated once).
PROTOCOL_OPTIONS: dict[str, tuple[str, ...]] = {
    "insertion_deletion": ("blur_kernel", "blur_padding", "substrate_space", "tie_break"),
    "aopc": ("tie_break",),
    "max_sensitivity": ("unperturbed_maps",),
    "adcc": ("masking_space", "constant_maps"),
    "localization": ("box_rule",),
}


def protocol_options(params: Mapping[str, Any] | None, metric: str) -> dict[str, Any]:
    """The effective open-choice options of ``metric`` (a key of :data:`PROTOCOL_OPTIONS`): the
    metric function's defaults, overridden by ``params["protocol"][metric]``. Every value is
    returned, defaults included, so that the options enter the result keys whole: rows computed
    under another value, or under an earlier default, are never reused. Unknown metrics or
    options are refused with the valid ones."""
    import inspect

    from .. import metrics

    given = (params or {}).get("protocol") or {}
    if not isinstance(given, Mapping):
        raise ValueError(
            "protocol must map metric names to options, e.g. "
            f"{{insertion_deletion: {{blur_kernel: sampled}}}}; got {given!r}"
        )
    unknown = sorted(set(given) - set(PROTOCOL_OPTIONS))
    if unknown:
        raise ValueError(
            f"protocol names unknown metric(s) {', '.join(unknown)}; valid: "
            f"{', '.join(PROTOCOL_OPTIONS)}"
        )
    if metric not in PROTOCOL_OPTIONS:
        raise ValueError(
            f"no protocol options for {metric!r}; valid: {', '.join(PROTOCOL_OPTIONS)}"
        )
    signature = inspect.signature(getattr(metrics, metric)).parameters
    options = {k: signature[k].default for k in PROTOCOL_OPTIONS[metric]}
    chosen = dict(given.get(metric) or {})
    bad = sorted(set(chosen) - set(options))
    if bad:
        raise ValueError(
            f"protocol option(s) {', '.join(bad)} of {metric} unknown; valid: {', '.join(options)}"
        )
    options.update(chosen)
    return options


class Score:
    """A table's score function with the settings that change its values (``settings``, which
    :meth:`TableRun.run` puts into the result key): a metric's options travel with the function
    that applies them, so a page cannot compute with one value and key its rows with another."""

    def __init__(self, fn: ScoreFn, **settings: Any) -> None:
        self.fn, self.settings = fn, settings

    def __call__(self, model, batch, maps) -> Mapping[str, Any]:
        return self.fn(model, batch, maps)


def classification_scores(model, batch, maps) -> dict[str, torch.Tensor]:
    """AD (eq. 13), AI (eq. 14) and AG (eq. 15), in %, of the ground-truth class."""
    r = classification(model, batch.images, maps, batch.labels)
    return {m: r[m] for m in ("AD", "AG", "AI")}


def curve_points(id_step: int, points: int = 29) -> list[int]:
    """Evenly spaced step indices of the insertion/deletion curves kept per image."""
    n_steps = -(-224 * 224 // id_step)
    return [round(k * n_steps / (points - 1)) for k in range(points)]


def insertion_deletion_scores(
    id_step: int = 224,
    params: Mapping[str, Any] | None = None,
    modes: Sequence[str] = ("I", "D"),
) -> Score:
    """Score function of Table 3 (and Fig. 3, Table A.11): insertion/deletion (%) of the class
    predicted on the clean image, plus 29 evenly spaced points of each curve (columns ``I_p00``
    ... ``D_p28``), under the ``protocol`` parameter's options of ``insertion_deletion``
    (:func:`protocol_options`); ``modes`` restricts it to insertion or deletion."""
    from ..metrics import insertion_deletion

    points = curve_points(id_step)
    options = protocol_options(params, "insertion_deletion")
    modes = tuple(modes)

    def score(model, batch, maps):
        r = insertion_deletion(
            model, batch.images, maps, step=id_step, return_curves=True, modes=modes, **options
        )
        out = {m: r[m] for m in modes}
        for m in modes:
            for k, t in enumerate(points):
                out[f"{m}_p{k:02d}"] = r[f"{m}_curve"][:, t]
        return out

    settings: dict[str, Any] = {"id_step": id_step, "insertion_deletion": options}
    if modes != ("I", "D"):
        settings["modes"] = list(modes)
    return Score(score, **settings)


#: Localization metrics of Tables A.7 and A.8, in the paper's column order.
LOCALIZATION_METRICS = ["OM", "LE", "F1", "BoxAcc", "SP", "EP", "SM"]


def _hit_shape() -> tuple[int, int]:
    from ..metrics.localization import DELTAS, ETAS

    return (len(ETAS), len(DELTAS))


def pack_hits(hits: torch.Tensor) -> str:
    """A per-image BoxAcc hit table ``[n_eta, n_delta]`` (bool) as a hex string for a CSV cell."""
    import numpy as np

    return np.packbits(hits.cpu().numpy().reshape(-1)).tobytes().hex()


def unpack_hits(text: str) -> torch.Tensor:
    """Inverse of :func:`pack_hits`."""
    import numpy as np

    shape = _hit_shape()
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))
    return torch.from_numpy(bits[: int(np.prod(shape))].reshape(shape).astype(bool))


def localization_scores(params: Mapping[str, Any] | None = None) -> Score:
    """Score function of Tables A.7/A.8: OM, LE, F1, SP, EP, SM, P, R, IoU per image (NaN for images
    without a usable box), whether the image is valid, and its packed BoxAcc hit table, under the
    ``protocol`` parameter's options of ``localization`` (:func:`protocol_options`)."""
    from ..metrics.localization import box_crop_probs, localization

    options = protocol_options(params, "localization")

    def score(model, batch, maps) -> dict[str, Any]:
        labels = batch.labels
        predicted = batch.logits.argmax(1)
        r = localization(
            maps,
            batch.boxes,
            pred_correct=(predicted == labels).cpu(),
            probs=lambda boxes: box_crop_probs(model, batch.images, boxes, labels),
            **options,
        )
        valid = r["valid"].bool()
        out: dict[str, Any] = {
            k: torch.where(valid, r[k].double().cpu(), math.nan)
            for k in ("OM", "LE", "F1", "SP", "EP", "SM", "P", "R", "IoU")
        }
        out["valid"] = valid.double()
        out["n_boxes"] = torch.tensor([float(len(b)) for b in batch.boxes])
        out["box_hits"] = [pack_hits(h) for h in r["box_hits"]]
        return out

    return Score(score, localization=options)


def table4_scores(
    params: Mapping[str, Any],
    cache,
    model,
    method: str,
    options: Mapping[str, Any],
    with_ms: bool = True,
    with_adcc: bool = True,
    parts: Sequence[str] = ("AOPC", "MS", "ADCC"),
) -> Score:
    """Score function of Table 4: per image AOPC (Samek et al., Quantus' region perturbation:
    patch 14, 10 regions) and Max-Sensitivity (Quantus: radius 0.2, ``ms_samples`` samples) of
    the ground-truth class's maps, and ADCC with the maps of the predicted class (Poppi et al.;
    reused from the cache where the prediction is the label), with its parts.

    ``params``: the page's ``ms_samples``, ``ms_normalize_by``, ``aopc_aggregation``, ``seed``,
    ``batch_size`` and the ``protocol`` options of ``aopc``, ``max_sensitivity`` and ``adcc``;
    the metrics re-explain with ``method`` and ``options`` (:func:`paper_code.explain`, which turns
    gradients on for the methods that need them). ``parts``: the metrics to compute (the others
    are NaN; the protocol-sensitivity page recomputes only the one a choice moves)."""
    from .. import metrics
    from ..methods import explain

    samples = int(params.get("ms_samples") or 10)
    normalize_by = params.get("ms_normalize_by") or "explanation"
    aggregation = params.get("aopc_aggregation") or "samek"
    seed = int(params.get("seed") or 0)
    batch_size = ex.resolve_batch_size(params.get("batch_size"), model, params.get("device", "cpu"))
    opts = {m: protocol_options(params, m) for m in ("aopc", "max_sensitivity", "adcc")}

    def explainer(x, c):
        return explain(method, model, x, c, **options)

    parts = tuple(parts)
    unknown = sorted(set(parts) - {"AOPC", "MS", "ADCC"})
    if unknown:
        raise ValueError(f"unknown Table 4 part(s) {unknown}; valid: AOPC, MS, ADCC")

    def score(model, batch, gt_maps):
        labels, predicted = batch.labels, batch.logits.argmax(1)
        nan = torch.full((len(batch.ids),), math.nan)
        aopc = nan
        if "AOPC" in parts:
            aopc = metrics.aopc(model, batch.images, gt_maps, labels, patch=14, regions=10,
                                aggregation=aggregation, **opts["aopc"])["AOPC"]  # fmt: skip
        ms = nan
        if with_ms and "MS" in parts:
            ms = metrics.max_sensitivity(
                explainer, batch.images, labels, radius=0.2, samples=samples, seed=seed,
                maps=gt_maps, batch_size=batch_size, normalize_by=normalize_by,
                **opts["max_sensitivity"],
            )  # fmt: skip
        a = dict.fromkeys(("ADCC", "coherency", "complexity", "AD"), nan)
        if with_adcc and "ADCC" in parts:
            pred_maps, _ = ex.cached_maps(cache, model, method, batch, "most_probable", options)
            a = metrics.adcc(model, explainer, batch.images, pred_maps, predicted,
                             batch_size=batch_size, **opts["adcc"])  # fmt: skip
        return {"AOPC": aopc, "MS": ms, "ADCC": a["ADCC"], "coherency": a["coherency"],
                "complexity": a["complexity"], "AD_pred": a["AD"]}  # fmt: skip

    settings: dict[str, Any] = {
        "ms_samples": samples if with_ms else 0,
        "ms_normalize_by": normalize_by,
        "aopc_aggregation": aggregation,
        "adcc": with_adcc,
        **opts,
    }
    if parts != ("AOPC", "MS", "ADCC"):
        settings["parts"] = list(parts)
    return Score(score, **settings)


def localization_summary(run: Any, per_image: pd.DataFrame) -> pd.DataFrame:
    """Means with intervals of the per-image localization metrics and BoxAcc (MaxBoxAccV2, from the
    pooled hit tables of the valid images; a dataset-level maximum, so no interval)."""
    from ..metrics.localization import box_accuracy

    valid = per_image[per_image["valid"] > 0]
    summary = run.summarize(valid, by=("model", "method"))
    acc = {}
    for (model_name, method), d in valid.groupby(["model", "method"], sort=False):
        hits = torch.stack([unpack_hits(h) for h in d["box_hits"]])
        acc[(model_name, PAPER_NAMES.get(method, method))] = float(box_accuracy(hits)["BoxAcc"])
    summary["BoxAcc"] = [
        acc.get((m, meth), math.nan) for m, meth in zip(summary["model"], summary["method"])
    ]
    summary.to_csv(run.out / f"{run.name}_summary.csv", index=False)
    return summary
