"""What every table page shares: the paper's values, the comparison beside ours, provenance."""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from importlib import metadata, resources
from typing import Any

import pandas as pd

from ..layout import REPO_ROOT

#: The paper's network for each of our models (used to pick reference numbers).
PAPER_NETWORK = {
    "resnet50": "resnet50",
    "vgg16_bn": "vgg16",
    "efficientnet_lite0": "resnet50",
    "tiny": "resnet50",
}


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


def paper_table(name: str) -> pd.DataFrame:
    """The paper's values for table ``name`` (``table1`` ... ``tableA14``) as a tidy DataFrame:
    ``table, dataset, network, method, variant, metric, value, direction`` (``value`` float,
    NaN where the paper prints "–"). See ``paper_code/experiments/paper_tables/README.md``."""
    ref = resources.files("paper_code.experiments") / "paper_tables" / f"{name}.csv"
    if not ref.is_file():
        raise FileNotFoundError(f"no paper table {name!r}")
    with resources.as_file(ref) as path:
        df = pd.read_csv(path, dtype={"value": str}, keep_default_na=False)
    df["value"] = pd.to_numeric(df["value"].replace("", float("nan")))
    return df


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def paper_label(name: str) -> str:
    """The paper's label of a page: ``table1`` -> ``Table 1``, ``tableA12`` -> ``Table A.12``,
    ``figA4`` -> ``Fig. A.4`` (other names unchanged).

    >>> [paper_label(n) for n in ("table1", "tableA12", "fig3", "figA6", "report")]
    ['Table 1', 'Table A.12', 'Fig. 3', 'Fig. A.6', 'report']
    """
    import re

    m = re.fullmatch(r"(table|fig)(A?)(\d+)", name)
    if not m:
        return name
    kind = "Table" if m.group(1) == "table" else "Fig."
    return f"{kind} {m.group(2) + '.' if m.group(2) else ''}{m.group(3)}"


def provenance(
    start: float | None = None, device: str | None = None, **extra: Any
) -> dict[str, Any]:
    """What ran, for captions: package versions, git commit, device, date and wall time.

    Args:
        start: ``time.time()`` at the start of the notebook; gives ``wall_time_s``.
        device: the torch device string used (``cpu``, ``cuda``, ``cuda:1``).
        **extra: anything else to record (model, dataset, number of images, ...).
    """
    import torch

    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    if device and device.startswith("cuda") and torch.cuda.is_available():
        hardware = torch.cuda.get_device_name(torch.device(device))
    else:
        hardware = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    from ..models import loaded_weights

    weights = loaded_weights()
    info: dict[str, Any] = {
        **extra,
        **({"weights": weights} if weights and "weights" not in extra else {}),
        "device": device or "cpu",
        "hardware": hardware,
        "python": platform.python_version(),
        "paper_code": _version("paper_code"),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "git_commit": commit,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if start is not None:
        info["wall_time_s"] = round(time.time() - start, 1)
    return info


def format_provenance(info: Mapping[str, Any]) -> str:
    """One line for a caption: ``key: value; ...``."""

    def text(v: Any) -> str:
        if isinstance(v, Mapping):
            return ", ".join(f"{kk} {vv}" for kk, vv in v.items())
        return str(v)

    return "; ".join(f"{k}: {text(v)}" for k, v in info.items())


def compare_with_paper(
    ours: pd.DataFrame,
    table: str,
    metrics: Sequence[str],
    index: Sequence[str] = ("model", "method"),
) -> pd.DataFrame:
    """Our summary beside the paper's values.

    ``ours``: one row per (model, method) with a column per metric (our ``model`` names; ``method``
    in the paper's spelling, e.g. ``Opti-CAM``). Returns a frame indexed like ``ours`` with columns
    ``(metric, "ours" | "paper" | "diff")``; the paper's network for each model is
    :data:`PAPER_NETWORK` (e.g. EfficientNet-Lite0 is shown against the paper's ResNet50).
    """
    paper = paper_table(table)
    paper = paper[(paper["variant"] == "") & paper["metric"].isin(metrics)]
    ref = paper.pivot_table(index=["network", "method"], columns="metric", values="value")
    cols = {}
    for m in metrics:
        mine = ours.set_index(list(index))[m]
        theirs = [
            ref[m].get((PAPER_NETWORK.get(str(model), str(model)), meth), math.nan)
            if m in ref
            else math.nan
            for model, meth in mine.index
        ]
        cols[(m, "ours")] = mine.to_numpy()
        cols[(m, "paper")] = theirs
        cols[(m, "diff")] = mine.to_numpy() - pd.Series(theirs, dtype=float).to_numpy()
    out = pd.DataFrame(cols, index=mine.index)
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["metric", ""])
    return out


def caption(run: Any, title: str, what: str, extra: str = "", **record: Any) -> str:
    """The provenance caption under a table: what ran, on what, with which code; also writes
    ``<name>_provenance.json`` next to the rows.

    ``run`` is a :class:`paper_code.experiments.tablerun.TableRun` (its parameters, start time, output
    folder and data); ``record`` adds table-specific settings (e.g. ``opticam_iterations=50``).
    """
    from .keys import opticam_iterations

    p = run.params
    models = list(p.get("models") or [])
    n = len(run.data) if run.data is not None else p.get("n_images")
    info = provenance(
        run.start,
        p.get("device", "cpu"),
        models=", ".join(models),
        dataset=p.get("dataset"),
        images=n,
        opticam_iterations=opticam_iterations(p.get("iterations")),
        batch_size=p.get("batch_size"),
        profile=p.get("profile"),
        **record,
    )
    (run.out / f"{run.name}_provenance.json").write_text(pd.Series(info).to_json(indent=2))
    comparable = all(run.comparable(m) for m in models)
    note = (
        ""
        if comparable
        else " **Not comparable with the paper in absolute terms:** another network and/or a few "
        "sample images; the *rank* columns compare our ranking of the methods with the paper's."
    )
    settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in record.items())
    return (
        f"**{title} (reproduction).** {what}. Each cell: ours ± half the width of its 95% "
        f"bootstrap interval over images (exact bounds in `{run.name}_summary.csv`), the paper's "
        f"value in parentheses. {n} images of `{p.get('dataset')}`, networks "
        f"{', '.join(models)}, Opti-CAM {info['opticam_iterations']} iterations"
        f"{', ' + settings if settings else ''}, device `{info['device']}` ({info['hardware']}). "
        f"paper_code {info['paper_code']}, torch {info['torch']}, torchvision {info['torchvision']}, "
        f"Python {info['python']}, git {info['git_commit']}, {info['date_utc']}, notebook wall "
        f"time {info.get('wall_time_s', 0):.0f} s. Rows marked *paper only* are methods "
        f"paper_code does not implement; '–' under *ours*: not run (see the `methods` parameter)."
        f"{extra}{note}"
    )


#: The tables that compare methods with each other (a method that is in no paper table, e.g. one
#: registered from outside the package, appears in these, after the paper's rows).
COMPARISON_TABLES = (
    "table1", "table2", "table3", "table4", "tableA7", "tableA8", "tableA10", "tableA11",
)  # fmt: skip


@functools.cache
def _paper_labels() -> frozenset[str]:
    return frozenset(m for t in COMPARISON_TABLES for m in paper_table(t)["method"])


def methods_not_in_paper() -> list[str]:
    """Registered methods whose table label is in none of the paper's tables (those registered
    from outside the package, :func:`paper_code.register`), in registration order."""
    return [n for n, s in _methods().items() if s.paper_name not in _paper_labels()]


def _methods():
    from ..methods import METHODS

    return METHODS
