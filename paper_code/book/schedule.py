"""Elapsed and remaining time of a run of the book, and the threads of its parallel notebooks."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Per-notebook run times of the last run, in the output folder (for the time estimates).
TIMINGS_FILE = "timings.json"


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
