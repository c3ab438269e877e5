"""Opti-CAM throughput: images/s at exactly 100 iterations (early stopping disabled).

    python benchmarks/bench_opticam.py                 # CPU: efficientnet_lite0 at batch 1 and 8
    python benchmarks/bench_opticam.py --gpu-batch 256 # + resnet50 / vgg16_bn on CUDA if present

Random weights are used for the GPU models (timing only). Prints one line per configuration.
"""

from __future__ import annotations

import argparse
import time

import torch

from paper_code import load_model
from paper_code.methods.opticam import optimize
from paper_code.methods.targets import ClassLogit


def bench(model_name: str, device: str, batch: int, iterations: int, repeats: int, **kw) -> float:
    weights = None if model_name == "efficientnet_lite0" else "random"
    model = load_model(model_name, weights=weights, device=device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 224, 224, generator=gen).to(device)
    target = ClassLogit(torch.randint(0, 1000, (batch,), generator=gen))
    # Warm-up (allocator, oneDNN/cuDNN kernel selection).
    optimize(model, x, target, model.target_layer, iterations=2, tol=-1.0, **kw)
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimize(model, x, target, model.target_layer, iterations=iterations, tol=-1.0, **kw)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(
        f"{model_name:20s} {device:6s} batch {batch:4d}  {iterations} it  "
        f"{best / batch:7.3f} s/image  {batch / best:8.2f} images/s  "
        f"(best of {repeats}; {torch.get_num_threads()} CPU threads)",
        flush=True,
    )
    return batch / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cpu-batches", type=int, nargs="*", default=[1, 8])
    ap.add_argument("--gpu-batch", type=int, default=64)
    ap.add_argument("--bf16", action="store_true", help="GPU runs under bf16 autocast")
    args = ap.parse_args()
    for b in args.cpu_batches:
        bench("efficientnet_lite0", "cpu", b, args.iterations, args.repeats)
    if torch.cuda.is_available():
        kw = {"autocast_dtype": torch.bfloat16} if args.bf16 else {}
        for name in ("resnet50", "vgg16_bn"):
            bench(name, "cuda", args.gpu_batch, args.iterations, args.repeats, **kw)
    else:
        print("no CUDA device: GPU benchmarks skipped")


if __name__ == "__main__":
    main()
