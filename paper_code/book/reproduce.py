"""Run the book's notebooks and build the site.

The book (``_config.yml``, ``_toc.yml``, ``book/``) is a Jupyter Book 1 whose table and figure pages
are jupytext MyST notebooks (``book/<name>.md``, paired with an output-free ``book/<name>.ipynb``).

- :func:`run_notebook` executes one notebook with papermill, parameters from a *profile*
  (``paper_code/book/profiles/*.yml``) plus overrides, into ``<output_dir>/<name>.ipynb``; the committed
  sources are never written.
- :func:`reproduce` executes every notebook of the table of contents, copies the executed notebooks
  into a build tree and renders it with ``jupyter-book build`` with execution **off**, so nothing
  runs twice and heavy (GPU) work stays out of the book build.
- :func:`paper_table`, :func:`provenance`, :func:`evaluate` and :func:`compare_with_paper` are the
  helpers the notebooks use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..layout import REPO_ROOT
from .profiles import resolve_run
from .runner import NotebookError, check_parameters, declared_parameters, run_notebook
from .schedule import TIMINGS_FILE, RunTimes, _hms, _Ticker, job_environment
from .site import build_site, prepare_build_tree
from .toc import RUN_LAST, run_order, toc_notebooks


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
    (:meth:`~paper_code.experiments.results.MapCache.get_or_compute`), so nothing is computed twice
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
                     "import sys; from paper_code.book.reproduce import _job_main; "
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
