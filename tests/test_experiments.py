"""The notebooks' resumable loop: an interrupted run resumes without recomputing finished images."""

from __future__ import annotations

import pytest

import paper_code as pc
from paper_code.experiments import loop as experiments
from paper_code.experiments.results import MapCache, ResultTable


class Interrupted(Exception):
    pass


def test_run_rows_resumes_after_an_interruption(tmp_path):
    model = pc.load_model("tiny")
    data = pc.load_dataset("sample", ids=["chelsea", "coffee", "rocket", "camera", "china"])
    table = ResultTable(tmp_path / "rows.csv")
    cache = MapCache(tmp_path / "cache")
    seen: list[str] = []

    def rows(batch, fail_after=None):
        if fail_after is not None and len(seen) >= fail_after:
            raise Interrupted
        maps, _ = experiments.cached_maps(cache, model, "gradcam", batch, "most_probable")
        seen.extend(batch.ids)
        return [{"id": i, "mass": float(maps[j].mean())} for j, i in enumerate(batch.ids)]

    tag = {"model": "tiny", "method": "gradcam"}
    with pytest.raises(Interrupted):  # killed after the first batch of 2
        experiments.run_rows(table, model, data, lambda b: rows(b, 2), tag, batch_size=2,
                             progress=False)  # fmt: skip
    assert seen == ["chelsea", "coffee"]
    assert set(table.read()["id"]) == {"chelsea", "coffee"}
    experiments.run_rows(table, model, data, rows, tag, batch_size=2, progress=False)
    assert seen == ["chelsea", "coffee", "rocket", "camera", "china"]  # nothing recomputed
    df = table.read()
    assert sorted(df["id"]) == sorted(experiments.dataset_ids(data)) and len(df) == 5
    # A rerun with everything done does no work; another tag is a separate set of rows.
    experiments.run_rows(table, model, data, rows, tag, batch_size=2, progress=False)
    assert len(seen) == 5
    assert len(cache.missing(experiments.map_key(model, "gradcam", "most_probable", {}),
                             experiments.dataset_ids(data))) == 0  # fmt: skip


def test_target_rules_and_unknown_rule():
    import torch

    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    batch = experiments.Batch(torch.zeros(1, 3, 4, 4), torch.tensor([2]), [], ["a"], logits)
    got = {r: int(experiments.target_classes(batch, r)[0]) for r in experiments.TARGET_RULES}
    assert got == {"ground_truth": 2, "most_probable": 1, "second_most_probable": 2,
                   "least_probable": 3}  # fmt: skip
    with pytest.raises(ValueError, match="valid"):
        experiments.target_classes(batch, "random")


def test_maps_are_reused_across_rules_that_name_the_same_class(tmp_path, monkeypatch):
    """A map depends on (image, class), not on the rule that picked the class: the most-probable
    maps of correctly classified images are copied from the ground-truth cache, bit for bit."""
    import torch

    model = pc.load_model("tiny")
    images = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
    top = logits.argmax(1)
    labels = top.clone()
    labels[[1, 3]] = (top[[1, 3]] + 1) % 10  # images 1 and 3 are "misclassified"
    batch = experiments.Batch(images, labels, [None] * 4, ["a", "b", "c", "d"], logits)
    cache = MapCache(tmp_path / "cache")
    calls: list[list[int]] = []
    real = experiments.explain

    def counting(method, model, images, classes, **options):
        calls.append(classes.tolist())
        return real(method, model, images, classes, **options)

    monkeypatch.setattr(experiments, "explain", counting)
    gt, _ = experiments.cached_maps(cache, model, "gradcam", batch, "ground_truth")
    assert calls == [labels.tolist()]
    pred, _ = experiments.cached_maps(cache, model, "gradcam", batch, "most_probable")
    assert calls[1] == top[[1, 3]].tolist()  # only the two misclassified images are computed
    assert torch.equal(pred[[0, 2]], gt[[0, 2]])
    fresh = MapCache(tmp_path / "fresh")  # the copies equal a direct computation (float16 storage)
    direct, _ = experiments.cached_maps(fresh, model, "gradcam", batch, "most_probable")
    # Two float16 roundings of maps in [0, 1] that differ by float32 rounding (other batches) are
    # at most one float16 step apart (2^-11 = 4.9e-4 below 1): 1e-3 holds whatever the CPU.
    torch.testing.assert_close(pred, direct, rtol=0, atol=1e-3)
    assert cache.stored(experiments.map_key(model, "gradcam", "least_probable", {}), ["a"]) == []


def test_scorecam_maps_of_all_rules_come_from_one_run(tmp_path, monkeypatch):
    """fill_maps_for_rules stores, for each rule, the map cached_maps would have computed, from a
    single Score-CAM run per image; afterwards cached_maps computes nothing."""
    import torch

    from paper_code.methods import cams

    model = pc.load_model("tiny")
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(images)
    labels = torch.tensor([int(logits[0].argmax()), 5, 6])
    batch = experiments.Batch(images, labels, [None] * 3, ["a", "b", "c"], logits)
    runs: list[int] = []
    real = cams.scorecam_classes

    def counting(model, images, classes, layer, **kw):
        runs.append(images.shape[0])
        return real(model, images, classes, layer, **kw)

    monkeypatch.setattr(experiments, "scorecam_classes", counting)
    cache = MapCache(tmp_path / "joint")
    rules = list(experiments.TARGET_RULES)
    experiments.fill_maps_for_rules(cache, model, "scorecam", batch, rules)
    assert runs == [3]  # one run for the three images, all four rules
    experiments.fill_maps_for_rules(cache, model, "scorecam", batch, rules)
    assert runs == [3]  # nothing left to do
    monkeypatch.setattr(experiments, "explain", None)  # cached_maps must not compute anything
    joint = {r: experiments.cached_maps(cache, model, "scorecam", batch, r)[0] for r in rules}
    monkeypatch.undo()
    fresh = MapCache(tmp_path / "fresh")
    for r in rules:
        direct, _ = experiments.cached_maps(fresh, model, "scorecam", batch, r)
        # Float16 storage: measured 4.9e-4, one float16 step below 1 (2^-11), on every CPU
        # configuration tried; the float32 maps of the two computations differ by <= 4.2e-7 (other
        # chunks of masked images), so their float16 roundings by at most one step.
        torch.testing.assert_close(joint[r], direct, rtol=0, atol=2e-3)


def test_batch_size_auto_fills_the_device_memory():
    """``batch_size: auto``: 80% of the free memory at the measured bytes per image, a
    multiple of 8, capped at 512; on a CPU a fixed size; ints pass through, bad values fail."""
    from paper_code.experiments import CPU_AUTO_BATCH, batch_for_memory, resolve_batch_size

    gib = 2**30
    assert batch_for_memory(100 * gib, 0.5 * gib) == 160  # 80 GiB / 0.5 GiB
    assert batch_for_memory(100 * gib, 0.3 * gib) == 264  # 266.7 -> multiple of 8 below
    assert batch_for_memory(139 * gib, 0.01 * gib) == 512  # capped
    assert batch_for_memory(1 * gib, 0.3 * gib) == 2  # fewer than 8 fit: as many as fit
    assert batch_for_memory(1 * gib, 2 * gib) == 1  # never 0
    model = pc.load_model("tiny")
    assert resolve_batch_size("auto", model, "cpu") == CPU_AUTO_BATCH
    assert resolve_batch_size(5, model, "cpu") == 5 and resolve_batch_size("12", model, "cpu") == 12
    with pytest.raises(ValueError, match="auto"):
        resolve_batch_size(0, model, "cpu")
