"""Resumable storage: MapCache and ResultTable."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from paper_code.experiments.results import MapCache, ResultTable, key_hash

IDS = [f"img_{i:03d}" for i in range(10)]
MAPS = torch.rand(10, 1, 8, 8)


class Counter:
    """compute() that records its calls and can fail after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_after = fail_after

    def __call__(self, positions: list[int]) -> torch.Tensor:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("killed")
        self.calls.append(list(positions))
        return MAPS[positions]


def test_key_hash_is_order_independent() -> None:
    assert key_hash({"a": 1, "b": [1, 2]}) == key_hash({"b": [1, 2], "a": 1})
    assert key_hash({"a": 1}) != key_hash({"a": 2})


def test_compute_then_load(tmp_path) -> None:
    cache = MapCache(tmp_path, dtype=torch.float32)
    key = {"method": "gradcam", "model": "tiny", "options": {"x": 1}}
    f = Counter()
    out = cache.get_or_compute(key, IDS, f, batch_size=4)
    assert f.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(out, MAPS)
    folder = cache.folder(key)
    assert folder.name.startswith("gradcam-")
    assert json.loads((folder / "key.json").read_text()) == key
    # Everything is cached now: no more calls, same maps, any order / subset.
    g = Counter()
    again = cache.get_or_compute(key, IDS[::-1], g, batch_size=4)
    assert g.calls == []
    assert torch.equal(again, MAPS.flip(0))
    # Another key is another folder.
    other = cache.get_or_compute({**key, "method": "opticam"}, IDS[:2], Counter())
    assert cache.folder({**key, "method": "opticam"}) != folder
    assert other.shape == (2, 1, 8, 8)


def test_interrupted_run_resumes(tmp_path) -> None:
    cache = MapCache(tmp_path)
    key = {"method": "opticam", "iterations": 3}
    crashing = Counter(fail_after=1)
    with pytest.raises(RuntimeError, match="killed"):
        cache.get_or_compute(key, IDS, crashing, batch_size=3)
    assert crashing.calls == [[0, 1, 2]]  # the first batch was computed and stored
    assert cache.missing(key, IDS) == list(range(3, 10))
    rerun = Counter()
    out = cache.get_or_compute(key, IDS, rerun, batch_size=3)
    assert rerun.calls == [[3, 4, 5], [6, 7, 8], [9]]  # only the rest
    assert sum(len(c) for c in rerun.calls) == 7
    # float16 storage; returned maps are what was stored, as float32.
    assert out.dtype == torch.float32
    assert torch.equal(out, MAPS.half().float())
    assert not list(cache.folder(key).glob("*.tmp"))


def test_unsafe_ids_and_bad_shapes(tmp_path) -> None:
    cache = MapCache(tmp_path)
    ids = ["n01440764/ILSVRC2012_val_00000293.JPEG", "../x", "a b"]
    out = cache.get_or_compute({"method": "m"}, ids, lambda p: torch.ones(len(p), 1, 4, 4))
    assert out.shape == (3, 1, 4, 4)
    assert all(
        p.parent == cache.folder({"method": "m"})
        for p in map(lambda x: cache.path({"method": "m"}, x), ids)
    )
    with pytest.raises(ValueError, match="must be"):
        cache.get_or_compute({"method": "m2"}, ["a"], lambda p: torch.ones(4, 4))
    with pytest.raises(ValueError, match="unique"):
        cache.get_or_compute({"method": "m3"}, ["a", "a"], lambda p: torch.ones(2, 1, 4, 4))


def test_result_table_append_done_read(tmp_path) -> None:
    table = ResultTable(tmp_path / "sub" / "rows.csv")
    assert table.read().empty
    assert table.done_ids(method="a") == set()
    table.append([{"model": "tiny", "method": "a", "id": "1", "AD": 0.5, "AI": True}])
    table.append(
        pd.DataFrame(
            [
                {"model": "tiny", "method": "a", "id": "2", "AD": 0.25, "AI": False},
                {"model": "tiny", "method": "b", "id": "1", "AD": torch.tensor(1.0), "AI": None},
            ]
        )
    )
    assert table.done_ids(method="a") == {"1", "2"}
    assert table.done_ids(model="tiny", method="b") == {"1"}
    assert table.done_ids(method="c") == set()
    assert table.done_ids(nocolumn=1) == set()
    df = table.read()
    assert list(df.columns) == ["model", "method", "id", "AD", "AI"]
    assert df["AD"].tolist() == [0.5, 0.25, 1.0]
    # A new column (a later version of a notebook records more) extends the header; old rows keep
    # empty cells and nothing is lost.
    table.append([{"id": "3", "method": "a", "new": 1}])
    df = table.read()
    assert list(df.columns) == ["model", "method", "id", "AD", "AI", "new"]
    assert len(df) == 4 and df["id"].iloc[-1] == "3"
    assert df["new"].isna().sum() == 3 and df["new"].iloc[-1] == 1
    assert table.done_ids(method="a") == {"1", "2", "3"}


def test_result_table_repairs_truncated_line_and_dedupes(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    table = ResultTable(path)
    table.append([{"id": "1", "v": 1.0}, {"id": "2", "v": 2.0}])
    with open(path, "a") as f:
        f.write("3,3.")  # a kill in the middle of a write
    table = ResultTable(path)
    assert table.done_ids() == {"1", "2"}
    table.append([{"id": "2", "v": 20.0}, {"id": "3", "v": 3.0}])
    df = table.read(dedupe=["id"])
    assert df.set_index("id")["v"].to_dict() == {"1": 1.0, "2": 20.0, "3": 3.0}


def test_compute_time_is_recorded(tmp_path) -> None:
    cache = MapCache(tmp_path)
    cache.get_or_compute({"method": "t"}, IDS[:4], Counter(), batch_size=2)
    assert len(cache.last_seconds) == 4 and all(s >= 0 for s in cache.last_seconds)
    cache.load({"method": "t"}, IDS[:1])
    assert len(cache.last_seconds) == 1


_WORKER = """
import sys, time, torch
from paper_code.experiments.results import MapCache
root, log, tag = sys.argv[1:4]
ids = [f"img_{i}" for i in range(6)]

def compute(positions):
    with open(log, "a") as f:
        f.write(" ".join(f"{tag}:{ids[p]}" for p in positions) + "\\n")
    time.sleep(0.3)  # long enough for the other process to want the same maps
    return torch.stack([torch.full((1, 4, 4), float(p)) for p in positions])

maps = MapCache(root, dtype=torch.float32).get_or_compute({"method": "m"}, ids, compute, 2)
assert maps[:, 0, 0, 0].tolist() == list(range(6)), maps[:, 0, 0, 0]
"""


def test_two_processes_never_compute_a_map_twice(tmp_path) -> None:
    """`reproduce --jobs N` runs notebooks that need the same maps at once: each map is computed
    by exactly one process (the other waits for the lock, then finds it stored), and both get
    every map."""
    import os
    import subprocess
    import sys

    import paper_code

    env = {**os.environ, "PYTHONPATH": str(Path(paper_code.__file__).parents[1])}
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    log = tmp_path / "computed.txt"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "cache"), str(log), tag], env=env
        )
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    computed = [x.split(":")[1] for x in log.read_text().split()]
    assert sorted(computed) == [f"img_{i}" for i in range(6)]  # each once, none missing
