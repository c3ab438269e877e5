"""What the notebooks use to show values, wherever they run.

- In the book (executed by ``paper_code reproduce`` / ``run``, rendered by Jupyter Book), :func:`glue`
  is ``myst_nb.glue``: the values fill the ``{glue:text}`` roles of the page's prose.
- Anywhere else (Colab, Binder, a plain Jupyter or ``python`` session), the prose's roles are not
  rendered, so :func:`glue` also prints ``name = value`` under the cell: the numbers are still shown.
  ``myst_nb`` is optional: without it the values are only kept in :data:`GLUED`.

:func:`commit_link` turns a provenance dict (``paper_code.experiments.paper.provenance``) into a
Markdown link to the commit the page was built from; :func:`relative_path` shortens paths for
captions (no absolute paths of the machine that ran the notebook).

The tables beside the paper's (:func:`beside_paper`, :func:`show`), the verdict sentence
(:func:`headline`) and the ranking agreement are here too: how every page shows its numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..metrics import METRICS
from ..names import ENV_BOOK

#: Every value passed to :func:`glue` in this kernel, by name.
GLUED: dict[str, Any] = {}


def in_book_run() -> bool:
    """True when the notebook is being executed for the book (by ``run_notebook``)."""
    return os.environ.get(ENV_BOOK, "") not in ("", "0")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:197] + "..."


def glue(name: str, value: Any, display: bool = False) -> None:
    """``myst_nb.glue(name, value, display)`` when MyST-NB is installed; outside a book run the
    value is also shown (``display=True``: displayed as the cell's output; otherwise printed as
    ``name = value``)."""
    GLUED[name] = value
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        myst_glue = None
    if myst_glue is not None:
        myst_glue(name, value, display=display)
        if display or in_book_run():
            return
    elif display:
        from IPython.display import display as ipy_display

        ipy_display(value)
        return
    if not in_book_run():
        print(f"{name} = {_show(value)}")


def _repository(url: str | None) -> str | None:
    if url is not None:
        return url
    try:
        from ..repository import repository_url

        return repository_url()
    except (OSError, ValueError):  # no _config.yml (an installed package): use the setting alone
        return os.environ.get("PAPER_CODE_REPOSITORY", "")


def commit_link(info: Mapping[str, Any] | str, url: str | None = None) -> str:
    """Markdown for the commit a page was built from: ``[abc123def456](…/commit/abc123def456)``.

    ``info``: a provenance dict (its ``git_commit``) or the commit string itself. A ``+dirty``
    commit (uncommitted changes) links to its base commit and says so; an unknown commit or a
    repository with no web page (local folder) gives the plain text."""
    sha = str(info.get("git_commit", "unknown") if isinstance(info, Mapping) else info)
    from ..repository import commit_url

    try:
        link = commit_url(sha, _repository(url))
    except (OSError, ValueError):
        link = ""
    base, dirty = sha.split("+")[0], "+dirty" in sha
    text = f"[`{base}`]({link})" if link else f"`{base}`"
    return text + (" with uncommitted changes" if dirty else "")


def relative_path(path: str | os.PathLike[str], start: str | os.PathLike[str] | None = None) -> str:
    """``path`` relative to ``start`` (default: the repository root, else the current folder) when
    inside it, else with the home folder written ``~``: for captions and printed messages."""
    from ..layout import REPO_ROOT

    p = Path(path).expanduser().resolve()
    for base in [Path(start)] if start is not None else [REPO_ROOT, Path.cwd()]:
        try:
            return p.relative_to(Path(base).resolve()).as_posix() or "."
        except ValueError:
            continue
    home = Path.home().resolve()
    try:
        return "~/" + p.relative_to(home).as_posix()
    except ValueError:
        return p.as_posix()


def arrow(metric: str) -> str:
    """↑ or ↓ from the metric's declared direction (:data:`paper_code.metrics.METRICS`)."""
    info = METRICS.get(metric)
    if info is None:
        return ""
    return "↑" if info.direction == "higher" else "↓"


#: Digits shown per metric (ratios and log-ratios need two).
DIGITS = {"MS": 2, "SM": 2, "T": 2}


def with_interval(summary: pd.DataFrame, metric: str, digits: int | None = None) -> pd.Series:
    """Compact ``mean±h`` strings of a summary column, ``h`` half the width of its 95% bootstrap
    interval (the exact bounds are the ``<metric>_lo``/``_hi`` columns of the summary CSV);
    NaN-safe, the plain mean where there is no interval."""
    digits = DIGITS.get(metric, 1) if digits is None else digits

    def fmt(row):
        v = row[metric]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
        if lo is None or (isinstance(lo, float) and math.isnan(lo)):
            return f"{v:.{digits}f}"
        return f"{v:.{digits}f}±{(hi - lo) / 2:.{digits}f}"

    return summary.apply(fmt, axis=1)


def paper_value_text(v: float, digits: int = 2) -> str:
    return "–" if pd.isna(v) else f"{v:.{digits}f}".rstrip("0").rstrip(".")


def rank_by_direction(values: pd.Series, metric: str) -> pd.Series:
    """Rank 1 = best, by the metric's direction."""
    info = METRICS.get(metric)
    ascending = info is not None and info.direction == "lower"
    return values.rank(ascending=ascending, method="min")


def beside_paper(
    summary: pd.DataFrame,
    ref: pd.DataFrame,
    metrics: Sequence[str],
    on: Sequence[str] = ("method",),
    comparable: bool = False,
    paper_only: Sequence[str] = (),
) -> pd.DataFrame:
    """Our means (with 95% intervals) beside the paper's values, one row per ``on`` key in the
    paper's row order (then ours that the paper lacks).

    ``ref`` holds the paper's tidy rows of one network. If ``comparable`` (the paper's network and
    data), a ``diff`` column per metric gives ours minus the paper's; otherwise the ranks of the
    method among those both tables have (``rank``: ours/paper), since a difference between another
    network on a few photos and the paper's ResNet50 on 50,000 images means nothing. Rows listed in
    ``paper_only`` (methods ``paper_code`` cannot compute) are marked.
    """
    on = list(on)
    ours = summary.set_index(on)
    order = list(dict.fromkeys(zip(*(ref[c] for c in on))))
    keys = [k if isinstance(k, tuple) else (k,) for k in ours.index]
    order += [k for k in keys if k not in order]
    idx = pd.MultiIndex.from_tuples(order, names=on)
    if len(on) == 1:
        ours.index = pd.MultiIndex.from_tuples([(k,) for k in ours.index], names=on)
    pivot = ref.pivot_table(index=on, columns="metric", values="value", aggfunc="first")
    if len(on) == 1:
        pivot.index = pd.MultiIndex.from_tuples([(k,) for k in pivot.index], names=on)
    cols: dict[tuple[str, str], Any] = {}
    for m in metrics:
        label = f"{m} {arrow(m)}".strip()
        mine = ours[m].reindex(idx) if m in ours else pd.Series(math.nan, index=idx)
        theirs = pivot[m].reindex(idx) if m in pivot else pd.Series(math.nan, index=idx)
        shown = with_interval(ours.reindex(idx), m) if m in ours else pd.Series("–", index=idx)
        # One cell per metric, "ours±h (paper)": the compact layout that fits the page.
        cols[(label, "ours (paper)")] = [
            f"{a} ({paper_value_text(b)})" for a, b in zip(shown, theirs)
        ]
        if comparable:
            cols[(label, "diff")] = (mine - theirs).map(lambda v: "" if pd.isna(v) else f"{v:+.1f}")
        else:
            both = mine.notna() & theirs.notna()
            r_ours = rank_by_direction(mine[both], m).reindex(idx)
            r_paper = rank_by_direction(theirs[both], m).reindex(idx)
            cols[(label, "rank")] = [
                "" if pd.isna(a) else f"{int(a)}/{int(b)}" for a, b in zip(r_ours, r_paper)
            ]
    res = pd.DataFrame(cols, index=idx)
    res.columns = pd.MultiIndex.from_tuples(res.columns, names=["metric", ""])
    if paper_only:
        res.index = pd.MultiIndex.from_tuples(
            [(f"{k[0]} (paper only)" if k[0] in paper_only else k[0], *k[1:]) for k in res.index],
            names=on,
        )
    if len(on) == 1:
        res.index = res.index.get_level_values(0)
    return res


def ranking_agreement(
    summary: pd.DataFrame, ref: pd.DataFrame, metrics: Sequence[str], on: str = "method"
) -> pd.DataFrame:
    """Per metric: Kendall τ between our ranking of the methods and the paper's (on the methods
    both have), and Opti-CAM's rank in each."""
    from scipy.stats import kendalltau

    rows = []
    for m in metrics:
        if m not in summary:
            continue
        mine = summary.set_index(on)[m].dropna()
        theirs = ref[ref["metric"] == m].set_index(on)["value"].dropna()
        theirs = theirs[~theirs.index.duplicated()]
        common = mine.index.intersection(theirs.index)
        if len(common) < 3:
            continue
        tau = kendalltau(mine[common], theirs[common]).statistic
        ro, rp = rank_by_direction(mine[common], m), rank_by_direction(theirs[common], m)
        rows.append(
            {
                "metric": m,
                "methods": len(common),
                "kendall_tau": float(tau),
                "opticam_rank_ours": int(ro["Opti-CAM"]) if "Opti-CAM" in ro else None,
                "opticam_rank_paper": int(rp["Opti-CAM"]) if "Opti-CAM" in rp else None,
            }
        )
    return pd.DataFrame(rows)


def headline(claims: pd.DataFrame, agreement: pd.DataFrame | None = None) -> str:
    """One generated sentence: which of the paper's claims hold on this run and which do not."""
    if claims is None or claims.empty:
        return "No claim of the paper can be checked with the rows of this run."
    parts = []
    for v, word in (
        ("holds", "hold"),
        ("contradicted", "are contradicted"),
        ("not resolved on this data", "are not resolved on this data"),
    ):
        sel = claims[claims["verdict"] == v]
        if len(sel):
            parts.append(f"{word}: " + "; ".join(sel["claim"]))
    text = (
        f"Of the paper's {len(claims)} claims checked here (paired 95% bootstrap "
        "intervals over images), " + " — ".join(parts) + "."
    )
    if agreement is not None and not agreement.empty:
        taus = ", ".join(f"{r.metric} τ = {r.kendall_tau:+.2f}" for r in agreement.itertuples())
        text += f" Agreement of our ranking of the methods with the paper's: {taus}."
    return text


def show(
    frame: pd.DataFrame, caption: str, metrics_per_table: int | None = None, wrap: bool = False
) -> None:
    """Display a comparison table compactly (numbers never wrap inside their cells); with
    ``metrics_per_table`` the metric column groups are split over several tables so that each fits
    the page; ``wrap`` lets the cells of a table of sentences (claims, verdicts) wrap."""
    from IPython.display import display

    groups = (
        list(dict.fromkeys(frame.columns.get_level_values(0))) if frame.columns.nlevels > 1 else []
    )
    if metrics_per_table and len(groups) > metrics_per_table:
        for k in range(0, len(groups), metrics_per_table):
            part = groups[k : k + metrics_per_table]
            show(frame.loc[:, frame.columns.get_level_values(0).isin(part)],
                 f"{caption} ({', '.join(map(str, part))})", wrap=wrap)  # fmt: skip
        return

    cells = f"white-space: {'normal' if wrap else 'nowrap'}; padding: 0 0.4em"
    styler = (
        frame.style.format(precision=1, na_rep="–")
        .set_caption(caption)
        .set_table_styles([{"selector": "th, td", "props": cells}])
    )
    display(styler)
