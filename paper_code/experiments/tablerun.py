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
from . import distributed as _dist
from . import loop as ex
from .claims import ClaimChecks
from .keys import config_id, method_options, result_key
from .paper import (
    COMPARISON_TABLES,
    PAPER_MODELS,
    TRANSFORMER_NETWORK,
    methods_not_in_paper,
    paper_network,
    paper_table,
)
from .results import ResultTable
from .scores import ScoreFn, classification_scores
from .sources import dataset_ids

# tqdm's notebook bar warns once per kernel when ipywidgets is missing (papermill kernels): harmless.
warnings.filterwarnings("ignore", message="IProgress not found")


def paper_methods(table: str, network: str) -> list[str]:
    """The paper's row labels of ``table`` for ``network``, in the paper's order; for a network
    the table does not have (a study table of VGG16 run on EfficientNet-Lite0 or ResNet50), those
    of the table's first network, so that the same rows are computed on the network at hand.

    >>> paper_methods("table5", "resnet50")[-3:]
    ['Layer-CAM', 'ExPerturbation', 'Opti-CAM']
    """
    ref = paper_table(table)
    networks = list(dict.fromkeys(ref["network"]))
    ref = ref[ref["network"] == (network if network in networks else networks[0])]
    return list(dict.fromkeys(ref["method"]))


def table_methods(
    table: str, network: str, family: str = "cnn", selected: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(ids, paper_only)``: the registered methods the paper has in ``table`` for ``network``, in
    the paper's row order (restricted to ``selected`` when given), then, in the comparison tables
    (:data:`COMPARISON_TABLES`), the methods in no paper table that run on ``family``; and the
    paper's rows that ``paper_code`` cannot compute (shown as paper-only, never dropped)."""
    ids, missing = [], []
    for name in paper_methods(table, network):
        mid = method_for_paper_name(name)
        if mid is None or family not in METHODS[mid].families:
            if mid is None and not name.startswith("S :="):
                missing.append(name)
            continue
        if selected is None or mid in selected:
            ids.append(mid)
    if table in COMPARISON_TABLES:
        for mid in methods_not_in_paper():
            if family in METHODS[mid].families and (selected is None or mid in selected):
                ids.append(mid)
    return ids, missing


class TableRun(ClaimChecks):
    """Bookkeeping of one table notebook: rows file, configurations run, summaries.

    Args:
        name: the notebook / paper table name (``table1``, ``tableA12`` ...).
        params: the notebook's parameters (``models``, ``dataset``, ``root``, ``n_images``,
            ``methods``, ``iterations``, ``device``, ``batch_size``, ``seed``, ``output_dir``,
            ``cache_dir``, and optionally ``study_iterations``, ``n_boot``).
        metrics: the metric columns of the table.
        rows: the name of another page whose rows file this run shares (default: ``name``).

    A table page in five lines (EfficientNet-Lite0 on two sample photos):

    >>> import tempfile
    >>> params = {"output_dir": tempfile.mkdtemp(), "n_images": 2, "batch_size": 2}
    >>> run = TableRun("table1", params, ["AD", "AG", "AI"])
    >>> model, data, cache = run.setup("efficientnet_lite0")
    >>> config = run.run(model, data, cache, "gradcam")  # rows appended as they are computed
    >>> per_image = run.collect()
    >>> summary = run.summarize(per_image)  # means with 95% bootstrap intervals
    >>> summary.loc[0, "method"], int(summary.loc[0, "images"]), sorted(per_image["id"])
    ('Grad-CAM', 2, ['chelsea', 'coffee'])
    """

    def __init__(
        self,
        name: str,
        params: Mapping[str, Any],
        metrics: Sequence[str],
        rows: str | None = None,
    ) -> None:
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
        # ``rows``: another page's rows file, shared (its rows are reused, nothing recomputed).
        self.table = ResultTable(shared / f"{rows or name}_rows.csv")
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

    # ------------------------------------------------------------------ display
    def comparable(self, model_name: str) -> bool:
        """Whether our numbers can be subtracted from the paper's: the paper's network on the
        paper's data (:data:`PAPER_MODELS`; on the medical datasets, our fine-tuned checkpoint)."""
        return model_name in PAPER_MODELS.get(str(self.params.get("dataset")), ())

    def report(
        self,
        per_image: pd.DataFrame,
        summary: pd.DataFrame,
        model_name: str,
        title: str,
        *,
        columns: Sequence[str] = (),
        table: str | None = None,
        dataset: str | None = None,
        paper_only: Sequence[str] | None = None,
        comparable: bool | None = None,
        note: str = "",
        metrics_per_table: int | None = None,
        record: bool = True,
    ) -> pd.DataFrame:
        """What every table page shows for one network: the paper's claims checked on our rows
        (:meth:`claims`, kept for the report) in one generated sentence, with the agreement of our
        ranking of the methods with the paper's where the numbers cannot be compared directly
        (:func:`~paper_code.experiments.display.ranking_agreement`), then our means with their
        intervals beside the paper's values (:func:`~paper_code.experiments.display.beside_paper`).

        ``columns``: shown after the table's metrics (e.g. ``["T"]``); ``table``/``dataset``: the
        paper's table and dataset (default: this page's); ``paper_only``: the paper's rows we
        cannot compute (default: :meth:`methods_missing`); ``comparable``: default
        :meth:`comparable`; ``note``: a line shown under the sentence; ``record``: keep the claims
        for the reproducibility report (off for a page that shows another page's table). Returns
        the claims.

        >>> run = TableRun("table1", {"output_dir": tmp}, ["AD", "AG", "AI"])  # doctest: +SKIP
        >>> claims = run.report(per_image, summary, "resnet50", "ResNet50: AD↓ AG↑ AI↑ in %")  # doctest: +SKIP
        """
        from IPython.display import Markdown, display

        from .display import beside_paper, headline, ranking_agreement, show

        table = table or self.name
        ref = paper_table(table)
        ref = ref[ref["network"] == paper_network(model_name)]
        if dataset is not None:
            ref = ref[ref["dataset"] == dataset]
        mine = summary[summary["model"] == model_name]
        comparable = self.comparable(model_name) if comparable is None else comparable
        claims = self.claims(per_image, model_name, table=table, dataset=dataset, record=record)
        agree = None if comparable else ranking_agreement(mine, ref, self.metrics)
        display(Markdown(f"**{model_name}.** " + headline(claims, agree)))
        if note:
            display(Markdown(note))
        if paper_only is None:
            paper_only = self.methods_missing(model_name, table)
        res = beside_paper(mine, ref, [*self.metrics, *columns], comparable=comparable,
                           paper_only=paper_only)  # fmt: skip
        ours = {PAPER_NAMES.get(m, m) for m in methods_not_in_paper()}
        res.index = [f"{i} (not in the paper)" if i in ours else i for i in res.index]
        res.index.name = "method"
        show(res, title, metrics_per_table=metrics_per_table)
        extra = self.against_opticam(per_image, model_name)
        if extra:
            display(Markdown(extra))
        return claims

    def against_opticam(self, per_image: pd.DataFrame, model_name: str) -> str:
        """For the methods in no paper table (e.g. registered from outside the package) that ran
        here: each metric's paired difference with Opti-CAM on the same images, its 95% interval
        and the verdict of "this method is better than Opti-CAM" (one Markdown line per method;
        empty when there is none). Not one of the paper's claims: shown, not recorded."""
        from ..metrics.uncertainty import verdict

        mine = per_image[(per_image["model"] == model_name) & (per_image["variant"] == "")]
        lines = []
        for method in methods_not_in_paper():
            if method not in set(mine["method"]) or "opticam" not in set(mine["method"]):
                continue
            parts = []
            for m, info, _ in self._checkable(mine):
                d, lo, hi = self.paired(mine, m, {"method": method}, {"method": "opticam"})
                if math.isnan(d):
                    continue
                v = verdict(lo, hi, info.direction)
                word = {"holds": "better", "contradicted": "worse"}.get(v, "not resolved")
                parts.append(f"{m} {d:+.2f} [{lo:+.2f}, {hi:+.2f}] ({word})")
            if parts:
                name = PAPER_NAMES.get(method, method)
                lines.append(f"**{name}** (not in the paper) minus Opti-CAM, paired over images: "
                             + "; ".join(parts) + ".")  # fmt: skip
        return "\n\n".join(lines)

    def show_paper_values(
        self, model_name: str, reason: str, columns: Sequence[str] | None = None
    ) -> None:
        """For a network this run could not compute (``reason``): the paper's values alone."""
        from IPython.display import Markdown, display

        from .display import show

        ref = paper_table(self.name)
        ref = ref[ref["network"] == paper_network(model_name)]
        display(Markdown(f"**{model_name}: not computed here** ({reason}). The paper's values for "
                         f"{paper_network(model_name)}:"))  # fmt: skip
        wide = ref.pivot_table(index="method", columns="metric", values="value", sort=False)
        show(wide[[c for c in (columns or self.metrics) if c in wide]],
             f"The paper's {paper_network(model_name)}")  # fmt: skip
