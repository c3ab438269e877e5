"""Numbers of the book that must hold whatever the data and the network: checked on the rows the
`smoke` run of the whole book wrote and, for the checks that hold for any network, trained or not,
on those of the `rehearsal` (the paper's four networks with random weights); the session fixtures
``smoke_book`` and ``rehearsal_book`` in conftest.py run each once for the suite.

These are sanity checks of the protocol, not of the paper's claims: Fake-CAM masks one pixel, so its
AD is ~0 and every pixel but one ties for the maximum (SP = 100); insertion starts from a blurred
image and restores the most salient pixels while deletion removes them, so for any map the
insertion curve lies above the deletion curve on average; and every method a table runs has a
value for every metric the paper reports for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from paper_code.experiments.paper import paper_table
from paper_code.methods import PAPER_NAMES

pytestmark = pytest.mark.slow

#: Both runs of the whole book: the checks that hold for any network take this as their book.
BOOKS = ["smoke_book", "rehearsal_book"]


@pytest.fixture(params=BOOKS)
def any_book(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def _rows(out: Path, name: str) -> pd.DataFrame:
    path = out / f"{name}_rows.csv"
    assert path.exists(), f"{name} wrote no rows ({path})"
    return pd.read_csv(path, dtype={"config": str, "id": str, "variant": str})


def _summary(out: Path, name: str) -> pd.DataFrame:
    path = out / f"{name}_summary.csv"
    assert path.exists(), f"{name} wrote no summary ({path})"
    return pd.read_csv(path)


def test_fakecam_average_drop_is_zero(any_book: Path) -> None:
    rows = _rows(any_book, "table1")
    fake = rows[rows["method"] == "fakecam"]
    assert len(fake) >= 2
    assert fake["AD"].abs().max() < 0.5  # one black pixel out of 50,176
    assert fake["AG"].max() < 0.5


def test_fakecam_pointing_game_is_perfect(any_book: Path) -> None:
    rows = _rows(any_book, "tableA7")
    fake = rows[(rows["method"] == "fakecam") & (rows["valid"] > 0)]
    assert len(fake) >= 1
    assert (fake["SP"] == 100).all()


def test_insertion_above_deletion_on_average(smoke_book: Path) -> None:
    rows = _rows(smoke_book, "table3")
    means = rows.groupby("method")[["I", "D"]].mean()
    assert len(means) >= 5
    bad = means[means["I"] < means["D"]]
    assert bad.empty, f"insertion below deletion on average for {list(bad.index)}"


def test_opticam_raises_the_masked_logit(smoke_book: Path) -> None:
    """Fig. 1 records Opti-CAM's objective F (the masked image's class logit, eq. 10) at every
    iteration: the optimized map scores higher than the initial (channel-mean) map."""
    trace = pd.read_csv(smoke_book / "fig1_trace.csv")
    assert len(trace) >= 2
    assert trace["F"].iloc[-1] > trace["F"].iloc[0]


@pytest.mark.parametrize(
    "name, metrics",
    [
        ("table1", ["AD", "AG", "AI"]),
        ("table3", ["I", "D"]),
        ("table4", ["AOPC", "ADCC"]),
        ("tableA7", ["OM", "LE", "F1", "BoxAcc", "SP", "EP", "SM"]),
        ("table2", ["AD", "AG", "AI"]),
        ("tableA8", ["OM", "LE", "F1", "BoxAcc", "SP", "EP", "SM"]),
    ],
)
def test_tables_complete_where_the_paper_has_values(
    any_book: Path, name: str, metrics: list[str]
) -> None:
    """Every method that ran has a finite value for every metric the paper reports for it."""
    summary = _summary(any_book, name)
    paper = paper_table(name)
    reported = set(zip(paper.dropna(subset=["value"])["method"], paper["metric"]))
    ours = {"Centre prior"}  # the smoke profile's plugin (paper_code.examples.centre_prior)
    assert set(summary["method"]) <= set(PAPER_NAMES.values()) | {"S := B", "S := I∖B"} | ours
    missing = [
        (row["model"], row["method"], m)
        for _, row in summary.iterrows()
        for m in metrics
        if (row["method"], m) in reported and not math.isfinite(float(row[m]))
    ]
    assert not missing, f"{name}: no value for {missing}"


def test_intervals_bracket_the_means(any_book: Path) -> None:
    summary = _summary(any_book, "table1")
    for m in ("AD", "AG", "AI"):
        ok = (summary[f"{m}_lo"] <= summary[m] + 1e-9) & (summary[m] <= summary[f"{m}_hi"] + 1e-9)
        assert ok.all(), summary[[m, f"{m}_lo", f"{m}_hi"]]


@pytest.mark.parametrize("name, metrics", [("table1", ["AD", "AG", "AI"]), ("table3", ["I", "D"])])
def test_a_plugin_method_reaches_the_tables(
    smoke_book: Path, name: str, metrics: list[str]
) -> None:
    """The smoke profile loads a method from outside the package (the plugins parameter): it has
    finite values in Tables 1 and 3, beside the paper's rows, and is no part of the claims."""
    summary = _summary(smoke_book, name)
    row = summary[summary["method_id"] == "centre_prior"]
    assert len(row) >= 1, sorted(summary["method_id"])
    assert row[metrics].notna().all().all() and bool((row[metrics].abs() < 1e6).all().all())
    claims = pd.read_csv(smoke_book / f"{name}_claims.csv")
    assert "Centre prior" not in set(claims["baseline"])
    page = (smoke_book / "notebooks" / f"{name}.ipynb").read_text()
    assert (
        "Centre prior (not in the paper)" in page and "minus Opti-CAM, paired over images" in page
    )
