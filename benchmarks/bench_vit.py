"""Transformer methods on ViT-B/16 (random weights: the cost does not depend on them).

Prints seconds per image for Opti-CAM (exact ``--iterations``, early stopping off, batched) and,
batched against a one-image-at-a-time loop measured in the same run, for TIBAV and Rollout.

    python benchmarks/bench_vit.py                   # 2 images, Opti-CAM 100 iterations
    python benchmarks/bench_vit.py --iterations 10   # quicker; the per-iteration cost is printed
"""

from __future__ import annotations

import argparse
import time

import torch

import paper_code as pc
from paper_code.methods.opticam import optimize
from paper_code.methods.targets import ClassLogit


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    model = pc.load_model(args.model, weights="random", device=args.device)
    x = torch.rand(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = x.to(args.device)
    classes = torch.arange(args.images, device=args.device)
    print(f"{args.model} (random weights), {args.images} images, device {args.device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip

    with torch.no_grad():
        model(x[:1])  # warm-up
    layer = pc.methods.resolve_layer(model, None)  # blocks.11.norm1, tokens to a 14x14 grid
    t = _time(lambda: optimize(model, x, ClassLogit(classes), layer, iterations=args.iterations,
                               tol=-1.0))  # fmt: skip
    per_image = t / args.images
    print(f"Opti-CAM, {args.iterations} iterations, batch {args.images}: {per_image:.2f} s/image "
          f"({per_image / max(args.iterations, 1) * 1000:.0f} ms per image-iteration; "
          f"{per_image / max(args.iterations, 1) * 100:.1f} s/image at 100 iterations)")  # fmt: skip

    for method in ("tibav", "rollout", "rawatt"):
        batched = _time(lambda m=method: pc.explain(m, model, x, classes)) / args.images
        single = (
            sum(
                _time(lambda i=i, m=method: pc.explain(m, model, x[i : i + 1], classes[i : i + 1]))
                for i in range(args.images)
            )
            / args.images
        )
        print(f"{method:8s} batched {batched:.3f} s/image, one at a time {single:.3f} s/image "
              f"({single / batched:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
