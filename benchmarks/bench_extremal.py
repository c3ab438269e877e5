"""Extremal Perturbation: seconds per image, batched against one image at a time, in the same run.

    python benchmarks/bench_extremal.py                    # 800 iterations (TorchRay's default)
    python benchmarks/bench_extremal.py --iterations 20    # quick: a few minutes on 2 CPU cores

Model ``efficientnet_lite0`` (offline weights), the first ``--batch`` (8) images of the ``sample``
dataset, their predicted classes, default area 0.1. Both runs execute the same algorithm
(:func:`paper_code.methods.perturbation.optimize`); the loop calls it once per image. The blur
pyramid is built inside each call and is part of the time; data loading and model loading are not.
Seconds per image scale linearly with the iteration count (per-iteration cost is constant).
"""

from __future__ import annotations

import argparse
import time

import torch

import paper_code as pc
from paper_code.methods.perturbation import optimize
from paper_code.methods.targets import ClassLogit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model = pc.load_model("efficientnet_lite0", device=args.device)
    data = pc.load_dataset("sample")
    n = min(args.batch, len(data))
    x = torch.stack([data[i]["image"] for i in range(n)]).to(args.device)
    with torch.no_grad():
        classes = model(x).argmax(1)

    def sync() -> None:
        if torch.device(args.device).type == "cuda":
            torch.cuda.synchronize()

    optimize(model, x[:2], ClassLogit(classes[:2]), iterations=2)  # warm-up (allocator, kernels)

    sync()
    t0 = time.perf_counter()
    batched = optimize(model, x, ClassLogit(classes), iterations=args.iterations).maps
    sync()
    t_batched = (time.perf_counter() - t0) / n

    t0 = time.perf_counter()
    looped = [
        optimize(
            model, x[i : i + 1], ClassLogit(classes[i : i + 1]), iterations=args.iterations
        ).maps
        for i in range(n)
    ]
    sync()
    t_loop = (time.perf_counter() - t0) / n

    diff = (batched - torch.cat(looped)).abs().max().item()
    print(
        f"efficientnet_lite0 {args.device} {n} images, {args.iterations} iterations, "
        f"{torch.get_num_threads()} threads\n"
        f"  batched ({n} at once): {t_batched:8.3f} s/image\n"
        f"  one at a time:         {t_loop:8.3f} s/image\n"
        f"  speed-up:              {t_loop / t_batched:8.2f}x   (max |batched - alone| = {diff:.2e})",
        flush=True,
    )


if __name__ == "__main__":
    main()
