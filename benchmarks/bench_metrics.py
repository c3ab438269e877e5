"""Benchmark: batched insertion/deletion (paper_code.metrics) vs a naive image-by-image, step-by-step loop.

RISE protocol at 224×224 (224 steps of 224 pixels, 225 evaluations per curve, both insertion and
deletion) on ``load_model('efficientnet_lite0')``, CPU, ``torch.set_num_threads(2)``.

The naive reference (written here, RISE-style) forwards one perturbed image at a time and updates the
image in place between steps. It is slow, so by default it runs on ``--naive-images`` images and its time
is extrapolated linearly to all images (its cost is exactly proportional to the number of images).
Both implementations are checked to give the same scores on the images the naive loop ran on.

    python benchmarks/bench_metrics.py [--images 8] [--naive-images 1] [--naive-evals 225]
                                       [--batch-size 8]

On a 2-core CPU, channels_last and small chunks (4-8 images) are fastest for EfficientNet-Lite0; large
chunks fall out of cache. The speed-up is reported against a naive loop in both memory formats.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from paper_code.metrics import blur_substrate, insertion_deletion
from paper_code.models import load_model


def naive_insertion_deletion(model, images, maps, step=224, max_evals=None):
    """Reference: for each image, for each mode, for each step, one forward of one image.

    ``max_evals`` stops each curve early (for timing on a loaded machine); scores are then partial.
    """
    b, _, h, w = images.shape
    n_steps = math.ceil(h * w / step)
    out = {"I": [], "D": [], "I_curve": [], "D_curve": []}
    with torch.inference_mode():
        for i in range(b):
            x = images[i : i + 1]
            c = model(x).argmax(1).item()
            order = torch.argsort(maps[i].flatten(), descending=True, stable=True)
            for mode in ("I", "D"):
                if mode == "D":
                    cur, finish = x.clone(), torch.zeros_like(x)
                else:
                    cur, finish = blur_substrate(x), x
                ys = []
                for t in range(min(n_steps + 1, max_evals or n_steps + 1)):
                    ys.append(model(cur).double().softmax(1)[0, c].item())
                    idx = order[t * step : (t + 1) * step]
                    cur.view(1, 3, -1)[..., idx] = finish.reshape(1, 3, -1)[..., idx]
                y = torch.tensor(ys, dtype=torch.float64)
                out[mode].append(((y.sum() - y[0] / 2 - y[-1] / 2) / (len(y) - 1) * 100).item())
                out[f"{mode}_curve"].append(y)
    return {k: torch.tensor(v) if k in "ID" else torch.stack(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--naive-images", type=int, default=1)
    ap.add_argument(
        "--naive-evals", type=int, default=225, help="evaluations per naive curve (extrapolated)"
    )
    ap.add_argument("--batch-size", type=int, default=8)  # best on a 2-core CPU
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    images = torch.rand(args.images, 3, 224, 224)
    images = F.interpolate(
        F.avg_pool2d(images, 8), size=224, mode="bilinear"
    )  # smoother than noise
    maps = F.interpolate(torch.rand(args.images, 1, 7, 7), size=224, mode="bilinear")

    model = load_model("efficientnet_lite0")
    model_cl = load_model("efficientnet_lite0").to(memory_format=torch.channels_last)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU; {args.images} images"
    )

    # Per-forward cost of the two memory formats (context for the numbers below).
    with torch.inference_mode():
        for name, m in (("channels_first", model), ("channels_last", model_cl)):
            for bs in (1, args.batch_size):
                x = images[:1].expand(bs, -1, -1, -1).contiguous()
                m(x)
                dt = float("inf")
                for _ in range(3):  # min of 3: the machine may be shared
                    t0 = time.perf_counter()
                    m(x)
                    dt = min(dt, time.perf_counter() - t0)
                print(f"  forward {name:14s} batch {bs:3d}: {dt / bs * 1e3:8.1f} ms/image")

    t0 = time.perf_counter()
    # The library switches the model to channels_last itself for the duration of the call.
    fast = insertion_deletion(model, images, maps, batch_size=args.batch_size, return_curves=True)
    t_fast = time.perf_counter() - t0
    print(
        f"batched (channels_last, batch {args.batch_size}): {t_fast:.1f} s for {args.images} images"
    )

    k, ne = args.naive_images, min(args.naive_evals, 225)
    for name, m in (("channels_first", model), ("channels_last", model_cl)):
        t0 = time.perf_counter()
        slow = naive_insertion_deletion(m, images[:k], maps[:k], max_evals=ne)
        t = (time.perf_counter() - t0) * (args.images / k) * (225 / ne)
        for key in ("I_curve", "D_curve"):
            torch.testing.assert_close(
                slow[key].double(), fast[key][:k, :ne].double(), rtol=1e-4, atol=1e-5
            )
        if ne == 225:
            for key in ("I", "D"):
                torch.testing.assert_close(
                    slow[key].double(), fast[key][:k].double(), rtol=1e-4, atol=1e-4
                )
        print(
            f"naive ({name}, batch 1): {t:.1f} s for {args.images} images (measured on {k} "
            f"image(s) x {ne} evaluations per curve, extrapolated); speed-up of batched: "
            f"{t / t_fast:.1f}x"
        )
    print("naive and batched probabilities agree on every evaluation the naive loop ran")
    print(f"I = {fast['I'].mean():.2f}  D = {fast['D'].mean():.2f} (random images, random maps)")


if __name__ == "__main__":
    main()
