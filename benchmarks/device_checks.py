"""Correctness of the GPU code paths that the CPU test suite cannot reach, in about two minutes.

    python benchmarks/device_checks.py                  # on a CUDA device (what a GPU session runs)
    python benchmarks/device_checks.py --device cpu --quick   # the same checks on the CPU (tests)

Each check prints ``PASS`` or ``FAIL`` with its numbers; the exit status is 1 if any failed. On the
tiny CNN (random weights, 224x224) the tolerances are those the CPU tests use: Opti-CAM 1e-3 between
CPU and device after 10 iterations (``tests/test_opticam.py``), compiled vs eager maps 1e-3 after
10 iterations (``tests/test_compile.py``; Inductor generates Triton on a GPU, C++ on a CPU). ResNet50
rows (random weights) are informational (``INFO``): TF32 convolutions and Adam's amplification of
rounding make their maps differ more, as the deviations page explains.

What it covers beyond the CPU tests: Inductor/Triton graphs of Opti-CAM's whole iteration, of the
metrics' forward passes and of Score-CAM on the device; no recompilation for a smaller last batch
there; ``batch_size: auto``'s probe (:func:`paper_code.experiments.resolve_batch_size`) and
one Opti-CAM run at the batch it picks; bf16 autocast against float32.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch._dynamo.utils import counters

from paper_code import load_model
from paper_code.experiments import resolve_batch_size
from paper_code.methods import explain
from paper_code.methods.opticam import optimize
from paper_code.methods.targets import ClassLogit
from paper_code.metrics import classification, insertion_deletion

#: Tolerances of the CPU tests (see the module docstring).
CPU_DEVICE_TOL = 1e-3
COMPILED_TOL = 1e-3

RESULTS: list[tuple[str, str]] = []
#: What ``compile=`` gets: ``True`` (Inductor) on a GPU; the CPU run uses "aot_eager" by default
#: (Dynamo capture and graph counts in seconds; Inductor's C++ takes minutes on a small CPU).
COMPILE: list[bool | str] = [True]


def report(name: str, ok: bool | None, detail: str) -> None:
    status = "INFO" if ok is None else "PASS" if ok else "FAIL"
    RESULTS.append((name, status))
    print(f"{status} {name}: {detail}", flush=True)


def batch(n: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 224, 224, generator=gen)
    return x.to(device), (torch.arange(n) % 10).to(device)


def graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


def check_cpu_vs_device(device: str) -> None:
    model = load_model("tiny")
    x, y = batch(2, "cpu")
    cpu = explain("opticam", model, x, y, iterations=10)
    dev = explain("opticam", model.to(device), x.to(device), y.to(device), iterations=10).cpu()
    diff = float((cpu - dev).abs().max())
    report("opticam_cpu_vs_device", diff <= CPU_DEVICE_TOL, f"max |map diff| {diff:.2e}")


def check_compiled_opticam(device: str, models: list[str]) -> None:
    for name in models:
        model = load_model(name, weights=None if name == "tiny" else "random", device=device)
        x, y = batch(8, device)
        torch._dynamo.reset()
        counters.clear()
        eager = optimize(model, x, ClassLogit(y), model.target_layer, iterations=10)
        t0 = time.perf_counter()
        comp = optimize(
            model, x, ClassLogit(y), model.target_layer, iterations=10, compile=COMPILE[0]
        )
        seconds = time.perf_counter() - t0
        first = graphs()
        optimize(
            model, x[:5], ClassLogit(y[:5]), model.target_layer, iterations=10, compile=COMPILE[0]
        )
        again = graphs() - first
        diff = (comp.maps - eager.maps).abs()
        detail = (f"max |map diff| {float(diff.max()):.2e}, mean {float(diff.mean()):.2e}; "
                  f"{first} graphs in {seconds:.1f} s; smaller batch: {again} new graphs")  # fmt: skip
        # A recompile fails on any network; the maps' tolerance holds for the tiny CNN only.
        ok = False if again else (float(diff.max()) <= COMPILED_TOL if name == "tiny" else None)
        report(f"opticam_compiled_vs_eager[{name}]", ok, detail)


def check_compiled_metrics_and_scorecam(device: str) -> None:
    model = load_model("tiny", device=device)
    x, y = batch(5, device)
    maps = torch.rand(5, 1, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    torch._dynamo.reset()
    counters.clear()
    kw = {"batch_size": 4, "step": 12544}
    eager = insertion_deletion(model, x, maps, y, **kw)
    comp = insertion_deletion(model, x, maps, y, compile=COMPILE[0], **kw)
    ce, cc = (
        classification(model, x, maps, y),
        classification(model, x, maps, y, compile=COMPILE[0]),
    )
    worst = max(float((eager[k] - comp[k]).abs().max()) for k in ("I", "D"))
    worst = max(worst, *(float((ce[k] - cc[k]).abs().max()) for k in ("AD", "AG", "AI")))
    n = graphs()
    report("metrics_compiled_vs_eager", worst <= 1e-3 and n <= 2,
           f"max |score diff| {worst:.2e} points (I, D, AD, AG, AI); {n} graph(s)")  # fmt: skip
    model = load_model("tiny", device=device)  # a fresh model: no compiled sizes from the metrics
    torch._dynamo.reset()
    counters.clear()
    se = explain("scorecam", model, x[:2], y[:2], batch_size=5)
    sc = explain("scorecam", model, x[:2], y[:2], batch_size=5, compile=COMPILE[0])
    diff = float((se - sc).abs().max())
    report("scorecam_compiled_vs_eager", diff <= 1e-4 and graphs() == 1,
           f"max |map diff| {diff:.2e}; {graphs()} graph(s)")  # fmt: skip


def check_auto_batch(device: str, name: str) -> None:
    model = load_model(name, weights=None if name == "tiny" else "random", device=device)
    t0 = time.perf_counter()
    b = resolve_batch_size("auto", model, device)
    probe = time.perf_counter() - t0
    if not device.startswith("cuda"):
        report("batch_size_auto", b >= 1, f"{b} on {device} (no probe off CUDA)")
        return
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    x, y = batch(b, device)
    try:
        optimize(model, x, ClassLogit(y), model.target_layer, iterations=2, tol=-1.0)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        report(f"batch_size_auto[{name}]", True,
               f"batch {b} (probe {probe:.1f} s); 2 iterations at that batch: peak {peak:.1f} of "
               f"{total:.1f} GiB")  # fmt: skip
    except torch.OutOfMemoryError:
        report(f"batch_size_auto[{name}]", False, f"batch {b} ran out of memory")


def check_bf16(device: str, name: str) -> None:
    model = load_model(name, weights=None if name == "tiny" else "random", device=device)
    x, y = batch(4, device)
    full = optimize(model, x, ClassLogit(y), model.target_layer, iterations=10)
    half = optimize(model, x, ClassLogit(y), model.target_layer, iterations=10,
                    autocast_dtype=torch.bfloat16)  # fmt: skip
    diff = (full.maps - half.maps).abs()
    report(f"opticam_bf16_vs_fp32[{name}]", None,
           f"max |map diff| {float(diff.max()):.2e}, mean {float(diff.mean()):.2e} after 10 "
           "iterations")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny CNN only (the CPU test runs this)")
    ap.add_argument(
        "--compile",
        default=None,
        help="backend or mode for compile= (default: Inductor on CUDA, aot_eager on CPU)",
    )
    args = ap.parse_args(argv)
    dev = args.device
    default = "default" if dev.startswith("cuda") else "aot_eager"
    chosen = args.compile or default
    COMPILE[0] = True if chosen == "default" else chosen
    big = [] if args.quick else ["resnet50"]
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "CPU"
    print(f"device {dev} ({name}); torch {torch.__version__}; compile={COMPILE[0]}", flush=True)
    RESULTS.clear()
    t0 = time.perf_counter()
    check_cpu_vs_device(dev)
    check_compiled_opticam(dev, ["tiny", *big])
    check_compiled_metrics_and_scorecam(dev)
    check_auto_batch(dev, big[0] if big else "tiny")
    check_bf16(dev, big[0] if big else "tiny")
    failed = [n for n, s in RESULTS if s == "FAIL"]
    print(f"{len(RESULTS)} checks, {len(failed)} failed {failed or ''} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
