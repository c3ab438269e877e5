"""The open protocol choices as parameters (one ``protocol`` mapping per metric, every effective
value in the result keys), the protocol-sensitivity choices, and the reproducibility report built
from the pages' claim checks."""

from __future__ import annotations

import inspect

import pandas as pd
import pytest

from paper_code import experiments as ex
from paper_code import metrics
from paper_code.book.toc import run_order
from paper_code.experiments.report import (
    claims_table,
    gather_claims,
    report_summary,
    sensitive_choices,
    skipped_pages,
)
from paper_code.experiments.scores import (
    PROTOCOL_OPTIONS,
    insertion_deletion_scores,
    localization_scores,
    protocol_options,
)
from paper_code.experiments.sensitivity import CHOICES, _with_override, kendall_tau
from paper_code.experiments.tablerun import TableRun


def test_protocol_defaults_are_the_metrics_own() -> None:
    """One place for each default: the metric's signature."""
    for metric, names in PROTOCOL_OPTIONS.items():
        sig = inspect.signature(getattr(metrics, metric)).parameters
        assert protocol_options(None, metric) == {k: sig[k].default for k in names}
    got = protocol_options({"protocol": {"insertion_deletion": {"tie_break": "numpy"}}},
                           "insertion_deletion")  # fmt: skip
    assert got["tie_break"] == "numpy" and got["blur_kernel"] == "rise"


def test_protocol_errors_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="unknown metric.*insertion_deletio .*valid: "):
        protocol_options({"protocol": {"insertion_deletio ": {}}}, "aopc")
    with pytest.raises(ValueError, match="tie_brake of insertion_deletion unknown; valid: blur"):
        protocol_options({"protocol": {"insertion_deletion": {"tie_brake": "numpy"}}},
                         "insertion_deletion")  # fmt: skip
    with pytest.raises(ValueError, match="must map metric names"):
        protocol_options({"protocol": "numpy"}, "aopc")


def test_protocol_values_enter_the_result_keys() -> None:
    """Rows computed under another value of an open choice, or under the former default, are never
    reused: the effective options (defaults included) are part of each score's settings."""
    default = insertion_deletion_scores(224, {})
    numpy = insertion_deletion_scores(
        224, {"protocol": {"insertion_deletion": {"tie_break": "numpy"}}}
    )
    assert default.settings["insertion_deletion"]["blur_kernel"] == "rise"
    assert default.settings != numpy.settings
    assert localization_scores({}).settings == {"localization": {"box_rule": "largest_component"}}
    model = type("M", (), {"name": "tiny", "weights_id": "w", "fused": True, "target_layer_name":
                           "features.7", "standardize": type("S", (), {"enabled": True})()})()  # fmt: skip
    keys = [
        ex.config_id(ex.result_key(model, "gradcam", "ground_truth", {}, **s.settings))
        for s in (default, numpy, insertion_deletion_scores(224, {}, modes=("I",)))
    ]
    assert len(set(keys)) == 3


def test_every_sensitivity_choice_is_an_option_of_its_function() -> None:
    """Each value of each choice is accepted by the function it configures, and the book's value
    (the first) is the functions' default (an empty override)."""
    from paper_code.methods import get_method

    for choice in CHOICES.values():
        assert choice.values[choice.default] == {}, choice.key
        assert len(choice.values) >= 2, choice.key
        for label, override in choice.values.items():
            params = _with_override({}, choice, label)
            if choice.kind == "protocol":
                for metric in override:
                    protocol_options(params, metric)  # validates names
            else:
                for method, opts in override.items():
                    fn = get_method(method).fn
                    if method == "extremal":  # **options reach perturbation.optimize
                        from paper_code.methods.perturbation import optimize as fn
                    sig = inspect.signature(fn).parameters
                    assert set(opts) <= set(sig), (method, set(opts) - set(sig))


def test_kendall_tau() -> None:
    a = pd.Series([1.0, 2.0, 3.0, 4.0], index=list("abcd"))
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert kendall_tau(a, -a) == pytest.approx(-1.0)
    assert pd.isna(kendall_tau(a[:2], a[:2]))  # fewer than 3 in common


def test_report_and_sensitivity_pages_run_last() -> None:
    order = run_order(["report", "table1", "sensitivity", "fig1"])
    assert order == ["table1", "fig1", "sensitivity", "report"]


def _claims(tmp_path, page: str, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_csv(tmp_path / f"{page}_claims.csv", index=False)


def test_recorded_claims_are_gathered_in_the_papers_order(tmp_path) -> None:
    """A page's claim checks land in <page>_claims.csv (the newest check of each claim), and the
    report reads every page's, in the paper's order, leaving out the sensitivity re-checks."""
    run = TableRun("table3", {"output_dir": str(tmp_path)}, ["I", "D"])
    row = {"metric": "I", "claim": "c", "baseline": "b", "difference": 1.0, "low": 0.5,
           "high": 1.5, "verdict": "holds", "paper": "p"}  # fmt: skip
    run.record_claims(pd.DataFrame([row]), "m")
    run.record_claims(pd.DataFrame([{**row, "verdict": "contradicted"}]), "m")  # rechecked
    TableRun("table1", {"output_dir": str(tmp_path)}, ["AD"]).record_claims(
        pd.DataFrame([{**row, "metric": "AD"}]), "m"
    )
    _claims(tmp_path, "sensitivity", [{**row, "page": "table3"}])
    got = gather_claims(tmp_path)
    assert list(got["page"]) == ["table1", "table3"]
    assert list(got["table"]) == ["Table 1", "Table 3"]
    assert got.set_index("page").loc["table3", "verdict"] == "contradicted"


def test_report_marks_the_choices_a_verdict_depends_on(tmp_path) -> None:
    claims = pd.DataFrame(
        [
            {"page": "table3", "table": "Table 3", "model": "m", "metric": "I", "claim": "a",
             "baseline": "x", "difference": 1.0, "low": 0.2, "high": 2.0, "verdict": "holds",
             "paper": "Opti-CAM 62, Grad-CAM 66.3 (resnet50)"},
            {"page": "table3", "table": "Table 3", "model": "m", "metric": "D", "claim": "b",
             "baseline": "x", "difference": -1.0, "low": -2.0, "high": 0.5,
             "verdict": "not resolved on this data", "paper": "p"},
            {"page": "table4", "table": "Table 4", "model": "m", "metric": "MS", "claim": "c",
             "baseline": "x", "difference": 0.4, "low": 0.1, "high": 0.8,
             "verdict": "contradicted", "paper": "Opti-CAM 1.03, Layer-CAM 1.04 (resnet50)"},
        ]
    )  # fmt: skip
    sens = pd.DataFrame(
        [
            {"page": "table3", "model": "m", "metric": "I", "claim": "a", "choice": "blur",
             "value": "sampled", "verdict": "not resolved on this data",
             "default_verdict": "holds"},
            {"page": "table3", "model": "m", "metric": "D", "claim": "b", "choice": "ties",
             "value": "numpy", "verdict": "not resolved on this data",
             "default_verdict": "not resolved on this data"},
        ]
    )  # fmt: skip
    marks = sensitive_choices(sens, claims)
    assert list(marks) == ["blur: sampled", "", ""]
    table = claims_table(claims, sens)
    assert list(table["sensitive to"]) == ["blur: sampled", "–", "–"]
    assert table["difference [95% interval]"].iloc[0] == "+1.00 [+0.20, +2.00]"
    text = report_summary(claims, {"models": ["m"], "dataset": "sample", "profile": "sample",
                                   "iterations": 100}, {"table2": "offline"}, sens)  # fmt: skip
    assert "**Claims checked: 3** (1 holds, 1 not resolved on this data, 1 contradicted)" in text
    assert "Table 4, m: c (paper: Opti-CAM 1.03, Layer-CAM 1.04 (resnet50))" in text
    assert "table2: offline" in text and "1 of the claims" in text
    assert "Not the paper's setting" in text
    empty = report_summary(claims.iloc[:0], {"models": []}, {})
    assert "No claim was checked" in empty


def test_profiles_give_the_reason_of_every_skipped_page() -> None:
    from paper_code.book.profiles import load_profile

    for name in ("sample", "imagenet-1k", "imagenet", "rehearsal"):
        prof = load_profile(name)
        reasons = skipped_pages(prof)
        assert set(reasons) == set(prof["skip"]), name
        assert all(r != "skipped by this profile" for r in reasons.values()), name
