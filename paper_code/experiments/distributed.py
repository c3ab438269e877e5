"""Sharded runs on ``torchrun``: every rank computes a disjoint share of the images, rank 0 renders.

``torchrun --nproc_per_node=N -m paper_code run table1 ...`` starts N processes; each executes the
notebook with papermill (the kernel inherits ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``), so inside the kernel:

- :func:`shard` keeps every N-th image of the dataset order (deterministic, disjoint, balanced:
  shard sizes differ by at most one), and :func:`paper_code.experiments.run_rows`
  computes only the images of its rank;
- per-image rows go to a per-rank file (``<name>_rows.rank<r>.csv``, :func:`rank_path`; a single
  process keeps writing ``<name>_rows.csv``), so two processes never append to one CSV; readers
  (:class:`~paper_code.experiments.results.ResultTable`) merge the base file and every rank file, so
  the done-check sees the images of every rank and of earlier runs with any N;
- the map cache needs nothing: one atomically written file per image;
- :func:`barrier` (on the rendezvous store of torchrun, see below) ends every ``run_rows`` and
  starts ``TableRun.collect``, so each rank reads the complete rows after it;
- ``cuda`` means ``cuda:LOCAL_RANK`` (:func:`device`).

Every rank executes the whole notebook (so the barriers of all ranks match, whatever the notebook
does between them); only rank 0's executed notebook is the book's: the other ranks write theirs,
and the files ``TableRun`` writes (summary, configs, figures), under ``<output_dir>/ranks/rank<r>``.

The barrier uses torchrun's key-value store (``TORCHELASTIC_USE_AGENT_STORE``: the agent serves it
at ``MASTER_ADDR:MASTER_PORT`` for the whole job, so it outlives each notebook's kernel). It needs
no device, waits as long as a rank needs (``PAPER_CODE_BARRIER_TIMEOUT`` seconds, default 48 h) and
fails at once when a rank reported a failed notebook (:func:`abort`) instead of hanging. A process
group (gloo on the CPU, nccl on CUDA) for collectives is available from :func:`process_group`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "abort",
    "barrier",
    "device",
    "is_distributed",
    "launch",
    "local_rank",
    "notebook_scope",
    "process_group",
    "rank",
    "rank_path",
    "rank_paths",
    "serve_store",
    "shard",
    "torchrun_command",
    "world_size",
]

#: Environment variables torchrun sets for each worker (and the kernel inherits).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Seconds a rank waits for the others at a barrier before failing.
TIMEOUT_ENV = "PAPER_CODE_BARRIER_TIMEOUT"
DEFAULT_TIMEOUT = 48 * 3600.0
_PREFIX = "paper_code/"
#: Set by the launching process to the notebook a kernel executes: barriers and failure reports are
#: scoped to it, so a notebook that fails on one rank fails on every rank without touching the next.
SCOPE_ENV = "PAPER_CODE_NOTEBOOK"

_store = None
_calls: dict[str, int] = {}
_group_ready = False


# --------------------------------------------------------------------------- who am I


def rank() -> int:
    """This process's global rank (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes of the job (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """Rank on this node (the GPU index)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def device(name: str | Any = "cpu") -> str | Any:
    """The device of this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` in a sharded run (and
    becomes the current CUDA device, so code that says ``"cuda"`` lands there too); any other
    value is returned unchanged."""
    if not is_distributed() or str(name) != "cuda":
        return name
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    return f"cuda:{local_rank()}"


def _bind_device() -> None:
    """In a sharded run on GPUs, make ``cuda:LOCAL_RANK`` the current device as soon as this module
    is imported (every notebook imports it through ``experiments``), so that a bare ``"cuda"`` in
    any notebook (model loading included) means this rank's GPU."""
    if is_distributed():
        import torch

        if torch.cuda.is_available() and local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())


def shard(ids: Sequence[str]) -> list[str]:
    """This rank's share of ``ids``: every ``world_size``-th id from position ``rank``.

    Deterministic (the seeded id list is the same on every rank), disjoint, covering, and
    balanced (sizes differ by at most one), also for the images left after a partial run: a
    resumed run with any N again splits the done images evenly.
    """
    return list(ids)[rank() :: world_size()]


def rank_path(path: str | os.PathLike[str], r: int | None = None) -> Path:
    """The rows file of rank ``r`` (default: this rank): ``<stem>.rank<r><suffix>``; the path itself
    in a single-process run."""
    path = Path(path)
    if r is None:
        if not is_distributed():
            return path
        r = rank()
    return path.with_name(f"{path.stem}.rank{r}{path.suffix}")


def rank_paths(path: str | os.PathLike[str]) -> list[Path]:
    """Every rows file of ``path``: the base file and the rank files of any earlier or current
    sharded run, in a fixed order (base first, then by rank)."""
    path = Path(path)
    found = []
    for p in path.parent.glob(f"{path.stem}.rank*{path.suffix}"):
        tail = p.name[len(path.stem) + len(".rank") : len(p.name) - len(path.suffix)]
        if tail.isdigit():
            found.append((int(tail), p))
    return [path] + [p for _, p in sorted(found)]


def rank_dir(out: str | os.PathLike[str]) -> Path:
    """Where rank ``r > 0`` writes what only rank 0 publishes (executed notebook, summaries)."""
    out = Path(out)
    return out if rank() == 0 else out / "ranks" / f"rank{rank()}"


# --------------------------------------------------------------------------- synchronisation


def _timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))


def store():
    """A client of the job's key-value store at ``MASTER_ADDR:MASTER_PORT`` (``None`` when not
    distributed)."""
    global _store
    if not is_distributed():
        return None
    if _store is None:
        import torch.distributed as dist

        _store = dist.TCPStore(
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(os.environ["MASTER_PORT"]),
            world_size(),
            is_master=False,
            timeout=timedelta(seconds=300),
        )
    return _store


@contextmanager
def serve_store():
    """Serve the key-value store for the whole job when no torchrun agent does (a job launched by
    hand with the environment variables set): rank 0's launcher process hosts it, so it outlives
    the kernels. Under torchrun (``TORCHELASTIC_USE_AGENT_STORE=True``) this does nothing."""
    server = None
    if (
        is_distributed()
        and rank() == 0
        and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    ):
        import torch.distributed as dist

        server = dist.TCPStore(
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(os.environ["MASTER_PORT"]),
            world_size(),
            is_master=True,
            wait_for_workers=False,
        )
    try:
        yield server
    finally:
        del server


def barrier(name: str) -> None:
    """Wait until every rank reached the barrier ``name`` (no-op in a single process).

    Barriers of the same name are counted per process, so ranks that call the same sequence of
    barriers meet at the same ones. Raises ``RuntimeError`` if a rank reported a failure
    (:func:`abort`) or after ``PAPER_CODE_BARRIER_TIMEOUT`` seconds.
    """
    if not is_distributed():
        return
    s = store()
    n = world_size()
    _calls[name] = _calls.get(name, 0) + 1
    key = f"{_scope()}barrier/{name}#{_calls[name]}"
    abort_key = _scope() + "abort"
    arrived = s.add(key, 1)
    goal = -(-arrived // n) * n  # the generation this arrival belongs to (a key reused by a rerun)
    deadline = time.monotonic() + _timeout()
    wait = 0.01
    while s.add(key, 0) < goal:
        if s.check([abort_key]):
            raise RuntimeError(f"rank {rank()}: another rank failed: {s.get(abort_key).decode()}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rank {rank()}: timed out after {_timeout():.0f} s at barrier {name!r} "
                f"({s.add(key, 0) - goal + n}/{n} ranks arrived)"
            )
        time.sleep(wait)
        wait = min(wait * 1.5, 1.0)


def _scope(notebook: str | None = None) -> str:
    notebook = os.environ.get(SCOPE_ENV, "") if notebook is None else notebook
    return f"{_PREFIX}{notebook}/"


@contextmanager
def notebook_scope(name: str):
    """Run a notebook's kernel with ``PAPER_CODE_NOTEBOOK=name`` (it inherits the environment)."""
    saved = os.environ.get(SCOPE_ENV)
    os.environ[SCOPE_ENV] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(SCOPE_ENV, None)
        else:
            os.environ[SCOPE_ENV] = saved


def abort(message: str, notebook: str | None = None) -> None:
    """Tell the other ranks' barriers in ``notebook`` (default: this process's) to fail at once
    (the notebook failed on this rank) instead of waiting for this rank."""
    s = store()
    if s is not None:
        s.set(_scope(notebook) + "abort", f"rank {rank()}: {message}")


def process_group():
    """The default ``torch.distributed`` process group for collectives, created on first use:
    gloo on the CPU, nccl when CUDA is available, over this job's store under a prefix unique to
    this kernel (each notebook's kernel is a new process, so each needs its own rendezvous keys).
    ``None`` in a single process."""
    global _group_ready
    if not is_distributed():
        return None
    import torch
    import torch.distributed as dist

    if not _group_ready:
        s = store()
        generation = -(-s.add(_scope() + "group", 1) // world_size())
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"{_scope()}group/{generation}/", s),
            rank=rank(),
            world_size=world_size(),
            timeout=timedelta(seconds=_timeout()),
        )
        _group_ready = True
    return dist.group.WORLD


# --------------------------------------------------------------------------- launching


def torchrun_command(nproc: int, args: Sequence[str], nnodes: int = 1) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m paper_code <args>`` (one node)."""
    exe = shutil.which("torchrun")
    launcher = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", f"--nproc_per_node={int(nproc)}", "-m", "paper_code", *args]


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m paper_code <args>`` in ``nproc`` processes on this node under torchrun;
    returns torchrun's exit status."""
    cmd = torchrun_command(nproc, args)
    print("launching:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def strip_option(argv: Sequence[str], option: str, takes_value: bool = True) -> list[str]:
    """``argv`` without ``option`` (``--nproc 4`` or ``--nproc=4``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = takes_value
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


_bind_device()
