"""Run the book's notebooks and build the site.

The book (``_config.yml``, ``_toc.yml``, ``book/``) is a Jupyter Book 1 whose table and figure pages
are jupytext MyST notebooks (``book/<name>.md``, paired with an output-free ``book/<name>.ipynb``).

- :func:`run_notebook` executes one notebook with papermill, parameters from a *profile*
  (``paper_code/reproduce/profiles/*.yml``) plus overrides, into ``<output_dir>/<name>.ipynb``; the committed
  sources are never written.
- :func:`reproduce` executes every notebook of the table of contents, copies the executed notebooks
  into a build tree and renders it with ``jupyter-book build`` with execution **off**, so nothing
  runs twice and heavy (GPU) work stays out of the book build.
- :func:`paper_table`, :func:`provenance`, :func:`evaluate` and :func:`compare_with_paper` are the
  helpers the notebooks use.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BOOK_DIR",
    "REPO_ROOT",
    "PAPER_ORDER",
    "NotebookError",
    "build_site",
    "load_profile",
    "notebook_parameters",
    "prepare_build_tree",
    "profile_parameters",
    "reproduce",
    "run_notebook",
    "toc_files",
    "toc_notebooks",
    "write_toc",
]

#: Repository root (where ``_config.yml`` and ``_toc.yml`` live) for a source checkout.
REPO_ROOT = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO_ROOT / "book"
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
#: Parameters holding paths, or mappings of paths (per model or dataset): made absolute
#: (relative to the caller's cwd) before injection.
PATH_PARAMETERS = ("root", "output_dir", "cache_dir", "weights", "medical_root", "checkpoints")
#: Values of path parameters that are keywords, not paths (``weights``: random initialization).
PATH_KEYWORDS = ("random",)
#: Profile parameters that set the kernel's process up (:func:`kernel_environment`) instead of
#: being injected into the notebook.
PROCESS_PARAMETERS = ("compile_evaluation",)
#: Set in the kernel's environment while :func:`run_notebook` executes a notebook for the book
#: (same name as :data:`paper_code.reproduce.display.ENV_BOOK`).
BOOK_RUN_ENV = "PAPER_CODE_BOOK_RUN"
#: Extra kernel arguments: ipykernel's own log shows errors only (not its TCP warning).
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)
#: Per-notebook run times of the last run, in the output folder (for the time estimates).
TIMINGS_FILE = "timings.json"
#: Keys every profile must define under ``parameters``.
REQUIRED_PARAMETERS = (
    "models",
    "weights",
    "dataset",
    "root",
    "n_images",
    "methods",
    "iterations",
    "device",
    "batch_size",
    "seed",
    "output_dir",
    "cache_dir",
)


# --------------------------------------------------------------------------- profiles


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def list_profiles() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yml"))


def load_profile(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A profile as a dict ``{name, description, parameters, notebooks}``.

    ``name_or_path``: a bundled profile name (``sample``, ``smoke``, ``imagenet-1k``, ``imagenet``)
    or the path of a YAML file. ``extends: <profile>`` in a file inherits from another profile
    (names or paths relative to the file); ``notebooks: {<name>: {...}}`` holds per-notebook
    parameter overrides.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yml", ".yaml") or path.exists()):
        path = PROFILES_DIR / f"{name_or_path}.yml"
        if not path.exists():
            raise FileNotFoundError(
                f"unknown profile {str(name_or_path)!r}: not a file, and not one of "
                f"{', '.join(list_profiles())}"
            )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile must be a YAML mapping")
    data.setdefault("name", path.stem)
    data.setdefault("description", "")
    parent = data.pop("extends", None)
    if parent:
        parent_path = path.parent / str(parent)
        base = load_profile(parent_path if parent_path.exists() else parent)
        base.pop("source", None)
        data = _merge(base, data)
    data["parameters"] = dict(data.get("parameters") or {})
    data["notebooks"] = dict(data.get("notebooks") or {})
    data["source"] = str(path)
    return data


def profile_parameters(profile: Mapping[str, Any], notebook: str | None = None) -> dict[str, Any]:
    """The profile's parameters with the overrides of ``notebook`` applied."""
    params = dict(profile.get("parameters") or {})
    if notebook is not None:
        params.update((profile.get("notebooks") or {}).get(notebook) or {})
    params["profile"] = profile.get("name", "custom")
    return params


# --------------------------------------------------------------------------- table of contents


def toc_files(toc: str | os.PathLike[str] = REPO_ROOT / "_toc.yml") -> list[str]:
    """Every ``file:``/``root:`` entry of a Jupyter Book ``_toc.yml``, in order (no suffix)."""
    data = yaml.safe_load(Path(toc).read_text())
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k in ("root", "file"):
                if k in node:
                    out.append(str(node[k]))
            for k in ("parts", "chapters", "sections"):
                for child in node.get(k) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(data)
    return out


def is_notebook(path: Path) -> bool:
    """True for ``.ipynb`` files and for text files with a jupytext ``kernelspec`` header."""
    if path.suffix == ".ipynb":
        return True
    if path.suffix != ".md" or not path.exists():
        return False
    text = path.read_text()
    if not text.startswith("---"):
        return False
    end = text.find("\n---", 3)
    header = yaml.safe_load(text[3:end]) if end > 0 else None
    return isinstance(header, dict) and "kernelspec" in header


#: Pages that read what the others wrote, run after them in this order whatever their place in
#: the table of contents: the protocol-sensitivity page reuses the tables' maps and rows, and the
#: reproducibility report gathers every page's claim checks (and the sensitivity page's).
RUN_LAST = ("sensitivity", "report")


def run_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order a run executes them: the table of contents' order, with the pages of
    :data:`RUN_LAST` moved to the end (in that order).

    >>> run_order(["report", "table1", "sensitivity", "fig1"])
    ['table1', 'fig1', 'sensitivity', 'report']
    """
    last = [n for n in RUN_LAST if n in names]
    return [n for n in names if n not in RUN_LAST] + last


def toc_notebooks(toc: str | os.PathLike[str] = REPO_ROOT / "_toc.yml") -> list[Path]:
    """Source of every notebook in the table of contents, in order (its name is ``.stem``)."""
    base = Path(toc).parent
    out = []
    for entry in toc_files(toc):
        for suffix in (".md", ".ipynb"):
            src = base / f"{entry}{suffix}"
            if src.exists() and is_notebook(src):
                out.append(src)
                break
    return out


# --------------------------------------------------------------------------- running notebooks


class NotebookError(RuntimeError):
    """A notebook failed; names the notebook, the failing cell and its error."""

    def __init__(
        self,
        notebook: str,
        ename: str,
        evalue: str,
        cell_index: int | None = None,
        output: Path | None = None,
    ) -> None:
        self.notebook, self.ename, self.evalue = notebook, ename, evalue
        self.cell_index, self.output = cell_index, output
        where = f" in cell {cell_index}" if cell_index is not None else ""
        saved = f" (partial output: {output})" if output else ""
        super().__init__(f"notebook {notebook!r} failed{where}: {ename}: {evalue}{saved}")


def _resolve_notebook(name_or_path: str | os.PathLike[str]) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    for cand in (BOOK_DIR / f"{name_or_path}.md", BOOK_DIR / f"{name_or_path}.ipynb"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no notebook {str(name_or_path)!r} (looked for it in {BOOK_DIR})")


def notebook_parameters(nb: Any) -> dict[str, Any]:
    """Names and default values of the cell tagged ``parameters`` (values that are not literals
    map to ``None``)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out: dict[str, Any] = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    try:
                        value = ast.literal_eval(node.value) if node.value is not None else None
                    except ValueError:
                        value = None
                    for t in targets:
                        if isinstance(t, ast.Name):
                            out[t.id] = value
            return out
    return {}


def _absolute_path(v: Any) -> Any:
    if isinstance(v, str | os.PathLike) and v and not str(v).startswith("/path/to"):
        if str(v) in PATH_KEYWORDS:
            return str(v)
        return str(Path(v).expanduser().resolve())
    return v


def _absolute(params: dict[str, Any]) -> dict[str, Any]:
    """Path parameters made absolute (a notebook's kernel runs in the output folder, so a path
    relative to the caller's folder would point elsewhere there); in the per-model or
    per-dataset mappings (``weights``, ``medical_root``, ``checkpoints``) every value."""
    out = dict(params)
    for k in PATH_PARAMETERS:
        if k not in out:
            continue
        v = out[k]
        if isinstance(v, Mapping):
            out[k] = {kk: _absolute_path(vv) for kk, vv in v.items()}
        else:
            out[k] = _absolute_path(v)
    return out


def declared_parameters(sources: Sequence[str | os.PathLike[str]]) -> dict[str, set[str]]:
    """The parameter names each notebook declares in its cell tagged ``parameters``, by name."""
    import jupytext

    out = {}
    for src in sources:
        src = _resolve_notebook(src)
        nb = jupytext.read(src, fmt="md:myst" if src.suffix == ".md" else None)
        out[src.stem] = set(notebook_parameters(nb))
    return out


def check_parameters(
    parameters: Mapping[str, Any] | None, declared: Mapping[str, set[str]]
) -> None:
    """Refuse a parameter that no notebook of the run declares (a typo would otherwise run the
    whole book with the default silently): one line naming it and the valid parameters.

    A parameter declared by only some notebooks is valid; it reaches those notebooks only.
    Process settings (:data:`PROCESS_PARAMETERS`) are valid everywhere."""
    valid = set(PROCESS_PARAMETERS).union(*declared.values()) if declared else set()
    unknown = sorted(set(parameters or {}) - valid)
    if unknown:
        pages = ", ".join(declared) if len(declared) <= 3 else f"the {len(declared)} notebooks"
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))}: declared by none of {pages} "
            f"of this run; valid: {', '.join(sorted(valid))}"
        )


def run_notebook(
    name_or_path: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] = "_build/reproduce/notebooks",
    profile: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    kernel: str = "python3",
    progress: bool = True,
    timeout: int | None = None,
) -> Path:
    """Execute one notebook with papermill; return the executed ``<output_dir>/<name>.ipynb``.

    Args:
        name_or_path: ``"table1"`` (looked up in ``book/``) or the path of a ``.md``/``.ipynb``.
        parameters: values injected after the cell tagged ``parameters``; they override the
            profile's. Path values (``root``, ``output_dir``, ``cache_dir``) are made absolute.
        output_dir: where the executed notebook is written (never the committed sources).
        profile: a profile name, path or already loaded dict; its parameters (with this notebook's
            overrides) are injected for the names the notebook declares.
        kernel: Jupyter kernel name.
        progress: papermill's per-cell progress bar.
        timeout: per-cell timeout in seconds (``None``: no limit).

    Raises:
        NotebookError: a cell raised; the message names the notebook, the cell and the error.
            The partially executed notebook is kept at the returned path.
    """
    import jupytext
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = _resolve_notebook(name_or_path)
    name = src.stem
    nb = jupytext.read(src, fmt="md:myst" if src.suffix == ".md" else None)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    declared = notebook_parameters(nb)
    params: dict[str, Any] = {}
    # Settings for the kernel's process rather than the notebook's code (see kernel_environment).
    process: dict[str, Any] = {}
    if profile is not None:
        prof = profile if isinstance(profile, Mapping) else load_profile(profile)
        everything = profile_parameters(prof, name)
        process.update((k, everything[k]) for k in PROCESS_PARAMETERS if k in everything)
        params.update((k, v) for k, v in everything.items() if k in declared or not declared)
    process.update((k, v) for k, v in (parameters or {}).items() if k in PROCESS_PARAMETERS)
    parameters = {k: v for k, v in (parameters or {}).items() if k not in PROCESS_PARAMETERS}
    if declared:
        check_parameters(parameters, {name: set(declared)})
    params.update(parameters)
    params = _absolute(params)
    out_dir = Path(output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.ipynb"
    workdir = Path(params["output_dir"]) if params.get("output_dir") else out_dir
    workdir.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this process's environment: tell the notebook it runs for the book
    # (paper_code.reproduce.display.glue then leaves the values to the page's prose).
    env = kernel_environment(**process)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(
            nb,
            str(output),
            parameters=params,
            kernel_name=kernel,
            progress_bar=progress,
            cwd=str(workdir),
            execution_timeout=timeout,
            report_mode=False,
            # ipykernel logs "Kernel is running over TCP without encryption" (a local kernel on
            # 127.0.0.1) as a warning on our stderr; keep only its errors.
            extra_arguments=list(KERNEL_ARGUMENTS),
        )
    except PapermillExecutionError as err:
        raise NotebookError(name, err.ename, err.evalue, err.cell_index, output) from err
    except Exception as err:  # kernel died, timeout, bad parameters
        raise NotebookError(name, type(err).__name__, str(err), None, output) from err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return output


def kernel_environment(compile_evaluation: bool | str | None = None) -> dict[str, str]:
    """Variables a notebook's kernel gets on top of this process's environment: the book-run flag,
    and, when this ``paper_code`` is a source checkout, its folder first on ``PYTHONPATH`` so the
    kernel imports the very code that runs it (not another installed copy, and not the notebook's
    fallback install from the repository when the checkout was never ``pip install``-ed).

    ``compile_evaluation`` (a profile parameter, e.g. ``-p compile_evaluation true``): the
    metrics' and Score-CAM's forward passes under ``torch.compile``
    (:data:`paper_code.names.ENV_COMPILE`); for GPUs."""
    from ..names import ENV_COMPILE

    env = {BOOK_RUN_ENV: "1"}
    if compile_evaluation is not None:
        env[ENV_COMPILE] = str(compile_evaluation)
    package_parent = str(Path(__file__).resolve().parents[2])
    if (Path(package_parent) / "pyproject.toml").exists():
        rest = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
        env["PYTHONPATH"] = os.pathsep.join(
            [package_parent, *(x for x in rest if x != package_parent)]
        )
    return env


@dataclass
class NotebookRun:
    name: str
    ok: bool
    seconds: float
    output: Path | None
    error: str = ""


def _check_data(params: Mapping[str, Any]) -> None:
    dataset, root = params.get("dataset"), params.get("root")
    if dataset in ("imagenet", "folder") and (not root or not Path(str(root)).exists()):
        raise FileNotFoundError(
            f"dataset {dataset!r} needs its root folder; {root!r} does not exist. "
            "Point at ILSVRC2012 with -p root /path/to/ILSVRC2012 (see book/reproduce.md)."
        )


def resolve_run(
    profile: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """The profile of a run with ``parameters`` applied, and its output folder: ``out`` overrides
    the profile's ``output_dir`` (and its ``cache_dir``, unless ``parameters`` sets one).

    ``parameters`` (the command line's ``-p``) win over the whole profile, its per-notebook
    overrides included: ``-p id_step 224`` reaches Table 3 even where the profile sets its own."""
    prof = dict(profile) if isinstance(profile, Mapping) else load_profile(profile)
    prof["parameters"] = {**prof.get("parameters", {}), **(parameters or {})}
    prof["notebooks"] = {
        name: {k: v for k, v in (over or {}).items() if k not in (parameters or {})}
        for name, over in (prof.get("notebooks") or {}).items()
    }
    params = prof["parameters"]
    if out is not None:
        params["output_dir"] = str(out)
        if not (parameters and "cache_dir" in parameters):
            params["cache_dir"] = str(Path(out) / "cache")
    out_dir = Path(params.get("output_dir") or "_build/reproduce").resolve()
    params["output_dir"] = str(out_dir)
    return prof, out_dir


def reproduce(
    profile: str | os.PathLike[str] | Mapping[str, Any] = "sample",
    out: str | os.PathLike[str] | None = None,
    only: Sequence[str] | None = None,
    build: bool = True,
    parameters: Mapping[str, Any] | None = None,
    book_root: str | os.PathLike[str] = REPO_ROOT,
    progress: bool = True,
    warnings_as_errors: bool = True,
    execute: bool = True,
    jobs: int = 1,
) -> int:
    """Execute every notebook of the table of contents, then build the site from the executed
    copies. Returns 0 when everything ran, 1 when a notebook failed (the site is still built with
    the others; a failed notebook's page shows its error).

    With ``jobs`` > 1, the first notebook (Table 1, which computes the maps the others reuse) runs
    alone with every core, then up to ``jobs`` notebooks at once, each in its own process with
    ``cores / jobs`` threads (``OMP_NUM_THREADS``), its output in ``<out>/logs/<name>.log``.
    Notebooks that need the same saliency maps share them through the cache: its writes are atomic
    and one process at a time computes a given method's missing maps
    (:meth:`~paper_code.reproduce.results.MapCache.get_or_compute`), so nothing is computed twice
    and no file is ever half-written.

    Layout under ``out`` (default: the profile's ``output_dir``)::

        notebooks/<name>.ipynb   executed notebooks
        <name>_*.csv|png         each notebook's tables and figures
        cache/                   saliency maps (resumable; unless the profile sets cache_dir)
        book_src/                build tree: _config.yml, _toc.yml, book/ with executed .ipynb
        _build/html/index.html   the site

    Args:
        profile: profile name, path or dict.
        out: output folder; overrides the profile's ``output_dir`` (and its ``cache_dir``,
            unless ``parameters`` sets one).
        only: notebook names to run (the others keep their previous executed copy, if any).
        build: build the HTML site after running.
        parameters: overrides for every notebook (e.g. ``{"root": "/data/imagenet",
            "device": "cuda"}``).
        book_root: folder with ``_config.yml``, ``_toc.yml`` and ``book/``.
        execute: ``False`` only rebuilds the site from the notebooks executed earlier.
        jobs: notebooks run at once (``1``: one after the other, in this process).
    """
    book_root = Path(book_root)
    prof, out_dir = resolve_run(profile, out, parameters)
    params = prof["parameters"]
    executed = out_dir / "notebooks"
    notebooks = [(src.stem, src) for src in toc_notebooks(book_root / "_toc.yml")]
    # A profile's ``skip`` list: notebooks it cannot run meaningfully (e.g. the transformer and
    # medical pages offline); they are neither executed nor listed in its site.
    skip = set(prof.get("skip") or ())
    notebooks = [(n, src) for n, src in notebooks if n not in skip]
    unknown = set(only or ()) - {n for n, _ in notebooks}
    if unknown:
        raise ValueError(f"not in the table of contents: {sorted(unknown)}")
    todo = [(n, s) for n, s in notebooks if (not only or n in only) and execute]
    order = run_order([n for n, _ in todo])
    todo.sort(key=lambda item: order.index(item[0]))
    if todo:  # a parameter no page of this run declares is a typo: refuse it before any work
        check_parameters(parameters, declared_parameters([s for _, s in todo]))
    runs: list[NotebookRun] = []
    print(f"profile {prof.get('name')}: {len(todo)} notebook(s) -> {out_dir}", flush=True)
    try:
        _check_data(params)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    timings = RunTimes(out_dir / TIMINGS_FILE, [n for n, _ in todo], prof.get("expected_seconds"))
    jobs = max(1, min(int(jobs), len(todo) or 1))
    if jobs > 1:
        timings.parallel(jobs, todo[0][0])
    if todo:
        print(f"estimated time: {timings.describe_total()}", flush=True)
    if jobs > 1:
        runs = _run_parallel(todo, executed, prof, jobs, timings, out_dir / "logs")
    for i, (name, src) in enumerate(todo if jobs == 1 else [], 1):
        label = f"[{i}/{len(todo)}] {name}"
        print(f"{label} ... {timings.describe_start(name)}", flush=True)
        t0 = time.perf_counter()
        with _Ticker(label, timings, name, enabled=progress):
            try:
                path = run_notebook(src, None, executed, profile=prof, progress=False)
                ok, error = True, ""
            except NotebookError as err:
                path, ok, error = err.output, False, str(err)
        seconds = time.perf_counter() - t0
        runs.append(NotebookRun(name, ok, seconds, path, error))
        timings.done(name, seconds, ok)
        if ok:
            print(f"{label} ok ({_hms(seconds)}); {timings.describe_run()}", flush=True)
        else:
            print(f"{label} FAILED: {error}", file=sys.stderr, flush=True)
    failed = [r for r in runs if not r.ok]
    status = 1 if failed else 0
    if build:
        src_tree = prepare_build_tree(book_root, out_dir / "book_src", executed, exclude=skip)
        # ``only`` into a folder where the other pages never ran: those pages have no results
        # (their glued numbers are missing, which -W would make an error). Build the site anyway,
        # with warnings allowed, and say which pages are empty.
        never_ran = [n for n, _ in notebooks if not (executed / f"{n}.ipynb").exists()]
        strict = warnings_as_errors and not never_ran
        if never_ran and warnings_as_errors:
            print(f"note: {len(never_ran)} page(s) never ran into {out_dir} and show no results: "
                  f"{', '.join(never_ran)} (run them, or reproduce without --only); "
                  "building with warnings allowed", flush=True)  # fmt: skip
        try:
            html = build_site(src_tree, warnings_as_errors=strict, output=out_dir)
            print(f"site: {html / 'index.html'}", flush=True)
        except subprocess.CalledProcessError as err:
            print(f"error: jupyter-book build failed (exit {err.returncode})", file=sys.stderr)
            status = 1
    print(f"{len(runs) - len(failed)}/{len(runs)} notebook(s) ran", flush=True)
    for r in failed:
        print(f"  FAILED {r.name}: {r.error}", file=sys.stderr)
    return status


def cpu_cores() -> int:
    """Cores this process may use (its CPU affinity where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def job_environment(jobs: int, cores: int | None = None) -> dict[str, str]:
    """Thread settings of one of ``jobs`` notebook processes sharing ``cores`` cores: each gets
    ``max(1, cores // jobs)`` threads (torch reads ``OMP_NUM_THREADS`` when it starts)."""
    threads = str(max(1, (cores or cpu_cores()) // max(1, jobs)))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def _job_main(spec_file: str) -> int:
    """Entry point of one notebook process of ``reproduce(jobs=N)``: the spec (JSON) names the
    notebook, the executed-notebooks folder and the resolved profile; writes the outcome (JSON)
    beside the spec."""
    spec = json.loads(Path(spec_file).read_text())
    try:
        path = run_notebook(
            spec["src"], None, spec["executed"], profile=spec["profile"], progress=False
        )
        outcome = {"ok": True, "output": str(path), "error": ""}
    except NotebookError as err:
        outcome = {"ok": False, "output": str(err.output or ""), "error": str(err)}
    Path(spec_file).with_suffix(".result.json").write_text(json.dumps(outcome))
    return 0 if outcome["ok"] else 1


def _run_parallel(
    todo: Sequence[tuple[str, Path]],
    executed: Path,
    prof: Mapping[str, Any],
    jobs: int,
    timings: RunTimes,
    logs: Path,
) -> list[NotebookRun]:
    """Run ``todo`` in at most ``jobs`` processes at once, in order, the first one alone with every
    core; one line when a notebook starts and one when it ends, its output in ``logs/<name>.log``."""
    import tempfile
    import threading
    from concurrent.futures import ThreadPoolExecutor

    logs.mkdir(parents=True, exist_ok=True)
    envs = {1: {**os.environ, **job_environment(1)}, jobs: {**os.environ, **job_environment(jobs)}}
    lock = threading.Lock()
    order = {name: i for i, (name, _) in enumerate(todo, 1)}
    print(f"{todo[0][0]} first, alone ({envs[1]['OMP_NUM_THREADS']} threads: it computes the "
          "maps the other pages share); then "
          f"{jobs} notebooks at a time, {envs[jobs]['OMP_NUM_THREADS']} thread(s) each; "
          f"their output: {logs}", flush=True)  # fmt: skip

    def one(item: tuple[str, Path], env: Mapping[str, str]) -> NotebookRun:
        name, src = item
        label = f"[{order[name]}/{len(todo)}] {name}"
        with lock:
            timings.begin(name)
            print(f"{label} ... {timings.describe_start(name)}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"paper_code_{name}_") as tmp:
            spec = Path(tmp) / "spec.json"
            spec.write_text(
                json.dumps({"src": str(src), "executed": str(executed), "profile": prof})
            )
            t0 = time.perf_counter()
            with open(logs / f"{name}.log", "w") as log:
                subprocess.run(
                    [sys.executable, "-c",
                     "import sys; from paper_code.reproduce.notebooks import _job_main; "
                     "sys.exit(_job_main(sys.argv[1]))", str(spec)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                )  # fmt: skip
            seconds = time.perf_counter() - t0
            result = spec.with_suffix(".result.json")
            if result.exists():
                outcome = json.loads(result.read_text())
            else:  # the process died before it could report (killed, out of memory)
                outcome = {"ok": False, "output": "", "error": f"process died; see {log.name}"}
        run = NotebookRun(
            name, outcome["ok"], seconds, Path(outcome["output"]) if outcome["output"] else None,
            outcome["error"],
        )  # fmt: skip
        with lock:
            timings.done(name, seconds, run.ok)
            if run.ok:
                print(f"{label} ok ({_hms(seconds)}); {timings.describe_run()}", flush=True)
            else:
                print(f"{label} FAILED: {run.error} (log: {logs / f'{name}.log'})",
                      file=sys.stderr, flush=True)  # fmt: skip
        return run

    # The first notebook (Table 1) computes every method's maps, which the next pages reuse from the
    # cache: run in parallel with it, they would wait for its maps (the cache lock) while it runs
    # with a fraction of the cores. So it runs alone, with all of them. The pages that read what
    # all the others wrote (RUN_LAST) run after them, one at a time, with every core too.
    first = one(todo[0], envs[1])
    middle = [item for item in todo[1:] if item[0] not in RUN_LAST]
    last = [item for item in todo[1:] if item[0] in RUN_LAST]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = [first, *pool.map(lambda item: one(item, envs[jobs]), middle)]
    return runs + [one(item, envs[1]) for item in last]


# --------------------------------------------------------------------------- time estimates


def _hms(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunTimes:
    """Elapsed and estimated remaining time of a ``reproduce`` run.

    The estimate of each notebook is its time in the last run with the same output folder
    (``<output_dir>/timings.json``, rewritten after every notebook), else the profile's
    ``expected_seconds`` (times the project measured); notebooks with neither
    time count as the mean of those measured so far in this run (after the first one). Recorded
    times are scaled by how fast this run goes compared with the last one."""

    def __init__(
        self, path: Path, names: Sequence[str], expected: Mapping[str, float] | None = None
    ) -> None:
        self.path, self.names = Path(path), list(names)
        # A profile's ``expected_seconds`` (measured by the project) stand in for notebooks never
        # run into this folder, so that a first run has an estimate too.
        self.last: dict[str, float] = {k: float(v) for k, v in (expected or {}).items()}
        recorded: dict[str, float] = {}
        try:
            loaded = json.loads(self.path.read_text())
            recorded = {k: float(v) for k, v in (loaded.get("seconds") or {}).items()}
        except (OSError, ValueError, AttributeError):
            pass
        self.last.update(recorded)
        self.from_profile = {n for n in self.names if n in self.last and n not in recorded}
        self.now: dict[str, float] = {}  # notebooks that ran in this run, and their times
        self.finished: set[str] = set()  # ran or failed
        self.start = time.perf_counter()
        # ``reproduce(jobs=N)``: N notebooks at once after ``alone`` (run first, by itself); the
        # ones running now and when they started. One at a time: slots 1.
        self.slots, self.alone = 1, None
        self.running: dict[str, float] = {}

    def parallel(self, slots: int, alone: str | None = None) -> None:
        """Estimate as ``reproduce(jobs=slots)`` runs: ``alone`` first by itself, then the others
        ``slots`` at a time, in order, each starting when a slot frees (list scheduling)."""
        self.slots, self.alone = max(1, int(slots)), alone

    def begin(self, name: str) -> None:
        self.running[name] = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _speed(self) -> float:
        pairs = [(self.now[n], self.last[n]) for n in self.now if self.last.get(n)]
        if not pairs:
            return 1.0
        return sum(a for a, _ in pairs) / max(sum(b for _, b in pairs), 1e-9)

    def estimate(self, name: str) -> float | None:
        """Expected seconds of ``name`` (None: nothing to go on yet)."""
        if name in self.last:
            return self.last[name] * self._speed()
        if self.now:
            return sum(self.now.values()) / len(self.now)
        return None

    def remaining(self, current: str | None = None, current_elapsed: float = 0.0) -> float | None:
        """Seconds left for the notebooks not finished yet (None: unknown): their sum one at a
        time; with :meth:`parallel`, the wall time of scheduling them on the free slots."""
        left = [n for n in self.names if n not in self.finished]
        estimates = {n: self.estimate(n) for n in left}
        if any(e is None for e in estimates.values()):
            return None
        now = time.perf_counter()
        elapsed = {n: now - t0 for n, t0 in self.running.items() if n in estimates}
        if current is not None:
            elapsed[current] = current_elapsed
        rest = {n: max(float(estimates[n] or 0.0) - elapsed.get(n, 0.0), 0.0) for n in left}
        if self.slots == 1:
            return sum(rest.values())
        serial = rest.pop(self.alone, 0.0)  # (None or finished: nothing to run alone)
        slots = sorted(rest.pop(n) for n in list(rest) if n in elapsed)  # already running
        slots += [0.0] * max(self.slots - len(slots), 0)
        for n in left:  # the others start in order, each on the first slot to free
            if n in rest:
                slots.sort()
                slots[0] += rest[n]
        return serial + max(slots, default=0.0)

    def done(self, name: str, seconds: float, ok: bool) -> None:
        self.finished.add(name)
        self.running.pop(name, None)
        if ok:  # a failed notebook's time says nothing about the others
            self.now[name] = seconds
            merged = {**self.last, **{k: round(v, 1) for k, v in self.now.items()}}
            # ``now`` drives the estimates; ``last`` on disk keeps the newest time of each notebook.
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps({"seconds": merged}, indent=1) + "\n")
            except OSError:
                pass

    def describe_total(self) -> str:
        r = self.remaining()
        if r is None:
            known = sum(1 for n in self.names if n in self.last)
            return (
                f"unknown for {len(self.names) - known} notebook(s) never run into this folder "
                "(estimates follow after the first notebook)"
            )
        source = (
            f"times of the last run in {self.path.name}"
            if not self.from_profile
            else "the profile's measured times, rescaled as the run goes"
            if self.from_profile == set(self.names)
            else f"times of the last run in {self.path.name} and the profile's measured times"
        )
        if self.slots > 1:
            source += f"; {self.slots} at a time after {self.alone or 'the first'}"
        return f"about {_hms(r)} ({source})"

    def describe_start(self, name: str) -> str:
        e = self.estimate(name)
        return f"(about {_hms(e)})" if e is not None else ""

    def describe_run(self, current: str | None = None, current_elapsed: float = 0.0) -> str:
        r = self.remaining(current, current_elapsed)
        left = "remaining unknown" if r is None else f"about {_hms(r)} left"
        return f"run {_hms(self.elapsed())} elapsed, {left}"


class _Ticker:
    """On a terminal, one status line updated every second while a notebook runs: the notebook's
    elapsed and estimated remaining time, and the run's."""

    def __init__(self, label: str, timings: RunTimes, name: str, enabled: bool = True) -> None:
        import threading

        self.label, self.timings, self.name = label, timings, name
        self.enabled = enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.perf_counter()

    def line(self) -> str:
        el = time.perf_counter() - self._t0
        e = self.timings.estimate(self.name)
        mine = f"{_hms(el)} elapsed" + (f", ~{_hms(max(e - el, 0))} left" if e else "")
        return f"{self.label}: {mine} | {self.timings.describe_run(self.name, el)}"

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            sys.stderr.write("\r\033[K" + self.line())
            sys.stderr.flush()

    def __enter__(self) -> _Ticker:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# --------------------------------------------------------------------------- building the site


def prepare_build_tree(
    book_root: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    executed: str | os.PathLike[str] | None = None,
    exclude: Sequence[str] = (),
) -> Path:
    """Copy ``_config.yml``, ``_toc.yml`` and ``book/`` to ``dest``, with every notebook replaced
    by its executed copy from ``executed/<name>.ipynb`` when there is one, else by its output-free
    ``.ipynb`` (text ``.md`` notebooks are removed: jupyter-book would prefer them).

    ``_config.yml`` gets the repository setting applied (:func:`paper_code.reproduce.publish.site_config`)
    and executed notebooks are made publishable (:func:`publishable_notebook`). Notebooks named in
    ``exclude`` (a profile's ``skip`` list) are left out of the tree and of its table of contents."""
    from .publish import site_config

    book_root, dest = Path(book_root), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    toc = yaml.safe_load((book_root / "_toc.yml").read_text())
    if exclude:
        for part in toc.get("parts", []):
            part["chapters"] = [
                c for c in part.get("chapters", []) if Path(c.get("file", "")).name not in exclude
            ]
    (dest / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    # The repository setting (or $PAPER_CODE_REPOSITORY) decides the repository/launch buttons and
    # the Pages base URL; only links that work for it are kept.
    config = site_config(yaml.safe_load((book_root / "_config.yml").read_text()) or {})
    (dest / "_config.yml").write_text(
        "# Generated by paper_code.reproduce.notebooks.prepare_build_tree from _config.yml\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    )
    shutil.copytree(
        book_root / "book",
        dest / "book",
        ignore=shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__"),
    )
    for name in exclude:
        for suffix in (".md", ".ipynb"):
            (dest / "book" / f"{name}{suffix}").unlink(missing_ok=True)
    for md in (dest / "book").rglob("*.md"):
        if not is_notebook(md):
            continue
        name = md.stem
        ran = Path(executed) / f"{name}.ipynb" if executed else None
        target = md.with_suffix(".ipynb")
        if ran is not None and ran.exists():
            publishable_notebook(ran, target, book_root)
        elif not target.exists():
            import jupytext

            jupytext.write(jupytext.read(md, fmt="md:myst"), target, fmt="ipynb")
        md.unlink()
    return dest


def _relative_paths(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def publishable_notebook(
    executed: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    book_root: str | os.PathLike[str] = REPO_ROOT,
) -> Path:
    """Copy an executed notebook for the site without the machine's absolute paths.

    The cell papermill injected is removed and its values (the parameters that actually ran) replace
    the defaults of the cell tagged ``parameters``, so the page shows them once; paths under the
    book root (the repository) are written relative to it, the run's output folder elsewhere as
    ``<output_dir>``, paths under the home folder as ``~/…``, in every cell's source and text
    output and in the papermill metadata."""
    import nbformat

    root = str(Path(book_root).resolve())
    home = str(Path.home().resolve())
    replacements = [(root + "/", ""), (root, ".")]
    if home not in ("/", root):
        replacements += [(home + "/", "~/"), (home, "~")]
    nb = nbformat.read(executed, as_version=4)
    # The run's output folder, when outside the repository (a temporary or scratch folder).
    ran_in = ((nb.metadata.get("papermill") or {}).get("parameters") or {}).get("output_dir")
    if isinstance(ran_in, str) and ran_in.startswith("/") and not Path(ran_in).is_relative_to(root):
        replacements.insert(0, (ran_in.rstrip("/"), "<output_dir>"))
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    declared = [
        c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])
    ]
    if injected and declared:
        declared[0].source = "# Parameters of this run (injected by papermill)\n" + injected[
            0
        ].source.split("\n", 1)[-1].lstrip("\n")
        nb.cells.remove(injected[0])
    for cell in nb.cells:
        cell.source = _relative_paths(cell.source, replacements)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = _relative_paths(out["text"], replacements)
            for mime, value in (out.get("data") or {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = _relative_paths(value, replacements)
    pm = nb.metadata.get("papermill")
    if pm:
        nb.metadata["papermill"] = json.loads(_relative_paths(json.dumps(pm), replacements))
    dest = Path(dest)
    nbformat.write(nb, dest)
    return dest


def build_site(
    src: str | os.PathLike[str],
    warnings_as_errors: bool = True,
    output: str | os.PathLike[str] | None = None,
    quiet: bool = True,
) -> Path:
    """``jupyter-book build`` of ``src`` (execution stays as configured: off). Returns the HTML
    folder (``<output or src>/_build/html``). Raises ``subprocess.CalledProcessError`` on failure."""
    src = Path(src).resolve()
    # jupyter_book.cli.main has no __main__ block: call its click entry point.
    entry = "from jupyter_book.cli.main import main; main()"
    cmd = [sys.executable, "-c", entry, "build", str(src), "--keep-going"]
    if warnings_as_errors:
        cmd += ["-W", "-n"]
    if quiet:
        cmd += ["-q"]
    if output is not None:
        cmd += ["--path-output", str(Path(output).resolve())]
    subprocess.run(cmd, check=True)
    return Path(output or src).resolve() / "_build" / "html"


#: The pages of the book's first part, after the introduction, in this order: the report first
#: (what a reader of a reproduction wants to know), then how to run it, the choices made, and how
#: much the open protocol choices move the numbers.
REPRODUCTION_PAGES = ("report", "reproduce", "deviations", "sensitivity")
#: The table and figure notebooks in the paper's order (figA6 covers Figs. A.6 and A.7).
PAPER_ORDER = (
    "table1", "table2", "table3", "table4", "table5", "table6", "tableA7", "tableA8", "tableA9",
    "tableA10", "tableA11", "tableA12", "tableA13", "tableA14", "fig1", "fig2", "fig3", "figA4",
    "figA5", "figA6",
)  # fmt: skip

_TOC_HEADER = """\
# Table of contents (Jupyter Book 1). Every "file" below must exist; tests/test_book.py checks that
# each entry exists and that every notebook in book/ is listed. Regenerate after adding a notebook:
#   python -c "from paper_code.reproduce.notebooks import write_toc; write_toc()"
# Notebooks go in paper order: {order} (figA6 covers Figs. A.6 and A.7).
"""


def write_toc(book_root: str | os.PathLike[str] = REPO_ROOT) -> list[str]:
    """Rewrite ``_toc.yml``: the text pages, then every notebook of :data:`PAPER_ORDER` that exists
    in ``book/`` (as ``book/<name>.md``). Returns the notebook names listed."""
    book_root = Path(book_root)
    names = [n for n in PAPER_ORDER if (book_root / "book" / f"{n}.md").exists()]
    toc = {
        "format": "jb-book",
        "root": "book/intro",
        "parts": [
            {
                "caption": "The reproduction",
                "chapters": [
                    {"file": f"book/{n}"}
                    for n in REPRODUCTION_PAGES
                    if (book_root / "book" / f"{n}.md").exists()
                ],
            },
            {"caption": "Tables and figures", "chapters": [{"file": f"book/{n}"} for n in names]},
        ],
    }
    header = _TOC_HEADER.format(order=" ".join(PAPER_ORDER))
    text = header + yaml.safe_dump(toc, sort_keys=False, default_flow_style=False)
    (book_root / "_toc.yml").write_text(text)
    return names
