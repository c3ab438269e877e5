"""What the notebooks use to show values, wherever they run.

- In the book (executed by ``paper_code reproduce`` / ``run``, rendered by Jupyter Book), :func:`glue`
  is ``myst_nb.glue``: the values fill the ``{glue:text}`` roles of the page's prose.
- Anywhere else (Colab, Binder, a plain Jupyter or ``python`` session), the prose's roles are not
  rendered, so :func:`glue` also prints ``name = value`` under the cell: the numbers are still shown.
  ``myst_nb`` is optional: without it the values are only kept in :data:`GLUED`.

:func:`commit_link` turns a provenance dict (``paper_code.reproduce.paper.provenance``) into a
Markdown link to the commit the page was built from; :func:`relative_path` shortens paths for
captions (no absolute paths of the machine that ran the notebook).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ENV_BOOK", "GLUED", "commit_link", "glue", "in_book_run", "relative_path"]

#: Set (to ``1``) in the kernel's environment by :func:`paper_code.reproduce.notebooks.run_notebook`:
#: the notebook is executed for the book, whose pages render the glued values themselves.
ENV_BOOK = "PAPER_CODE_BOOK_RUN"
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
        from .publish import repository_url

        return repository_url()
    except (OSError, ValueError):  # no _config.yml (an installed package): use the setting alone
        return os.environ.get("PAPER_CODE_REPOSITORY", "")


def commit_link(info: Mapping[str, Any] | str, url: str | None = None) -> str:
    """Markdown for the commit a page was built from: ``[abc123def456](…/commit/abc123def456)``.

    ``info``: a provenance dict (its ``git_commit``) or the commit string itself. A ``+dirty``
    commit (uncommitted changes) links to its base commit and says so; an unknown commit or a
    repository with no web page (local folder) gives the plain text."""
    sha = str(info.get("git_commit", "unknown") if isinstance(info, Mapping) else info)
    from .publish import commit_url

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
    from .notebooks import REPO_ROOT

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
