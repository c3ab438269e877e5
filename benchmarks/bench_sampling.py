"""LIME and GradientSHAP throughput: seconds per image, a batch at once vs one image at a time.

    python benchmarks/bench_sampling.py                      # paper settings (LIME 1000 samples)
    python benchmarks/bench_sampling.py --lime-samples 200   # a couple of minutes on 2 CPU cores

EfficientNet-Lite0 (pretrained, offline) on the ``sample`` photos, ground-truth classes. "batched"
passes the whole batch to the method; "single" calls it once per image. For LIME the batch is still
explained one image after another (lime's ``explain_instance`` takes one image); what is batched is
the scoring of the perturbed copies, ``--lime-chunks`` per forward pass (several values compare
them). For GradientSHAP "batched" sends all ``batch * n_samples`` path points through one
forward/backward pass. Prints one line per configuration and the largest map difference between
the two modes (LIME: 0, its result does not depend on the batch; GradientSHAP: the random draws of
an image depend on its position in the batch).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from paper_code import load_dataset, load_model
from paper_code.data.datasets import load_batch
from paper_code.methods.sampling import gradientshap, lime
from paper_code.methods.targets import ClassLogit


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(name: str, method: Callable[..., torch.Tensor], model, x, labels, **kw) -> None:
    b = x.shape[0]
    t_batch, maps = timed(lambda: method(model, x, ClassLogit(labels), **kw))
    t_single, singles = timed(
        lambda: torch.cat(
            [method(model, x[i : i + 1], ClassLogit(labels[i : i + 1]), **kw) for i in range(b)]
        )
    )
    opts = " ".join(f"{k}={v}" for k, v in kw.items())
    print(
        f"{name:13s} {opts:34s} batched {t_batch / b:7.3f} s/image   single {t_single / b:7.3f} "
        f"s/image   max |diff| {(maps - singles).abs().max().item():.3g}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lime-samples", type=int, default=1000)
    ap.add_argument("--lime-chunks", type=int, nargs="*", default=[10])
    ap.add_argument("--gs-samples", type=int, default=50)
    ap.add_argument("--skip", nargs="*", default=[], choices=["lime", "gradientshap"])
    args = ap.parse_args()
    model = load_model("efficientnet_lite0")
    ds = load_dataset("sample")
    x, labels = load_batch(ds, list(range(min(args.batch, len(ds)))))
    print(
        f"efficientnet_lite0 cpu, {x.shape[0]} images {tuple(x.shape[-2:])}, "
        f"{torch.get_num_threads()} CPU threads",
        flush=True,
    )
    with torch.no_grad():
        model(x[:2])  # warm-up
    if "gradientshap" not in args.skip:
        compare("gradientshap", gradientshap, model, x, labels, n_samples=args.gs_samples)
    if "lime" not in args.skip:
        for chunk in args.lime_chunks:
            compare("lime", lime, model, x, labels, num_samples=args.lime_samples, batch_size=chunk)


if __name__ == "__main__":
    main()
