"""Results never go stale: rows and cached maps are keyed by everything that changes them.

Before, Table 1's rows were keyed by model and method only, so a rerun with other Opti-CAM
iterations into the same folder silently showed the old rows; and the map cache did not know which
weights file or which inference form the network had. These tests fail on that behaviour.
"""

from __future__ import annotations

import shutil

import numpy as np
import torch

import paper_code as pc
from paper_code import experiments
from paper_code.experiments.results import MapCache
from paper_code.experiments.tablerun import TableRun
from paper_code.models.cnn import TinyCNN


def _params(tmp_path, **over):
    return {
        "models": ["tiny"],
        "dataset": "sample",
        "n_images": 2,
        "device": "cpu",
        "batch_size": 2,
        "seed": 0,
        "iterations": 2,
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        **over,
    }


def _mass(model, batch, maps):
    return {"mass": maps.flatten(1).mean(1)}


def _table(params):
    run = TableRun("stale", params, ["mass"])
    model, data, cache = run.setup("tiny")
    run.run(model, data, cache, "opticam", target_rule="most_probable", score=_mass)
    return run, run.collect()


def test_rerun_with_a_changed_parameter_computes_new_rows(tmp_path):
    run1, first = _table(_params(tmp_path, iterations=1))
    run2, second = _table(_params(tmp_path, iterations=6))  # same output folder, same cache
    assert len(first) == len(second) == 2
    assert set(first["config"]).isdisjoint(second["config"])
    assert not np.allclose(first["mass"].to_numpy(), second["mass"].to_numpy())
    assert len(run2.table.read()) == 4  # both kept on disk, only the current ones shown
    # The same parameters again: the old rows are reused, nothing is appended.
    run3, third = _table(_params(tmp_path, iterations=1))
    assert len(run3.table.read()) == 4
    assert np.array_equal(third["mass"].to_numpy(), first["mass"].to_numpy())
    # A method option outside Opti-CAM's iterations changes the key too.
    run4, fourth = _table(_params(tmp_path, iterations=1, method_options={"opticam": {"lr": 0.5}}))
    assert set(fourth["config"]).isdisjoint(first["config"])


def _weights(path, seed):
    torch.manual_seed(seed)
    torch.save(TinyCNN().state_dict(), path)
    return path


def test_two_weights_files_never_share_cached_maps(tmp_path):
    a = _weights(tmp_path / "a.pt", 1)
    b = _weights(tmp_path / "b.pt", 2)
    c = tmp_path / "copy-of-a.pt"
    shutil.copy(a, c)

    def key(model):
        return experiments.map_key(model, "gradcam", "most_probable", {})

    ma, mb, mc = (pc.load_model("tiny", weights=w) for w in (a, b, c))
    assert key(ma) != key(mb)
    assert key(ma) == key(mc)  # the same content under another name shares maps
    assert key(ma) != key(pc.load_model("tiny"))  # the default weights
    assert key(pc.load_model("tiny", fuse=False)) != key(pc.load_model("tiny"))  # model form

    data = pc.load_dataset("sample", ids=["chelsea", "coffee"])
    cache = MapCache(tmp_path / "cache")
    maps = {}
    for name, model in (("a", ma), ("b", mb)):
        batch = next(experiments.batches(model, data, 2, "cpu"))
        maps[name], _ = experiments.cached_maps(cache, model, "gradcam", batch, "most_probable")
    assert not torch.allclose(maps["a"], maps["b"])  # b's maps were computed, not a's reused
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2
