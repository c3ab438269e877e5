"""What every table notebook shares: which methods it runs, resumable rows keyed by the full
configuration, summaries with confidence intervals, and the comparison beside the paper.

A notebook keeps only what is specific to its table (the metric it computes, the variants it sweeps,
its prose); the bookkeeping is here:

>>> run = TableRun("table1", params, ["AD", "AG", "AI"])            # doctest: +SKIP
>>> model, data, cache = run.setup("efficientnet_lite0")           # doctest: +SKIP
>>> for method in run.methods(model):                               # doctest: +SKIP
...     run.run(model, data, cache, method)                         # doctest: +SKIP
>>> per_image = run.collect(data)                                   # doctest: +SKIP
>>> summary = run.summarize(per_image)                              # doctest: +SKIP

Rows are keyed by :func:`paper_code.experiments.config_id` of the full configuration
(method options, iterations, objective, normalization, layer, target rule, weights, model form and
the table's own settings), so rerunning with a changed parameter into the same folder computes new
rows and never shows stale ones.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..methods import METHODS, PAPER_NAMES, method_for_paper_name
from ..metrics import METRICS
from . import distributed as _dist
from . import loop as ex
from .display import paper_value_text
from .keys import config_id, method_options, result_key
from .paper import PAPER_NETWORK, paper_label, paper_table
from .results import ResultTable
from .scores import ScoreFn, classification_scores
from .sources import dataset_ids

# tqdm's notebook bar warns once per kernel when ipywidgets is missing (papermill kernels): harmless.
warnings.filterwarnings("ignore", message="IProgress not found")

#: The paper's network name of each model family column (Tables 2, 3 and A.8 use the transformers).
TRANSFORMER_NETWORK = {
    "vit_base_patch16_224": "vit_b",
    "deit_base_patch16_224": "deit_b",
    "vit_tiny": "vit_b",  # the test ViT is shown against ViT-B
}


#: The networks of ours whose numbers the paper reports, per dataset (App. E: fine-tuned CNNs).
PAPER_MODELS = {
    "imagenet": ("resnet50", "vgg16_bn", *TRANSFORMER_NETWORK),
    "chestxray": ("resnet50", "vgg16_bn"),
    "kvasir": ("resnet50", "vgg16_bn"),
}


def paper_network(model_name: str) -> str:
    """The paper's network whose numbers a model is shown against."""
    return TRANSFORMER_NETWORK.get(model_name) or PAPER_NETWORK.get(model_name, "resnet50")


def paper_methods(table: str, network: str) -> list[str]:
    """The paper's row labels of ``table`` for ``network``, in the paper's order."""
    ref = paper_table(table)
    ref = ref[ref["network"] == network]
    return list(dict.fromkeys(ref["method"]))


def table_methods(
    table: str, network: str, family: str = "cnn", selected: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(ids, paper_only)``: the registered methods the paper has in ``table`` for ``network``, in
    the paper's row order (restricted to ``selected`` when given), and the paper's rows that
    ``paper_code`` cannot compute (shown as paper-only, never dropped)."""
    ids, missing = [], []
    for name in paper_methods(table, network):
        mid = method_for_paper_name(name)
        if mid is None or family not in METHODS[mid].families:
            if mid is None and not name.startswith("S :="):
                missing.append(name)
            continue
        if selected is None or mid in selected:
            ids.append(mid)
    return ids, missing


class TableRun:
    """Bookkeeping of one table notebook: rows file, configurations run, summaries.

    Args:
        name: the notebook / paper table name (``table1``, ``tableA12`` ...).
        params: the notebook's parameters (``models``, ``dataset``, ``root``, ``n_images``,
            ``methods``, ``iterations``, ``device``, ``batch_size``, ``seed``, ``output_dir``,
            ``cache_dir``, and optionally ``study_iterations``, ``n_boot``).
        metrics: the metric columns of the table.
    """

    def __init__(self, name: str, params: Mapping[str, Any], metrics: Sequence[str]) -> None:
        self.name = name
        self.params = dict(params)
        self.metrics = list(metrics)
        self.start = time.time()
        shared = Path(self.params.get("output_dir") or "_build/results")
        shared.mkdir(parents=True, exist_ok=True)
        # Sharded run (torchrun): rows from every rank in the shared folder; what only rank 0
        # publishes (summary, configs, provenance, figures) in a folder of each rank > 0.
        self.params["device"] = _dist.device(self.params.get("device", "cpu"))
        self.out = _dist.rank_dir(shared)
        self.out.mkdir(parents=True, exist_ok=True)
        self.table = ResultTable(shared / f"{name}_rows.csv")
        self.configs: dict[str, dict] = {}
        self.data = None
        #: Networks that could not be loaded, with the reason (see :meth:`try_setup`).
        self.unavailable: dict[str, str] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, model_name: str):
        """``(model, data, cache)`` from the parameters (see :func:`experiments.setup`)."""
        model, data, cache, _ = ex.setup(self.params, model_name)
        self.data = data
        return model, data, cache

    def try_setup(self, model_name: str):
        """:meth:`setup`, or ``None`` when the network's pretrained weights cannot be had here
        (offline without a cached copy): the reason is kept in :attr:`unavailable` for the page."""
        from ..models import WeightsUnavailableError

        try:
            return self.setup(model_name)
        except WeightsUnavailableError as err:
            self.unavailable[model_name] = str(err)
            return None

    def methods(self, model, table: str | None = None) -> list[str]:
        """The paper's methods of this table for ``model``'s network, as selected by ``methods``."""
        ids, _ = table_methods(
            table or self.name,
            paper_network(model.name),
            getattr(model, "family", "cnn"),
            self.params.get("methods"),
        )
        return ids

    def paper_only(self, model, table: str | None = None) -> list[str]:
        """The paper's rows of this table that ``paper_code`` cannot compute."""
        return table_methods(
            table or self.name, paper_network(model.name), getattr(model, "family", "cnn")
        )[1]

    def methods_missing(self, model_name: str, table: str | None = None) -> list[str]:
        """:meth:`paper_only` by model name (the family is read from the registry of models)."""
        family = "vit" if model_name in TRANSFORMER_NETWORK else "cnn"
        return table_methods(table or self.name, paper_network(model_name), family)[1]

    def options(self, method: str, iterations: int | None = None) -> dict[str, Any]:
        """Options of ``method`` in the notebooks (:func:`experiments.method_options`)."""
        return method_options(self.params, method, iterations)

    # ------------------------------------------------------------------ rows
    def run(
        self,
        model,
        data,
        cache,
        method: str,
        *,
        variant: str = "",
        options: Mapping[str, Any] | None = None,
        target_rule: str = "ground_truth",
        score: ScoreFn | None = None,
        settings: Mapping[str, Any] | None = None,
        key_extra: Mapping[str, Any] | None = None,
        maps_fn: Callable[[Any], tuple[torch.Tensor, list[float]]] | None = None,
    ) -> str:
        """Compute (or resume) the rows of one configuration; returns its ``config`` id.

        ``score(model, batch, maps)`` gives the metric columns (default AD/AG/AI); ``settings``
        are the table's own parameters that change the values (they enter the key); ``maps_fn``
        replaces the cached maps of ``method`` (e.g. a box mask), keyed by ``settings``.
        """
        options = dict(self.options(method) if options is None else options)
        settings = {"variant": variant, **getattr(score, "settings", {}), **dict(settings or {})}
        key = result_key(model, method, target_rule, options, **settings)
        if key_extra:
            key["extra"] = dict(key_extra)
        config = config_id(key)
        self.configs[config] = key
        score = score or classification_scores
        tag = {"model": model.name, "method": method, "variant": variant, "config": config}

        def rows(batch):
            if maps_fn is not None:
                maps, seconds = maps_fn(batch)
            else:
                maps, seconds = ex.cached_maps(
                    cache, model, method, batch, target_rule, options, key_extra
                )
            values = score(model, batch, maps)
            pred = batch.logits.argmax(1)
            return [
                {
                    "id": image_id,
                    "label": int(batch.labels[j]),
                    "pred": int(pred[j]),
                    "seconds": seconds[j],
                    **{
                        k: v[j] if isinstance(v, (list, tuple)) else float(v[j])
                        for k, v in values.items()
                    },
                }
                for j, image_id in enumerate(batch.ids)
            ]

        ex.run_rows(
            self.table,
            model,
            data,
            rows,
            tag,
            self.params.get("batch_size"),  # None -> 8; "auto" (ex.resolve_batch_size)
            self.params.get("device", "cpu"),
            progress=False,
        )
        self._write_configs()
        return config

    def _write_configs(self) -> None:
        path = self.out / f"{self.name}_configs.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        known.update(self.configs)
        text = json.dumps(known, indent=1, sort_keys=True, default=str) + "\n"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader never sees a half-written file

    def collect(self, data=None) -> pd.DataFrame:
        """The rows of the configurations run in this session, for the images of ``data``.

        In a sharded run every rank first waits for the others (a barrier), then reads the rows of
        every rank's file: the merged rows equal those of a single process."""
        _dist.barrier(f"collect:{self.name}")
        data = data if data is not None else self.data
        df = self.table.read(dtype={"config": str, "variant": str, "method": str, "model": str})
        if df.empty:
            return df
        df["variant"] = df["variant"].fillna("")
        df = df[df["config"].isin(self.configs)]
        if data is not None:
            df = df[df["id"].isin(set(dataset_ids(data)))]
        df = df.drop_duplicates(subset=["config", "id"], keep="last")
        return df.reset_index(drop=True)

    # ------------------------------------------------------------------ summaries
    def summarize(
        self,
        per_image: pd.DataFrame,
        by: Sequence[str] = ("model", "method", "variant"),
        metrics: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Means per group with 95% bootstrap intervals (``<m>_lo``, ``<m>_hi``), time ``T`` and
        the image count; ``method`` in the paper's spelling; written to ``<name>_summary.csv``."""
        from ..metrics.uncertainty import summarize_ci

        metrics = [m for m in (metrics or self.metrics) if m in per_image]
        by = list(by)
        summary = summarize_ci(
            per_image,
            metrics,
            by,
            resamples=int(self.params.get("n_boot") or 1000),
            seed=int(self.params.get("seed") or 0),
        ).drop(columns="n")
        order = per_image[by].drop_duplicates()  # the order in which the rows were run
        summary = order.merge(summary, on=by, how="left").reset_index(drop=True)
        if "seconds" in per_image:
            t = per_image.groupby(by, sort=False)["seconds"].mean().rename("T")
            summary = summary.merge(t.reset_index(), on=by, how="left")
        n = per_image.groupby(by, sort=False)["id"].count().rename("images")
        summary = summary.merge(n.reset_index(), on=by, how="left")
        summary.insert(
            by.index("method") + 1 if "method" in by else 0,
            "method_id",
            summary["method"] if "method" in by else "",
        )
        if "method" in by:
            summary["method"] = summary["method"].map(lambda m: PAPER_NAMES.get(m, m))
        summary.to_csv(self.out / f"{self.name}_summary.csv", index=False)
        return summary

    def repeat(
        self, model, data, cache, method: str, repeats: int, score: ScoreFn | None = None
    ) -> pd.DataFrame:
        """Rerun ``method`` ``repeats - 1`` more times with other batch compositions (the images in a
        seeded random order, so each batch holds other images) and return the run-to-run spread of
        its means (:func:`paper_code.metrics.uncertainty.run_spread`): which part of the
        uncertainty is the optimization rather than the data. Repeat 0 is the ordinary run."""
        import numpy as np

        from ..metrics.uncertainty import run_spread

        configs = [self.run(model, data, cache, method, score=score)]
        n = len(data)
        for r in range(1, int(repeats)):
            order = np.random.default_rng([int(self.params.get("seed") or 0), r]).permutation(n)
            shuffled = torch.utils.data.Subset(data, order.tolist())
            configs.append(
                self.run(model, shuffled, cache, method, score=score, key_extra={"repeat": r},
                         variant=f"repeat {r}")
            )  # fmt: skip
        df = self.collect(data)
        df = df[df["config"].isin(configs)].copy()
        df["repeat"] = df["config"].map({c: i for i, c in enumerate(configs)})
        metrics = [m for m in self.metrics if m in df]
        return run_spread(df, metrics, by=("model", "method"))

    def paired(
        self,
        per_image: pd.DataFrame,
        metric: str,
        a: Mapping[str, Any],
        b: Mapping[str, Any],
    ) -> tuple[float, float, float]:
        """Paired-bootstrap mean difference ``a - b`` of ``metric`` over the images both have;
        ``a``/``b`` select rows by column values (e.g. ``{"method": "opticam"}``)."""
        from ..metrics.uncertainty import paired_bootstrap_ci

        def pick(sel):
            mask = pd.Series(True, index=per_image.index)
            for k, v in sel.items():
                mask &= per_image[k] == v
            return per_image[mask].set_index("id")[metric]

        x, y = pick(a), pick(b)
        common = x.index.intersection(y.index)
        res = paired_bootstrap_ci(
            x.loc[common].to_numpy(float),
            y.loc[common].to_numpy(float),
            resamples=int(self.params.get("n_boot") or 1000),
            seed=int(self.params.get("seed") or 0),
        )
        return float(res.mean), float(res.low), float(res.high)

    def _checkable(self, mine: pd.DataFrame):
        """``(metric, info, sign)`` for the metrics of this table with values in ``mine``; ``sign``
        is +1 where higher is better, -1 where lower is."""
        for m in self.metrics:
            info = METRICS.get(m)
            if info is None or m not in mine or mine[m].isna().all():
                continue
            yield m, info, 1 if info.direction == "higher" else -1

    def claims(
        self,
        per_image: pd.DataFrame,
        model_name: str,
        table: str | None = None,
        dataset: str | None = None,
        record: bool = True,
        variant: str = "",
    ) -> pd.DataFrame:
        """The paper's Opti-CAM claims of this table, checked on our rows with paired intervals.

        For each metric: if the paper's Opti-CAM beats every baseline, the claim is "Opti-CAM
        beats the best baseline"; otherwise "the paper's best method beats Opti-CAM". The best
        baseline is chosen on *our* means; the verdict is from the paired bootstrap interval of the
        difference (``holds`` only when it excludes zero in the claimed direction). ``dataset``
        selects the paper's rows of one dataset (its ``dataset`` column) in a table with several.
        ``record``: keep them for the reproducibility report (:meth:`record_claims`); off for
        checks under other protocol choices (the sensitivity page). ``variant``: the rows (ours and
        the paper's) of one variant of the table (Table A.14: ``no_input_normalization``).
        """
        from ..metrics.uncertainty import verdict

        ref = paper_table(table or self.name)
        ref = ref[(ref["network"] == paper_network(model_name)) & (ref["variant"] == variant)]
        if dataset is not None:
            ref = ref[ref["dataset"] == dataset]
        mine = per_image[(per_image["model"] == model_name) & (per_image["variant"] == variant)]
        out = []
        for m, info, sign in self._checkable(mine):
            paper_m = ref[ref["metric"] == m].dropna(subset=["value"])
            paper_m = paper_m[
                ~paper_m["method"].isin(["Fake-CAM"]) & ~paper_m["method"].str.startswith("S :=")
            ]
            if "Opti-CAM" not in set(paper_m["method"]) or "opticam" not in set(mine["method"]):
                continue
            vals = paper_m.set_index("method")["value"] * sign
            paper_best = vals.drop("Opti-CAM").idxmax() if len(vals) > 1 else None
            opti_best_in_paper = paper_best is None or vals["Opti-CAM"] >= vals[paper_best]
            means = mine.groupby("method")[m].mean() * sign
            baselines = means.drop(["opticam", "fakecam"], errors="ignore").dropna()
            if baselines.empty:
                continue
            best = baselines.idxmax()
            d, lo, hi = self.paired(mine, m, {"method": "opticam"}, {"method": best})
            if variant:
                claim_of = f" ({variant.replace('_', ' ')})"
            else:
                claim_of = ""
            paper_value = paper_m.set_index("method")["value"]
            if opti_best_in_paper:
                claim = f"Opti-CAM {'higher' if sign > 0 else 'lower'} {m} than the best baseline"
                claim += claim_of
                v = verdict(lo, hi, info.direction)
            else:
                claim = f"Opti-CAM is not the best on {m} (paper: {paper_best}){claim_of}"
                # The claim holds when the best baseline beats Opti-CAM.
                v = verdict(-hi, -lo, info.direction)
            evidence = f"Opti-CAM {paper_value_text(paper_value['Opti-CAM'])}"
            if paper_best is not None:
                evidence += f", {paper_best} {paper_value_text(paper_value[paper_best])}"
            out.append(
                {
                    "metric": m,
                    "claim": claim,
                    "baseline": PAPER_NAMES.get(best, best),
                    "difference": d,
                    "low": lo,
                    "high": hi,
                    "verdict": v,
                    "paper": f"{evidence} ({ref['network'].iloc[0]})",
                }
            )
        out = pd.DataFrame(out)
        return self.record_claims(out, model_name, table) if record else out

    def variant_claims(
        self,
        per_image: pd.DataFrame,
        model_name: str,
        reference: str,
        method: str = "opticam",
        table: str | None = None,
        record: bool = True,
    ) -> pd.DataFrame:
        """The paper's orderings between ``method``'s variants (the study tables: objectives and
        normalizations, target classes), checked on our rows with paired intervals.

        For every other variant the paper and we both have, and every metric: the claim is the
        paper's order of ``reference`` and that variant (e.g. "Mask/Range higher AG than
        Diff/Range"); the verdict is from the paired bootstrap interval of our per-image difference
        (``holds`` only when it excludes zero in the paper's direction). The paper's rows are those
        of the network :func:`paper_network` names, or of the table's only network. Same columns
        as :meth:`claims`, so :func:`headline` writes the sentence."""
        from ..metrics.uncertainty import verdict

        ref = paper_table(table or self.name)
        networks = list(dict.fromkeys(ref["network"]))
        network = paper_network(model_name)
        ref = ref[ref["network"] == (network if network in networks else networks[0])]
        ref = ref[ref["method"] == PAPER_NAMES.get(method, method)]
        mine = per_image[(per_image["model"] == model_name) & (per_image["method"] == method)]
        out = []
        for m, info, sign in self._checkable(mine):
            paper_m = ref[ref["metric"] == m].dropna(subset=["value"]).set_index("variant")["value"]
            if reference not in paper_m.index or reference not in set(mine["variant"]):
                continue
            for v in dict.fromkeys(mine["variant"]):
                if v == reference or v not in paper_m.index:
                    continue
                d, lo, hi = self.paired(mine, m, {"variant": reference}, {"variant": v})
                word = "higher" if sign > 0 else "lower"
                if sign * paper_m[reference] >= sign * paper_m[v]:
                    claim, vd = f"{reference} {word} {m} than {v}", verdict(lo, hi, info.direction)
                else:
                    claim, vd = (
                        f"{v} {word} {m} than {reference}",
                        verdict(-hi, -lo, info.direction),
                    )
                evidence = (
                    f"{reference} {paper_value_text(paper_m[reference])}, "
                    f"{v} {paper_value_text(paper_m[v])} ({ref['network'].iloc[0]})"
                )
                out.append(
                    {"metric": m, "claim": claim, "baseline": v, "difference": d, "low": lo,
                     "high": hi, "verdict": vd, "paper": evidence}
                )  # fmt: skip
        out = pd.DataFrame(out)
        return self.record_claims(out, model_name, table) if record else out

    def pair_claims(
        self,
        per_image: pd.DataFrame,
        model_name: str,
        pairs: Sequence[Mapping[str, Any]],
        table: str | None = None,
        record: bool = True,
    ) -> pd.DataFrame:
        """Claims that one set of rows beats another, each checked with a paired interval.

        Each pair: ``metric``; ``a`` and ``b``, the rows compared (column values, e.g.
        ``{"method": "gradcam", "variant": ""}``; ``model`` is added); ``claim`` (the sentence: *a*
        is better than *b* on ``metric``, in the metric's direction); ``paper``, the paper's
        evidence; optionally ``baseline``, the label of *b*. For the pages whose claims are not
        about Opti-CAM against the other methods (Tables 5, A.13 and A.14)."""
        from ..metrics.uncertainty import verdict

        out = []
        for pair in pairs:
            m = pair["metric"]
            info = METRICS[m]
            a = {"model": model_name, **pair["a"]}
            b = {"model": model_name, **pair["b"]}
            d, lo, hi = self.paired(per_image, m, a, b)
            if math.isnan(d):
                continue
            out.append(
                {"metric": m, "claim": pair["claim"], "baseline": pair.get("baseline", ""),
                 "difference": d, "low": lo, "high": hi, "verdict": verdict(lo, hi, info.direction),
                 "paper": pair.get("paper", "")}
            )  # fmt: skip
        out = pd.DataFrame(out)
        return self.record_claims(out, model_name, table) if record else out

    def record_claims(
        self, claims: pd.DataFrame, model_name: str, table: str | None = None
    ) -> pd.DataFrame:
        """Add the page, table and network to ``claims`` and keep them in ``<name>_claims.csv``
        (one row per network and claim, the newest check of each): what the reproducibility
        report gathers from every page. Returns ``claims`` unchanged for the page's headline."""
        if claims.empty:
            return claims
        rows = claims.assign(
            page=self.name, table=paper_label(table or self.name), model=model_name
        )
        path = self.out / f"{self.name}_claims.csv"
        if path.exists():
            old = pd.read_csv(path)
            keep = ~old.set_index(["model", "metric", "claim"]).index.isin(
                rows.set_index(["model", "metric", "claim"]).index
            )
            rows = pd.concat([old[keep], rows], ignore_index=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        rows.to_csv(tmp, index=False)
        os.replace(tmp, path)  # a reader never sees a half-written file
        return claims

    # ------------------------------------------------------------------ display
    def comparable(self, model_name: str) -> bool:
        """Whether our numbers can be subtracted from the paper's: the paper's network on the
        paper's data (:data:`PAPER_MODELS`; on the medical datasets, our fine-tuned checkpoint)."""
        return model_name in PAPER_MODELS.get(str(self.params.get("dataset")), ())
