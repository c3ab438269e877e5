"""Resumable storage for long experiments: saliency maps (:class:`MapCache`) and per-image metric
rows (:class:`ResultTable`).

Both write as they go, so a run that is killed (time limit, out of memory, Ctrl-C) resumes where
it stopped: rerunning the same code computes only what is missing.

- :class:`MapCache` keeps one small ``.pt`` file per image under a folder named from a stable hash
  of a *key* (method, model, options, ...); the key is saved as ``key.json`` beside the maps.
  Every file is written to a temporary name and then renamed (``os.replace``), so a file is either
  complete or absent.
- :class:`ResultTable` is a CSV file with one row per image (and per method, model, ...), appended
  and flushed after each batch. A line cut short by a kill is dropped on the next open.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

__all__ = ["MapCache", "ResultTable", "key_hash"]


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def key_hash(key: Mapping[str, Any], length: int = 16) -> str:
    """Stable hex digest of a JSON-serializable key (order of dict entries does not matter)."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (``fcntl.flock``) held for the ``with`` block; other
    processes taking it wait. Where ``fcntl`` does not exist (Windows) there is no lock: parallel
    processes may then compute a map twice, never write a broken file (writes stay atomic)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _file_stem(image_id: str) -> str:
    """A file name for an image id: the id itself when it is safe, else a sanitized id + hash."""
    stem = _SAFE.sub("_", image_id)
    if stem != image_id or len(stem) > 120 or stem.startswith("."):
        stem = f"{stem[:80]}-{hashlib.sha1(image_id.encode()).hexdigest()[:10]}"
    return stem


class MapCache:
    """Saliency maps stored per image under ``root/<name>-<hash(key)>/``.

    Args:
        root: cache folder (created on demand); it can be shared by all notebooks.
        dtype: storage dtype. ``float16`` halves the disk use (about 100 kB per 224x224 map);
            use ``torch.float32`` for bit-exact maps. Maps are always *returned* as stored
            (cast back to float32), so a resumed run and a fresh run give identical results.

    Example::

        cache = MapCache("_build/cache")
        key = {"method": "opticam", "model": "resnet50", "iterations": 100}
        maps = cache.get_or_compute(key, ids, lambda idx: explain("opticam", model, images[idx], labels[idx]))
    """

    def __init__(self, root: str | os.PathLike[str], dtype: torch.dtype = torch.float16) -> None:
        self.root = Path(root)
        self.dtype = dtype
        #: Seconds per image spent in ``compute`` for the maps of the last :meth:`load` /
        #: :meth:`get_or_compute` (the batch's wall time / its size; NaN when unknown).
        self.last_seconds: list[float] = []

    def folder(self, key: Mapping[str, Any]) -> Path:
        """The folder of ``key`` (created, with ``key.json``, on first use)."""
        folder = self._folder_path(key)
        key_file = folder / "key.json"
        if key_file.exists():
            stored = json.loads(key_file.read_text())
            if _canonical(stored) != _canonical(json.loads(_canonical(key))):
                raise RuntimeError(
                    f"hash collision in {folder}: stored key {stored} != {dict(key)}"
                )
        else:
            payload = json.dumps(json.loads(_canonical(key)), indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(key_file, payload.encode())
        return folder

    def _folder_path(self, key: Mapping[str, Any]) -> Path:
        name = _SAFE.sub("_", str(key.get("method", "maps")))[:40]
        return self.root / f"{name}-{key_hash(key)}"

    def stored(self, key: Mapping[str, Any], ids: Sequence[str]) -> list[int]:
        """Positions in ``ids`` whose map is stored (creates nothing, unlike :meth:`missing`)."""
        folder = self._folder_path(key)
        if not (folder / "key.json").exists():
            return []
        return [i for i, x in enumerate(ids) if (folder / f"{_file_stem(x)}.pt").exists()]

    def copy(self, source: Mapping[str, Any], dest: Mapping[str, Any], ids: Sequence[str]) -> None:
        """Store the maps of ``ids`` under ``source`` also under ``dest`` (same map, same seconds):
        used when two settings provably give the same map, e.g. two target rules naming one class."""
        src, dst = self.folder(source), self.folder(dest)
        for x in ids:
            item = torch.load(src / f"{_file_stem(x)}.pt", map_location="cpu", weights_only=True)
            atomic_torch_save(item, dst / f"{_file_stem(x)}.pt")

    def path(self, key: Mapping[str, Any], image_id: str) -> Path:
        return self.folder(key) / f"{_file_stem(image_id)}.pt"

    def missing(self, key: Mapping[str, Any], ids: Sequence[str]) -> list[int]:
        """Positions in ``ids`` whose map is not stored yet."""
        folder = self.folder(key)
        return [i for i, x in enumerate(ids) if not (folder / f"{_file_stem(x)}.pt").exists()]

    def load(self, key: Mapping[str, Any], ids: Sequence[str]) -> torch.Tensor:
        """Stored maps of ``ids`` as a float32 ``[N, 1, H, W]`` tensor (all must be stored)."""
        folder = self.folder(key)
        maps, seconds = [], []
        for x in ids:
            item = torch.load(folder / f"{_file_stem(x)}.pt", map_location="cpu", weights_only=True)
            if item["id"] != x:
                raise RuntimeError(f"{folder}: file for {x!r} holds {item['id']!r}")
            maps.append(item["map"])
            seconds.append(float(item.get("seconds", math.nan)))
        self.last_seconds = seconds
        if not maps:
            return torch.empty(0, 1, 0, 0)
        return torch.stack(maps).float()

    def store(
        self,
        key: Mapping[str, Any],
        ids: Sequence[str],
        maps: torch.Tensor,
        seconds: float = math.nan,
    ) -> None:
        """Write ``maps[i]`` for ``ids[i]`` (one atomic file each); ``seconds``: compute time
        per image, kept for the timing columns."""
        if maps.dim() != 4 or maps.shape[0] != len(ids) or maps.shape[1] != 1:
            raise ValueError(f"maps must be [{len(ids)}, 1, H, W], got {list(maps.shape)}")
        folder = self.folder(key)
        stored = maps.detach().to("cpu", self.dtype)
        for x, m in zip(ids, stored):
            item = {"id": x, "map": m.clone(), "seconds": float(seconds)}
            atomic_torch_save(item, folder / f"{_file_stem(x)}.pt")

    def get_or_compute(
        self,
        key: Mapping[str, Any],
        ids: Sequence[str],
        compute: Callable[[list[int]], torch.Tensor],
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Maps of ``ids``: loaded when stored, else computed and stored.

        Args:
            key: JSON-serializable description of what produced the maps (method, model, options).
            ids: image ids, unique.
            compute: ``compute(positions) -> [len(positions), 1, H, W]`` maps for ``ids[p]``,
                ``p in positions``; called only for missing images, ``batch_size`` at a time.
                Each batch is stored as soon as it returns.
            batch_size: images per ``compute`` call; ``None``: all missing images in one call.

        Returns:
            float32 ``[len(ids), 1, H, W]`` on the CPU, as stored (``dtype`` precision);
            :attr:`last_seconds` then holds the compute time per image of each map.
        """
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        todo = self.missing(key, ids)
        step = batch_size or max(len(todo), 1)
        # One process at a time computes this key's maps (``reproduce --jobs N`` runs notebooks
        # that need the same maps at once): under the lock, what another process stored meanwhile
        # is no longer missing, so no map is computed twice. The ranks of a sharded run compute
        # disjoint images: each has its own lock.
        rank = os.environ.get("RANK")
        lock = self.folder(key) / (".lock" if rank is None else f".lock.rank{rank}")
        while todo:
            with _locked(lock):
                todo = self.missing(key, ids)
                if not todo:
                    break
                positions = todo[:step]
                t0 = time.perf_counter()
                maps = compute(positions)
                if maps.is_cuda:
                    torch.cuda.synchronize(maps.device)
                seconds = (time.perf_counter() - t0) / max(len(positions), 1)
                self.store(key, [ids[p] for p in positions], maps, seconds)
            todo = todo[step:]
        return self.load(key, ids)


class ResultTable:
    """Per-image result rows in a CSV file, appended and flushed per batch.

    The columns are fixed by the first :meth:`append`; later rows may omit columns (left empty)
    but may not add new ones.

    Example::

        table = ResultTable("out/table1_rows.csv")
        done = table.done_ids(model="resnet50", method="gradcam")
        ...
        table.append([{"model": "resnet50", "method": "gradcam", "id": i, "AD": ad} ...])
        df = table.read()
    """

    def __init__(self, path: str | os.PathLike[str], id_column: str = "id") -> None:
        self.path = Path(path)
        self.id_column = id_column
        self._repair()

    def _repair(self) -> None:
        """Drop a last line left incomplete by a killed run."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    @property
    def columns(self) -> list[str] | None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with open(self.path, newline="") as f:
            return next(csv.reader(f), None)

    def append(self, rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> int:
        """Append rows (dicts or a DataFrame); returns how many were written."""
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        columns = self.columns
        new_file = columns is None
        if columns is None:
            columns = list(rows[0])
            for r in rows[1:]:
                columns += [c for c in r if c not in columns]
        unknown = [c for r in rows for c in r if c not in columns]
        if unknown and not new_file:
            columns = columns + list(dict.fromkeys(unknown))
            self._extend_header(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
            if new_file:
                writer.writeheader()
            for r in rows:
                writer.writerow({k: _cell(v) for k, v in r.items()})
            f.flush()
            os.fsync(f.fileno())
        return len(rows)

    def _extend_header(self, columns: list[str]) -> None:
        """Rewrite the file with more columns (old rows get empty cells); atomic, like every write."""
        with open(self.path, newline="") as f:
            old = list(csv.DictReader(f))
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
                writer.writeheader()
                writer.writerows(old)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def for_rank(self, r: int | None = None) -> ResultTable:
        """The table this rank appends to: itself in a single process, ``<stem>.rank<r>.csv`` in a
        sharded run (:func:`paper_code.experiments.distributed.rank_path`), so that two processes
        never append to one file. Reading either table sees the rows of every file."""
        from .distributed import rank_path

        path = rank_path(self.path, r)
        return self if path == self.path else ResultTable(path, self.id_column)

    def files(self) -> list[Path]:
        """The files holding rows: this path and the per-rank files of sharded runs beside it."""
        from .distributed import rank_paths

        return [p for p in rank_paths(self.path) if p.exists() and p.stat().st_size > 0]

    def _frames(self, dtype: Mapping[str, Any] | None) -> list[pd.DataFrame]:
        frames = []
        for p in self.files():
            data = p.read_bytes()
            data = data[: data.rfind(b"\n") + 1]  # a line another process is still writing
            if data.count(b"\n") < 1:
                continue
            kw: dict[str, Any] = {"dtype": dtype}
            if dtype is str:
                kw["keep_default_na"] = False
            frames.append(pd.read_csv(io.BytesIO(data), **kw))
        return frames

    def done_ids(self, **where: Any) -> set[str]:
        """Ids of the rows whose columns equal ``where`` (compared as text), e.g.
        ``done_ids(model="resnet50", method="opticam")``; rows of every rank file count."""
        done: set[str] = set()
        for df in self._frames(str):
            mask = pd.Series(True, index=df.index)
            for col, value in where.items():
                if col not in df.columns:
                    mask[:] = False
                    break
                mask &= df[col] == _cell(value)
            done |= set(df.loc[mask, self.id_column])
        return done

    def read(
        self, dedupe: Sequence[str] | None = None, dtype: Mapping[str, Any] | None = None
    ) -> pd.DataFrame:
        """All rows as a DataFrame (empty if nothing was written): this file's, then those of the
        per-rank files of sharded runs (by rank). ``dedupe``: columns that identify a row;
        duplicates (e.g. from a rerun after a crash) keep the last one. ``dtype``: column types
        for :func:`pandas.read_csv` (the id column is always text)."""
        frames = self._frames({**(dtype or {}), self.id_column: str})
        if not frames:
            return pd.DataFrame()
        df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True, sort=False)
        if dedupe:
            df = df.drop_duplicates(subset=list(dedupe), keep="last").reset_index(drop=True)
        return df


def _cell(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
