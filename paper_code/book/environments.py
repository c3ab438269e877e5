"""Fresh environments as readers get them: Colab (a kernel without ``paper_code``) and Binder
(repo2docker: ``environment.yml``, then ``postBuild``). Used by ``tests/test_colab.py`` and
``tests/test_binder.py``.

repo2docker itself needs Docker and conda's channels, which the project's machines cannot reach; its
two steps are emulated in a fresh virtual environment of the same Python (``python=3.11`` of
``environment.yml``): ``pip install`` of the ``pip:`` section (what repo2docker's conda does with
it), then ``bash postBuild`` in the repository. The GitHub workflow ``binder.yml`` runs the real
repo2docker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..layout import REPO_ROOT

__all__ = [
    "PeakMemory",
    "binder_requirements",
    "clone_worktree",
    "fresh_venv",
    "papermill_in",
    "venv_kernel",
]


def clone_worktree(dest: str | os.PathLike[str], repo: str | os.PathLike[str] = REPO_ROOT) -> Path:
    """Copy the repository's files as a clone would have them (tracked and untracked files that
    git does not ignore, as they are now in the working tree) to ``dest``."""
    repo, dest = Path(repo), Path(dest)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = repo / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def remove_in_background(path: str | os.PathLike[str]) -> None:
    """Delete ``path`` (a multi-GB environment) in a detached process: tens of thousands of files
    take minutes to delete on a busy disk, which the caller need not wait for."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(path.name + f".deleting-{os.getpid()}-{time.monotonic_ns()}")
    path.rename(trash)  # gone from its place at once, even if the deletion is interrupted
    subprocess.Popen(
        ["rm", "-rf", str(trash)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PAPER_CODE_BOOK_RUN")
        and not k.startswith(("JUPYTER_", "PYTEST_"))
    }
    # No bytecode compilation at install time (torch alone has thousands of modules: tens of
    # seconds on a small machine); Python compiles what it imports on first use instead. What is
    # installed, and whether it works, is unchanged. A caller's PIP_COMPILE wins.
    env.setdefault("PIP_COMPILE", "0")
    env.update(extra)
    return env


def fresh_venv(
    dest: str | os.PathLike[str], packages: Sequence[str] = (), python: str = sys.executable
) -> Path:
    """A new virtual environment (no system site-packages) with ``packages`` pip-installed;
    returns its Python."""
    dest = Path(dest)
    subprocess.run([python, "-m", "venv", str(dest)], check=True)
    py = dest / "bin" / "python"
    if packages:
        pip(py, ["install", "-q", *packages])
    return py


def pip(py: Path, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), "-m", "pip", *args], check=True, env=_clean_env(), **kw)


def importable(py: Path, module: str, cwd: str | os.PathLike[str] | None = None) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(py), "-c", code], cwd=cwd, env=_clean_env()).returncode == 0


def venv_kernel(py: Path, jupyter_path: str | os.PathLike[str], name: str) -> str:
    """Register a kernel ``name`` running ``py`` under ``<jupyter_path>/kernels``."""
    spec = Path(jupyter_path) / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    argv = [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": name, "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return name


def binder_requirements(environment: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``(conda packages, pip requirements)`` of an ``environment.yml``."""
    data = yaml.safe_load(Path(environment).read_text())
    conda, pip_reqs = [], []
    for dep in data.get("dependencies") or []:
        if isinstance(dep, dict):
            pip_reqs += [str(r) for r in dep.get("pip") or []]
        else:
            conda.append(str(dep))
    return conda, pip_reqs


class PeakMemory:
    """Peak of the memory of a process and all its descendants (Linux /proc), sampled every
    ``interval`` seconds in a thread: the sum of their proportional set sizes (PSS: pages shared
    between processes, e.g. a kernel's forked workers, count once, as under a cgroup's limit), or
    of their resident sizes where PSS is not available."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _tree_rss(root: int) -> int:
        parent: dict[int, int] = {}
        rss: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            pid = int(d.name)
            parent[pid] = int(fields.get("PPid", "0").strip() or 0)
            rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            try:
                rollup = (d / "smaps_rollup").read_text()
                pss = next(ln for ln in rollup.splitlines() if ln.startswith("Pss:"))
                rss[pid] = int(pss.split()[1]) * 1024
            except (OSError, StopIteration, ValueError, IndexError):
                pass
        total, stack = 0, [root]
        while stack:
            p = stack.pop()
            total += rss.get(p, 0)
            stack += [c for c, pp in parent.items() if pp == p]
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def papermill_in(
    python: str | os.PathLike[str],
    notebook: str | os.PathLike[str],
    output: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    cwd: str | os.PathLike[str],
    kernel: str = "python3",
    env: Mapping[str, str] | None = None,
    timeout: float = 1200,
) -> tuple[subprocess.CompletedProcess, int, float]:
    """Execute ``notebook`` with the papermill of ``python`` (its kernel ``kernel``) in ``cwd``.

    Returns the finished process, the peak resident memory of papermill and its kernel together
    (bytes) and the wall time (seconds)."""
    params = Path(output).with_suffix(".parameters.yml")
    params.write_text(yaml.safe_dump(dict(parameters)))
    cmd = [
        str(python), "-m", "papermill", str(notebook), str(output), "-f", str(params),
        "-k", kernel, "--cwd", str(cwd), "--no-progress-bar",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=_clean_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with PeakMemory(proc.pid) as mem:
        out, _ = proc.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    return done, mem.peak, time.perf_counter() - t0
