"""Opti-CAM's compiled loop (``optimize(..., compile=...)``): same per-image rule as the eager loop,
maps equal within rounding, and no recompilation for a smaller last batch or images that stop.

Most tests use the ``aot_eager`` backend (Dynamo capture + AOTAutograd, no code generation: what
decides graph breaks and recompiles, in seconds); one slow test uses Inductor, as on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import paper_code as pc
from paper_code.methods.hooks import forward_features
from paper_code.methods.opticam import optimize
from paper_code.methods.targets import ClassLogit

#: Max |compiled map - eager map| on the tiny CNN at 224x224, up to 10 iterations. Float32 rounding
#: of other kernels, amplified by Adam (Opti-CAM computes in float32, so float64 is no way out
#: here): measured up to 1.9e-5 (aot_eager, batch 4) and 6.0e-5 (Inductor, batch 4) across the CPU
#: configurations tried (vectorization level of ATen and oneDNN, threads; 5.4e-5 with Inductor at
#: batch 8 before), within 1.7x of the former bound 1e-4. One iteration more or less changes every
#: map of these tests by >= 2e-2, so 1e-3 still tells rounding from a different computation. At 100
#: iterations the difference (max 0.19, mean 8.5e-3) is that between two eager runs in other batch
#: compositions (batch 1 vs 8: max 0.22, mean 7.3e-3), the run-to-run spread the deviations page
#: already describes; the tests stay at <= 10 iterations.
MAP_TOL = 1e-3


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def batch(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 224, 224, generator=gen), torch.arange(n) % 10


def graphs() -> tuple[int, int]:
    return counters["stats"]["unique_graphs"], counters["frames"]["total"]


def weight_ratio_diff(a: torch.Tensor, b: torch.Tensor, feats: torch.Tensor) -> float:
    """Max |log(a_i / a_j) - log(b_i / b_j)| over the channels i, j whose features reach 0.1.

    Channels whose feature map is ~0 get a ~0 gradient that Adam normalizes to full steps: their
    weights follow rounding noise (compiled vs eager: up to 2.6e-3 measured), the map does not
    depend on them, and through the softmax every other weight moves with them by a common factor.
    The ratios of the other weights do not: measured <= 2.2e-5 (tiny CNN, 6 iterations), while one
    iteration more or less changes them by 0.2."""
    strong = feats.amax(dim=(2, 3)) > 0.1
    assert strong.sum(1).min() >= 2
    d = a.log() - b.log()
    hi = torch.where(strong, d, -torch.inf).amax(1)
    lo = torch.where(strong, d, torch.inf).amin(1)
    return float((hi - lo).max())


def test_compiled_equals_eager_without_recompiles():
    model = pc.load_model("tiny")
    x, y = batch(4)
    eager = optimize(model, x, ClassLogit(y), model.target_layer, iterations=6)
    comp = optimize(model, x, ClassLogit(y), model.target_layer, iterations=6, compile="aot_eager")
    assert (comp.maps - eager.maps).abs().max() <= MAP_TOL
    assert torch.allclose(comp.trace, eager.trace, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(comp.iterations, eager.iterations)
    # The weights themselves follow rounding noise where the features are ~0: see weight_ratio_diff.
    feats, _ = forward_features(model, x, model.target_layer)
    assert weight_ratio_diff(comp.weights, eager.weights, feats) < 1e-3
    first = graphs()
    assert first[0] == 3  # saliency, network (forward + backward), Adam step with the stop rule
    assert counters["graph_break"] == {}
    # a smaller last batch (padded to the compiled size), another batch, other classes: no new graph
    x3, y3 = batch(3, seed=1)
    small = optimize(model, x3, ClassLogit(y3), model.target_layer, iterations=6,
                     compile="aot_eager")  # fmt: skip
    ref3 = optimize(model, x3, ClassLogit(y3), model.target_layer, iterations=6)
    assert small.maps.shape == (3, 1, 224, 224) and small.trace.shape == (6, 3)
    assert (small.maps - ref3.maps).abs().max() <= MAP_TOL
    optimize(model, x, ClassLogit(y.flip(0)), model.target_layer, iterations=4, compile="aot_eager")
    assert graphs() == first


class ChannelSum(nn.Module):
    """Logit of class c = sum of input channel c; the feature layer is the input (test_opticam)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x).sum((2, 3))


def striped(n: int) -> torch.Tensor:
    x = torch.zeros(n, 3, 32, 32)
    for k, a in enumerate((1.0, 0.5, 0.25)):
        x[:, k, 8 * k : 8 * k + 8, :] = a
    return x


def test_per_image_stopping_as_in_eager_without_recompiles():
    """Images that stop early (at different iterations) keep the u of their last loss, exactly as
    in the eager loop; stopping changes no shape, so nothing compiles again."""
    model = ChannelSum()
    x = striped(3)
    x[0, 1:] = 0  # image 0: constant loss, stops at the second iteration
    classes = torch.tensor([0, 2, 1])
    eager = optimize(model, x, ClassLogit(classes), model.layer, iterations=60)
    comp = optimize(model, x, ClassLogit(classes), model.layer, iterations=60,
                    compile="aot_eager", stop_check_every=0)  # fmt: skip
    assert eager.iterations[0] == 1 and 1 < eager.iterations[2] < 60
    assert torch.equal(comp.iterations, eager.iterations)
    assert torch.allclose(comp.maps, eager.maps, atol=1e-6)
    assert torch.allclose(comp.trace, eager.trace, atol=1e-4, equal_nan=True)
    before = graphs()
    again = optimize(model, x[1:], ClassLogit(classes[1:]), model.layer, iterations=60,
                     compile="aot_eager")  # fmt: skip
    assert graphs() == before
    assert torch.equal(again.iterations, eager.iterations[1:])


def test_official_mode_is_not_compiled():
    model = ChannelSum()
    with pytest.raises(ValueError, match="per-image"):
        optimize(model, striped(1), ClassLogit(torch.tensor([0])), model.layer, official=True,
                 compile=True)  # fmt: skip


def test_opticam_option_and_cache_key():
    """``compile`` is an ordinary Opti-CAM option: ``method_options: {opticam: {compile: ...}}`` in
    a profile turns it on, and it enters the map cache key (compiled maps are cached apart)."""
    from paper_code import experiments
    from paper_code.methods import explain

    model = pc.load_model("tiny")
    x, y = batch(2)
    maps = explain("opticam", model, x, y, iterations=3, compile="aot_eager")
    ref = explain("opticam", model, x, y, iterations=3)
    assert (maps - ref).abs().max() <= MAP_TOL
    params = {"method_options": {"opticam": {"compile": True}}}
    opts = experiments.method_options(params, "opticam")
    assert opts == {"iterations": 100, "compile": True}
    assert experiments.map_key(model, "opticam", "ground_truth", opts)["options"]["compile"]


@pytest.mark.slow
def test_inductor_compiled_maps_within_tolerance():
    """Inductor (generated C++ here, Triton on a GPU): minutes to compile on a small CPU."""
    model = pc.load_model("tiny")
    x, y = batch(4)
    eager = optimize(model, x, ClassLogit(y), model.target_layer, iterations=10)
    comp = optimize(model, x, ClassLogit(y), model.target_layer, iterations=10, compile=True)
    assert (comp.maps - eager.maps).abs().max() <= MAP_TOL
    assert torch.equal(comp.iterations, eager.iterations)
    first = graphs()
    optimize(model, x[:3], ClassLogit(y[:3]), model.target_layer, iterations=10, compile=True)
    assert graphs() == first


def test_gpu_benchmark_quick_on_cpu(capsys):
    """benchmarks/bench_gpu.py --device cpu --quick: the script the GPU figures come from runs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--device", "cpu", "--quick"])
    out = capsys.readouterr().out
    assert "images/s" in out and "forwards/s" in out and "8 GPUs" in out
    assert res["opticam"][("tiny", 2, "eager")] > 0 and res["insdel"]["tiny"] > 0
    assert set(res["projection"]) == {"imagenet-1k", "imagenet"}
    assert res["projection"]["imagenet"] > res["projection"]["imagenet-1k"] > 0
    # --budget (a time-limited GPU session): Opti-CAM rows past it are skipped, the projection
    # still comes, from the insertion/deletion costs measured and a stand-in Opti-CAM cost.
    res = bench.main(["--device", "cpu", "--quick", "--models", "tiny", "tiny", "--budget", "0"])
    out = capsys.readouterr().out
    assert out.count("skipped (--budget 0 s spent)") == 1  # the first row always runs
    assert res["projection"]["imagenet"] > 0


def test_device_checks_run_on_cpu(capsys):
    """benchmarks/device_checks.py, the GPU session's correctness checks, on the CPU (tiny CNN,
    aot_eager): every check passes here, so a failure on a GPU is the GPU path's."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "device_checks.py"
    spec = importlib.util.spec_from_file_location("device_checks", path)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    assert checks.main(["--device", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS ") == 5 and "FAIL" not in out


# --------------------------------------------------------------------------- evaluation forwards


def test_compiled_metrics_equal_eager_with_one_graph():
    """Issue 12 §2: the metrics' forward passes (insertion/deletion, AD/AG/AI, AOPC, ADCC) under
    ``compile``: the same scores as eager (float rounding only), and one graph for every chunk of
    every metric: smaller last chunks are padded to the compiled size, not compiled again."""
    from paper_code.metrics import aopc, classification, insertion_deletion

    # Float64: in float32 compiled and eager AG differed by up to 1.2e-7 points (bound 1e-6),
    # depending on the CPU's kernels. In float64: measured 0.
    model = pc.load_model("tiny").double()
    x, y = batch(5)
    x = x.double()
    maps = torch.rand(
        5, 1, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    kw = {"batch_size": 4}
    # 5 images x 2 modes x 5 steps = 50 evaluations: chunks of 4, the last of 2 (padded)
    eager = insertion_deletion(model, x, maps, y, step=12544, **kw)
    comp = insertion_deletion(model, x, maps, y, step=12544, compile="aot_eager", **kw)
    for m in ("I", "D"):
        assert torch.allclose(comp[m], eager[m], atol=1e-6, rtol=0), m
    first = graphs()
    assert first[0] == 1 and counters["graph_break"] == {}
    for fn in (classification, aopc):  # 5 images in chunks of 4 and 1 (padded)
        e, c = fn(model, x, maps, y, **kw), fn(model, x, maps, y, compile="aot_eager", **kw)
        for k in ("AD", "AG") if fn is classification else ("AOPC",):
            assert torch.allclose(c[k], e[k], atol=1e-6, rtol=0), k
    assert graphs()[0] == first[0]  # no new graph for other metrics, chunk sizes or images


def test_static_forward_pads_smaller_batches_exactly():
    from paper_code.methods.forward import StaticForward, evaluation_forward

    model = pc.load_model("tiny").eval()
    assert evaluation_forward(model, False) is model
    net = evaluation_forward(model, "aot_eager")
    assert isinstance(net, StaticForward) and evaluation_forward(model, "aot_eager") is net
    x, _ = batch(4)
    with torch.no_grad():
        full, part = net(x), net(x[:3])  # 3 is padded to 4
        ref = model(x)
    assert net.sizes == {4}
    assert part.shape[0] == 3 and torch.allclose(part, ref[:3], atol=1e-6)
    assert torch.allclose(full, ref, atol=1e-6)


def test_compiled_scorecam_equals_eager():
    from paper_code.methods import explain

    model = pc.load_model("tiny")
    x, y = batch(2)
    eager = explain("scorecam", model, x, y, batch_size=5)
    comp = explain("scorecam", model, x, y, batch_size=5, compile="aot_eager")
    assert (comp - eager).abs().max() <= 1e-5
    assert graphs()[0] == 1  # chunks of 5 masked images and a smaller last one: one graph
