"""How much the paper's open protocol choices move the book's numbers, rankings and verdicts.

The paper fixes its metrics by naming reference implementations (RISE, Quantus, the ADCC code,
Chefer et al.'s code, Choe et al.'s MaxBoxAccV2, TorchRay) but leaves some of their settings open;
the book makes one choice for each (the deviations page says which and why). Each :class:`Choice`
here names one such setting, the values worth comparing (the book's first) and the tables whose
numbers it moves. :func:`evaluate` recomputes the affected rows under every value, reusing what
the tables computed: the rows of the book's value are the table's own (same configuration, same
rows file: nothing is recomputed), and the other values' rows go into the same rows file under
their own configuration, so a rerun of the table with that value would reuse them too.

For each choice and table the result holds the headline numbers per method under each value, the
ranking of the methods, Kendall's tau between the rankings, and the paper's claims re-checked under
each value (the same checks as the table's page, not recorded as the page's own).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from ..methods import PAPER_NAMES
from .display import rank_by_direction
from .keys import method_options
from .scores import (
    LOCALIZATION_METRICS,
    Score,
    insertion_deletion_scores,
    localization_scores,
    table4_scores,
    unpack_hits,
)
from .tablerun import TableRun

__all__ = ["CHOICES", "Choice", "ChoiceResult", "evaluate", "kendall_tau"]


@dataclass(frozen=True)
class Choice:
    """One open protocol choice.

    Attributes:
        key: short id (``sensitivity_skip`` names it).
        title: what is chosen, in words.
        values: label -> override, the book's value first (an empty override). A ``protocol``
            override maps a metric to its options (``{"insertion_deletion": {"tie_break":
            "numpy"}}``); a ``method_options`` override maps a method to its options.
        kind: ``"protocol"`` (a metric's option) or ``"method"`` (a method's option: the maps of
            ``methods`` are recomputed).
        pages: the tables whose numbers it moves, and the metrics of each.
        methods: for a method option, the methods it changes (the others keep their rows).
        reference: where each value comes from.
    """

    key: str
    title: str
    values: dict[str, dict[str, Any]]
    kind: str
    pages: dict[str, tuple[str, ...]]
    methods: tuple[str, ...] = ()
    reference: str = ""

    @property
    def default(self) -> str:
        return next(iter(self.values))


#: The open choices of the protocol (see the deviations page for each reference).
CHOICES: dict[str, Choice] = {
    c.key: c
    for c in (
        Choice(
            "insertion_blur",
            "Insertion: the blur of the start image",
            {
                "RISE's gkern(11, 5), zero padding": {},
                "sampled Gaussian (σ 5), reflect padding": {
                    "insertion_deletion": {"blur_kernel": "sampled", "blur_padding": "reflect"}
                },
            },
            "protocol",
            {"table3": ("I",)},
            reference="RISE evaluation.py (gkern: scipy.ndimage.gaussian_filter of a delta, "
            "conv2d with zero padding); the former default was torchvision's sampled kernel",
        ),
        Choice(
            "substrate_space",
            "Insertion/deletion: the space of the deletion substrate and the blur's padding",
            {
                "pixel space: black": {},
                "standardized space: the mean colour": {
                    "insertion_deletion": {"substrate_space": "standardized"}
                },
            },
            "protocol",
            {"table3": ("I", "D")},
            reference="RISE CausalMetric deletes to zeros_like of the tensor it is given: black "
            "when the model standardizes inside (official Opti-CAM wrapper), the mean colour "
            "when the loader standardizes",
        ),
        Choice(
            "tie_order",
            "Insertion/deletion: the order of pixels of equal saliency",
            {
                "raster order (stable)": {},
                "numpy's argsort, flipped (RISE)": {"insertion_deletion": {"tie_break": "numpy"}},
            },
            "protocol",
            {"table3": ("I", "D")},
            reference="RISE evaluation.py: np.flip(np.argsort(saliency)); numpy's sort is not "
            "stable",
        ),
        Choice(
            "adcc_masking",
            "ADCC: the space of the explanation image x ⊙ S",
            {
                "pixel space: black": {},
                "standardized space: the mean colour (ADCC code)": {
                    "adcc": {"masking_space": "standardized", "constant_maps": "nan"}
                },
            },
            "protocol",
            {"table4": ("ADCC",)},
            reference="aimagelab/ADCC multiplies the standardized tensor; a constant map's "
            "correlation is NaN there",
        ),
        Choice(
            "ms_reference",
            "Max-Sensitivity: the unperturbed map S(x)",
            {
                "recomputed like S(x + ε)": {},
                "the cached float16 map": {"max_sensitivity": {"unperturbed_maps": "given"}},
            },
            "protocol",
            {"table4": ("MS",)},
            reference="Quantus and Captum recompute S(x); the book used to read it from its "
            "float16 map cache",
        ),
        Choice(
            "boxacc_boxes",
            "BoxAcc: which boxes of the thresholded map",
            {
                "the largest connected component": {},
                "every contour (MaxBoxAccV2)": {"localization": {"box_rule": "every_contour"}},
            },
            "protocol",
            {"tableA7": ("BoxAcc",), "tableA8": ("BoxAcc",)},
            reference="Appendix B: the largest connected component; Choe et al.'s "
            "wsolevaluation: a box around every contour",
        ),
        Choice(
            "rollout_start",
            "Rollout and TIBAV: the first block of the product",
            {
                "block 1 (Chefer et al.'s evaluation script)": {},
                "block 0 (their functions' default)": {
                    "rollout": {"start_layer": 0},
                    "tibav": {"start_layer": 0},
                },
            },
            "method",
            {"table2": ("AD", "AG", "AI"), "table3": ("I", "D")},
            methods=("rollout", "tibav"),
            reference="hila-chefer/Transformer-Explainability: generate_visualizations.py passes "
            "start_layer=1, the generator functions default to 0",
        ),
        Choice(
            "extremal_areas",
            "Extremal Perturbation: the mask areas",
            {
                "one area, 0.1 (TorchRay's function default)": {},
                "four areas summed, smooth 0.09 (TorchRay's VOC benchmark)": {
                    "extremal": {"areas": [0.025, 0.05, 0.1, 0.2], "smooth": 0.09}
                },
            },
            "method",
            {"table1": ("AD", "AG", "AI"), "table3": ("I", "D")},
            methods=("extremal",),
            reference="TorchRay extremal_perturbation (areas [0.1]) and torchray/benchmark "
            "(several areas, smooth 0.09); the paper gives no setting",
        ),
    )
}

#: The models a page shows: its CNNs (``models``), its transformers, or both.
_TRANSFORMER_PAGES = {"table2", "tableA8"}
_BOTH_PAGES = {"table3"}


def _page_models(page: str, params: Mapping[str, Any]) -> list[str]:
    cnns = list(params.get("models") or [])
    vits = list(params.get("transformers") or [])
    if page in _TRANSFORMER_PAGES:
        return vits
    if page in _BOTH_PAGES:
        return cnns + [v for v in vits if v not in cnns]
    return cnns


def _page_metrics(page: str) -> list[str]:
    return {
        "table1": ["AD", "AG", "AI"],
        "table2": ["AD", "AG", "AI"],
        "table3": ["I", "D"],
        "table4": ["AOPC", "MS", "ADCC"],
        "tableA7": LOCALIZATION_METRICS,
        "tableA8": LOCALIZATION_METRICS,
    }[page]


def _with_override(params: Mapping[str, Any], choice: Choice, label: str) -> dict[str, Any]:
    """The parameters under one value of ``choice``."""
    out = dict(params)
    key = "protocol" if choice.kind == "protocol" else "method_options"
    merged = copy.deepcopy(dict(out.get(key) or {}))
    for name, opts in choice.values[label].items():
        merged[name] = {**dict(merged.get(name) or {}), **opts}
    out[key] = merged
    return out


def _score(
    page: str,
    params: Mapping[str, Any],
    cache,
    model,
    method: str,
    metrics: Sequence[str],
    default: bool,
) -> Score | None:
    """The page's score function under ``params``: the table's own (same settings, so the
    default value's rows are the table's) or, for another value, only the ``metrics`` it moves."""
    if page in ("table1", "table2"):
        return None  # AD/AG/AI: TableRun's default
    if page == "table3":
        modes = ("I", "D") if default else tuple(m for m in ("I", "D") if m in metrics)
        return insertion_deletion_scores(int(params.get("id_step") or 224), params, modes=modes)
    if page == "table4":
        ms_methods, adcc_methods = params.get("ms_methods"), params.get("adcc_methods")
        with_ms = ms_methods is None or method in ms_methods
        with_adcc = adcc_methods is None or method in adcc_methods
        parts = ("AOPC", "MS", "ADCC") if default else tuple(metrics)
        if not default and (("MS" in parts and not with_ms) or ("ADCC" in parts and not with_adcc)):
            return None  # the table computes no such value for this method
        options = method_options(params, method)
        return table4_scores(params, cache, model, method, options, with_ms, with_adcc, parts)
    if page in ("tableA7", "tableA8"):
        return localization_scores(params)
    raise ValueError(f"no score function for page {page!r}")


def kendall_tau(a: pd.Series, b: pd.Series) -> float:
    """Kendall's tau between two rankings of the same items (NaN with fewer than 3 in common)."""
    from scipy.stats import kendalltau

    common = a.dropna().index.intersection(b.dropna().index)
    if len(common) < 3:
        return math.nan
    return float(kendalltau(a[common], b[common]).statistic)


@dataclass
class ChoiceResult:
    """What one choice does to one table: ``means`` (index: model, method; columns: (metric,
    value)), ``taus`` (model, metric, value, tau against the book's value), ``claims`` (the page's
    claims under each value, with the book's value's verdict), ``skipped`` (models or methods not
    computed, with the reason)."""

    choice: Choice
    page: str
    means: pd.DataFrame
    taus: pd.DataFrame
    claims: pd.DataFrame
    skipped: list[str] = field(default_factory=list)


def _boxacc_means(rows: pd.DataFrame) -> pd.Series:
    """MaxBoxAccV2 per (model, method) from the valid rows' pooled hit tables."""
    from ..metrics.localization import box_accuracy

    out = {}
    for (model_name, method), d in rows.groupby(["model", "method"], sort=False):
        hits = torch.stack([unpack_hits(h) for h in d["box_hits"]])
        out[(model_name, method)] = float(box_accuracy(hits)["BoxAcc"])
    return pd.Series(out, name="BoxAcc").rename_axis(["model", "method"])


def evaluate(
    choice: Choice,
    params: Mapping[str, Any],
    methods: Sequence[str] | None = None,
) -> list[ChoiceResult]:
    """Recompute the rows ``choice`` moves under each of its values (see the module docstring)
    and compare. ``params``: the sensitivity page's parameters (those of the tables);
    ``methods``: restrict to these methods (``None``: every method of each table)."""
    results = []
    for page, metrics in choice.pages.items():
        page_params = {**dict(params), "models": _page_models(page, params)}
        run = TableRun(page, page_params, _page_metrics(page))
        labels: dict[str, str] = {}
        skipped: list[str] = []
        for model_name in page_params["models"]:
            loaded = run.try_setup(model_name)
            if loaded is None:
                skipped.append(f"{model_name}: pretrained weights not available here")
                continue
            model, data, cache = loaded
            chosen = run.methods(model)
            if methods is not None:
                chosen = [m for m in chosen if m in methods]
            changed = [m for m in chosen if choice.kind != "method" or m in choice.methods]
            if not changed:
                skipped.append(f"{model_name}: none of {', '.join(choice.methods)} in this table")
                continue
            for label in choice.values:
                vparams = _with_override(page_params, choice, label)
                default = label == choice.default
                # A method's option changes only its own maps: the other methods' rows are the
                # table's (the default value's), needed to rank and to check the claims.
                for method in chosen if default else changed:
                    score = _score(page, vparams, cache, model, method, metrics, default)
                    if score is None and page not in ("table1", "table2"):
                        continue
                    config = run.run(
                        model, data, cache, method, score=score,
                        options=method_options(vparams, method),
                    )  # fmt: skip
                    labels[config] = label
        per_image = run.collect()
        if per_image.empty or not labels:
            results.append(
                ChoiceResult(choice, page, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), skipped)
            )
            continue
        per_image = per_image[per_image["config"].isin(labels)].copy()
        per_image["value"] = per_image["config"].map(labels)
        if choice.kind == "method":  # the unchanged methods' rows count under every value
            same = per_image[
                (per_image["value"] == choice.default) & ~per_image["method"].isin(choice.methods)
            ]
            per_image = pd.concat(
                [per_image, *(same.assign(value=v) for v in list(choice.values)[1:])],
                ignore_index=True,
            )
        results.append(_compare(choice, page, run, per_image, metrics, skipped))
    return results


def _compare(
    choice: Choice,
    page: str,
    run: TableRun,
    per_image: pd.DataFrame,
    metrics: Sequence[str],
    skipped: list[str],
) -> ChoiceResult:

    means = {}
    for label in choice.values:
        part = per_image[per_image["value"] == label]
        if part.empty:
            continue
        if page in ("tableA7", "tableA8"):
            valid = part[part["valid"] > 0]
            if not valid.empty:
                means[("BoxAcc", label)] = _boxacc_means(valid)
            continue
        grouped = part.groupby(["model", "method"])[list(metrics)].mean()
        for m in metrics:
            means[(m, label)] = grouped[m]
    table = pd.DataFrame(means)
    if not table.empty:
        table.columns = pd.MultiIndex.from_tuples(table.columns, names=["metric", "value"])
        table = table.rename(index=lambda m: PAPER_NAMES.get(m, m), level="method")
    taus, claims = [], []
    for model_name in dict.fromkeys(per_image["model"]):
        for m in metrics:
            if (m, choice.default) not in table:
                continue
            base = table[(m, choice.default)].xs(model_name, level="model")
            for label in list(choice.values)[1:]:
                if (m, label) not in table:
                    continue
                other = table[(m, label)].xs(model_name, level="model")
                r0, r1 = rank_by_direction(base.dropna(), m), rank_by_direction(other.dropna(), m)
                taus.append(
                    {"model": model_name, "metric": m, "value": label,
                     "kendall_tau": kendall_tau(base, other),
                     "opticam_rank": f"{_fmt_rank(r0)} -> {_fmt_rank(r1)}"}
                )  # fmt: skip
        if page in ("tableA7", "tableA8"):
            continue  # BoxAcc is a dataset-level maximum: no per-image claim to re-check
        verdicts = {}
        for label in choice.values:
            rows = per_image[(per_image["value"] == label) & (per_image["model"] == model_name)]
            rows = rows.assign(variant="")
            if rows.empty:
                continue
            checked = run.claims(rows, model_name, record=False)
            if len(checked):
                verdicts[label] = checked[checked["metric"].isin(metrics)]
        if choice.default not in verdicts:
            continue
        base = verdicts[choice.default].set_index(["metric", "claim"])["verdict"]
        for label, checked in verdicts.items():
            for r in checked.itertuples():
                claims.append(
                    {"page": page, "model": model_name, "metric": r.metric, "claim": r.claim,
                     "choice": choice.title, "value": label, "verdict": r.verdict,
                     "default_verdict": base.get((r.metric, r.claim), "not checked"),
                     "difference": r.difference, "low": r.low, "high": r.high}
                )  # fmt: skip
    return ChoiceResult(choice, page, table, pd.DataFrame(taus), pd.DataFrame(claims), skipped)


def _fmt_rank(ranks: pd.Series) -> str:
    r = ranks.get("Opti-CAM", ranks.get("opticam"))
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "–"
    return f"{int(r)}/{len(ranks)}"
