"""Execute one notebook of the book with papermill, with a profile's parameters (:func:`run_notebook`).

Only the parameters a notebook declares in its cell tagged ``parameters`` reach it; a parameter no
notebook of a run declares is refused (:func:`check_parameters`). The committed sources are never
written: the executed copy goes to the output folder.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..layout import BOOK_DIR
from ..names import ENV_BOOK, ENV_COMPILE
from ..runtime import environment
from .profiles import load_profile, profile_parameters

#: Parameters holding paths, or mappings of paths (per model or dataset): made absolute
#: (relative to the caller's cwd) before injection.
PATH_PARAMETERS = ("root", "output_dir", "cache_dir", "weights", "medical_root", "checkpoints")


#: Values of path parameters that are keywords, not paths (``weights``: random initialization).
PATH_KEYWORDS = ("random",)


#: Profile parameters that set the kernel's process up (:func:`kernel_environment`) instead of
#: being injected into the notebook.
PROCESS_PARAMETERS = ("compile_evaluation",)


#: Extra kernel arguments: ipykernel's own log shows errors only (not its TCP warning).
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


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
    # (paper_code.experiments.display.glue then leaves the values to the page's prose).
    with environment(kernel_environment(**process)):
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
    return output


def kernel_environment(compile_evaluation: bool | str | None = None) -> dict[str, str]:
    """Variables a notebook's kernel gets on top of this process's environment: the book-run flag,
    and, when this ``paper_code`` is a source checkout, its folder first on ``PYTHONPATH`` so the
    kernel imports the very code that runs it (not another installed copy, and not the notebook's
    fallback install from the repository when the checkout was never ``pip install``-ed).

    ``compile_evaluation`` (a profile parameter, e.g. ``-p compile_evaluation true``): the
    metrics' and Score-CAM's forward passes under ``torch.compile``
    (:data:`paper_code.names.ENV_COMPILE`); for GPUs."""

    env = {ENV_BOOK: "1"}
    if compile_evaluation is not None:
        env[ENV_COMPILE] = str(compile_evaluation)
    package_parent = str(Path(__file__).resolve().parents[2])
    if (Path(package_parent) / "pyproject.toml").exists():
        rest = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x]
        env["PYTHONPATH"] = os.pathsep.join(
            [package_parent, *(x for x in rest if x != package_parent)]
        )
    return env
