"""The checks of the paper's claims on a table's rows: each claim compares two sets of per-image
values, and its verdict rests on the paired bootstrap interval of their mean difference
(:func:`paper_code.metrics.uncertainty.paired_bootstrap_ci`, :func:`~paper_code.metrics.uncertainty.verdict`).

:class:`ClaimChecks` is mixed into :class:`~paper_code.experiments.tablerun.TableRun`: a page calls
``run.claims(...)`` (Opti-CAM against the best baseline), ``run.variant_claims(...)`` (the paper's
orderings of Opti-CAM's variants) or ``run.pair_claims(...)`` (any two sets of rows); every check is
kept in ``<output_dir>/<page>_claims.csv`` for the reproducibility report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..methods import PAPER_NAMES
from ..metrics import METRICS
from .display import paper_value_text
from .paper import methods_not_in_paper, paper_label, paper_network, paper_table

__all__ = ["ClaimChecks"]


class ClaimChecks:
    """Claim checks of a table run; needs ``name``, ``params``, ``metrics`` and ``out``."""

    name: str
    params: dict[str, Any]
    metrics: list[str]
    out: Path

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
            # The paper's baselines only: a method in no paper table (one of the reader's) is no
            # part of the paper's claims; it is compared with Opti-CAM on its own.
            ours = [m for m in means.index if m in methods_not_in_paper()]
            baselines = means.drop(["opticam", "fakecam", *ours], errors="ignore").dropna()
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
                compared = v
                if sign * paper_m[reference] >= sign * paper_m[v]:
                    claim = f"{reference} {word} {m} than {v}"
                else:  # the claim's subject is v: its difference is v minus the reference
                    claim, compared = f"{v} {word} {m} than {reference}", reference
                    d, lo, hi = -d, -hi, -lo
                vd = verdict(lo, hi, info.direction)
                evidence = (
                    f"{reference} {paper_value_text(paper_m[reference])}, "
                    f"{v} {paper_value_text(paper_m[v])} ({ref['network'].iloc[0]})"
                )
                out.append(
                    {"metric": m, "claim": claim, "baseline": compared, "difference": d, "low": lo,
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
