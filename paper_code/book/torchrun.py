"""What every rank of a sharded ``reproduce`` does (``torchrun ... -m paper_code reproduce``): execute
the notebooks on its share of the images (:mod:`paper_code.experiments.distributed`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..experiments.distributed import abort, notebook_scope, rank, rank_dir, world_size


def run_notebooks(
    profile: str | os.PathLike[str] | Mapping[str, Any] = "sample",
    out: str | os.PathLike[str] | None = None,
    only: Sequence[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> int:
    """What every rank of a sharded ``reproduce`` does: execute the notebooks of the table of
    contents in order, with ``reproduce``'s parameters (its resolution of ``out`` and
    ``cache_dir``), into ``<out>/notebooks`` on rank 0 and ``<out>/ranks/rank<r>/notebooks``
    on the others. A notebook that fails on one rank is reported to the others (:func:`abort`),
    whose barriers in that notebook then fail too instead of waiting; the next notebooks run.
    Returns 1 if a notebook failed on this rank. Rank 0 then builds the site
    (``reproduce(..., execute=False)``)."""
    from .profiles import resolve_run
    from .runner import NotebookError, check_parameters, declared_parameters, run_notebook
    from .toc import run_order, toc_notebooks

    prof, out_dir = resolve_run(profile, out, parameters)
    executed = rank_dir(out_dir) / "notebooks"
    skip = set(prof.get("skip") or ())  # the profile's skipped pages, as in ``reproduce``
    todo = [s for s in toc_notebooks() if s.stem not in skip and (not only or s.stem in only)]
    order = run_order([s.stem for s in todo])
    todo.sort(key=lambda s: order.index(s.stem))
    unknown = set(only or ()) - {s.stem for s in todo}
    if unknown:
        raise ValueError(f"not in the table of contents: {sorted(unknown)}")
    check_parameters(parameters, declared_parameters(todo))
    failed = 0
    tag = f"rank {rank()}/{world_size()}"
    for i, src in enumerate(todo, 1):
        t0 = time.perf_counter()
        try:
            with notebook_scope(src.stem):
                run_notebook(src, None, executed, profile=prof, progress=False)
            print(f"[{i}/{len(todo)}] {src.stem} ok ({tag}, {time.perf_counter() - t0:.0f} s)",
                  flush=True)  # fmt: skip
        except NotebookError as err:
            failed += 1
            abort(str(err), src.stem)
            print(
                f"[{i}/{len(todo)}] {src.stem} FAILED ({tag}): {err}", file=sys.stderr, flush=True
            )
    return 1 if failed else 0
