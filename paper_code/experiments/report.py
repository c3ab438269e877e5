"""The reproducibility report: every claim of the paper the book checks, in one table.

Each page checks the paper's claims on its own rows (:meth:`TableRun.claims`,
:meth:`~TableRun.variant_claims`, :meth:`~TableRun.pair_claims`) and keeps them in
``<output_dir>/<page>_claims.csv``; the protocol-sensitivity page keeps, in
``sensitivity_claims.csv``, the verdict of each claim it re-checked under every value of each open
protocol choice. :func:`gather_claims` reads them all, :func:`claims_table` lays them out for the
page, and :func:`report_summary` writes the short summary in the style of a reproducibility
challenge report (scope, what reproduced, what did not, what could not be run and why).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..layout import PAPER_ORDER

__all__ = [
    "SENSITIVITY_CLAIMS",
    "VERDICTS",
    "claims_table",
    "gather_claims",
    "report_summary",
    "run_weights",
    "sensitive_choices",
]

#: Verdicts, in the order the report counts them.
VERDICTS = ("holds", "not resolved on this data", "contradicted")
#: The file of the sensitivity page's re-checked claims (not a page's own claims).
SENSITIVITY_CLAIMS = "sensitivity_claims.csv"


def run_weights(output_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The weights every network of a run came from: ``{model: identity}`` merged from the pages'
    provenance (``<page>_provenance.json``, ``fig3/provenance.json``), so that the report, which
    loads no network, names the weights behind its claims. A model loaded from different weights by
    different pages (two runs into one folder) lists each identity, joined by `` | ``."""
    import json

    out = Path(output_dir)
    seen: dict[str, list[str]] = {}
    for path in [*sorted(out.glob("*_provenance.json")), out / "fig3" / "provenance.json"]:
        if not path.exists() or path.name == "report_provenance.json":
            continue
        for model, identity in (json.loads(path.read_text()).get("weights") or {}).items():
            if str(identity) not in seen.setdefault(model, []):
                seen[model].append(str(identity))
    return {model: " | ".join(ids) for model, ids in sorted(seen.items())}


def gather_claims(output_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every page's claim checks of a run (``<page>_claims.csv``), in the paper's page order.

    Columns: ``page``, ``table``, ``model``, ``metric``, ``claim``, ``baseline``, ``difference``,
    ``low``, ``high`` (the paired 95% interval of the difference), ``verdict``, ``paper`` (the
    paper's evidence)."""
    frames = [
        pd.read_csv(p)
        for p in sorted(Path(output_dir).glob("*_claims.csv"))
        if p.name != SENSITIVITY_CLAIMS
    ]
    if not frames:
        return pd.DataFrame(
            columns=["page", "table", "model", "metric", "claim", "baseline", "difference",
                     "low", "high", "verdict", "paper"]
        )  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(PAPER_ORDER)}
    df["_order"] = df["page"].map(lambda p: order.get(p, len(order)))
    df = df.sort_values(["_order", "model"], kind="stable").drop(columns="_order")
    return df.reset_index(drop=True)


def sensitive_choices(sensitivity: pd.DataFrame | None, claims: pd.DataFrame) -> pd.Series:
    """For each claim of ``claims``: the protocol choices under which its verdict changes (the
    choice and the value that changes it, e.g. ``"insertion blur: gaussian"``), from the
    sensitivity page's re-checks; empty where none does or the claim was not re-checked."""
    out = pd.Series("", index=claims.index, dtype=object)
    if sensitivity is None or sensitivity.empty:
        return out
    key = ["page", "model", "metric", "claim"]
    changed = sensitivity[sensitivity["verdict"] != sensitivity["default_verdict"]]
    for idx, row in claims.iterrows():
        sel = changed
        for k in key:
            sel = sel[sel[k] == row[k]]
        if len(sel):
            out[idx] = "; ".join(
                dict.fromkeys(f"{c}: {v}" for c, v in zip(sel["choice"], sel["value"]))
            )
    return out


def claims_table(claims: pd.DataFrame, sensitivity: pd.DataFrame | None = None) -> pd.DataFrame:
    """The report's table: one row per claim and network, with the page, the paper's evidence,
    our verdict with the paired difference and its interval, and the protocol choices the verdict
    is sensitive to."""
    sens = sensitive_choices(sensitivity, claims)

    def interval(r: pd.Series) -> str:
        return f"{r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"

    return pd.DataFrame(
        {
            "page": claims["table"],
            "network": claims["model"],
            "claim": claims["claim"],
            "paper's evidence": claims["paper"].fillna(""),
            "verdict": claims["verdict"],
            "difference [95% interval]": claims.apply(interval, axis=1),
            "sensitive to": sens.replace("", "–"),
        }
    )


def _count(claims: pd.DataFrame) -> str:
    counts = claims["verdict"].value_counts()
    return ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)


def report_summary(
    claims: pd.DataFrame,
    params: Mapping[str, Any],
    skipped: Mapping[str, str],
    sensitivity: pd.DataFrame | None = None,
    comparable: bool = False,
) -> str:
    """The short summary above the table, in Markdown: scope, what reproduced, what did not, what
    could not be run here and why, and which claims depend on an open protocol choice.

    ``skipped``: the pages this run left out, with the reason; ``comparable``: whether the run is
    on the paper's networks and data (else the summary says the verdicts concern another setting).
    """
    models = ", ".join(map(str, params.get("models") or []))
    n = params.get("n_images")
    images = "all images" if not n else f"{n} images"
    lines = [
        "**Scope.** The claims the book's pages check, each on its own rows: "
        f"networks {models}, dataset `{params.get('dataset')}` ({images}), Opti-CAM "
        f"{params.get('iterations')} iterations, profile `{params.get('profile')}`. Each verdict is "
        "from a paired 95% bootstrap interval over images of the difference between the two "
        "things the claim compares: *holds* when the interval excludes zero in the paper's "
        "direction, *contradicted* when it excludes zero in the other, *not resolved on this "
        "data* otherwise."
    ]
    if not comparable:
        lines.append(
            "**Not the paper's setting.** This run uses other networks and/or far fewer images "
            "than the paper: the verdicts say whether the paper's orderings hold here, not whether "
            "its numbers are reproduced."
        )
    if claims.empty:
        lines.append("**No claim was checked**: no page with claim checks ran into this folder.")
        return "\n\n".join(lines)
    lines.append(f"**Claims checked: {len(claims)}** ({_count(claims)}).")
    for verdict, title in (("holds", "What reproduced"), ("contradicted", "What did not")):
        sel = claims[claims["verdict"] == verdict]
        if len(sel):
            per = sel.groupby("table", sort=False).size()
            pages = ", ".join(f"{t} ({k})" for t, k in per.items())
            lines.append(f"**{title}.** {len(sel)} claim(s): {pages}.")
            if verdict == "contradicted":
                items = "; ".join(
                    f"{r.table}, {r.model}: {r.claim} (paper: {r.paper})" for r in sel.itertuples()
                )
                lines.append(f"Contradicted here: {items}.")
    unresolved = claims[claims["verdict"] == "not resolved on this data"]
    if len(unresolved):
        lines.append(
            f"**Not resolved.** {len(unresolved)} claim(s) where the interval includes zero: more "
            "images would be needed to tell (the intervals narrow as 1/√n)."
        )
    if skipped:
        items = "; ".join(f"{page}: {why}" for page, why in skipped.items())
        lines.append(f"**Not run here.** {items}.")
    sens = sensitive_choices(sensitivity, claims)
    flagged = int((sens != "").sum())
    if sensitivity is not None and not sensitivity.empty:
        lines.append(
            f"**Protocol choices.** {flagged} of the claims re-checked on the protocol-sensitivity "
            "page change verdict under another value of an open choice (column *sensitive to*); "
            "see that page for the numbers."
        )
    return "\n\n".join(lines)


def skipped_pages(profile: Mapping[str, Any], names: Sequence[str] = PAPER_ORDER) -> dict[str, str]:
    """The pages of ``names`` a profile skips, with the reason it gives (``skip_reasons``)."""
    reasons = profile.get("skip_reasons") or {}
    return {
        n: str(reasons.get(n, "skipped by this profile"))
        for n in names
        if n in (profile.get("skip") or ())
    }
