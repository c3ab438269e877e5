"""GPU throughput of the protocol's hot loops, and the projected wall time of the full runs.

    python benchmarks/bench_gpu.py                        # CUDA: ResNet50 + VGG16-BN, batch sweep
    python benchmarks/bench_gpu.py --bf16 --batches 128 256 512
    python benchmarks/bench_gpu.py --device cpu --quick   # tiny CNN, seconds (what the tests run)

Prints, per network (random weights: timing only):

- Opti-CAM images/s at exactly ``--iterations`` (100) Adam steps, early stopping off, for each batch
  size, eager and ``torch.compile``-d (compile time reported apart), optionally under bf16 autocast;
- insertion/deletion forwards/s (224 steps of 224 pixels: 2 x 225 forwards per image), eager and
  with the forwards ``torch.compile``-d (``compile_evaluation``; what AD/AG/AI, AOPC and Score-CAM
  use too);
- peak GPU memory of each configuration;
- the projected wall time of the ``imagenet-1k`` and ``imagenet`` profiles on 1 and 8 GPUs, from
  the measured per-image costs times the protocol's counts (printed, see ``COUNTS``).
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import torch

from paper_code import load_model
from paper_code.experiments.paper import methods_not_in_paper
from paper_code.experiments.tablerun import table_methods
from paper_code.methods.hooks import forward_features
from paper_code.methods.opticam import optimize
from paper_code.methods.targets import ClassLogit
from paper_code.metrics import insertion_deletion

#: Cost of one map in forward-pass equivalents (one image through the network; a forward and a
#: backward count 3), per method at its default options; ``K`` = channels of the CAM layer
#: (ResNet50 layer4: 2048, VGG16-BN last conv: 512). Opti-CAM is measured, not estimated.
MAP_COST = {
    "fakecam": lambda k: 0,
    "gradcam": lambda k: 3,
    "gradcampp": lambda k: 3,
    "xgradcam": lambda k: 3,
    "layercam": lambda k: 3,
    "hirescam": lambda k: 3,
    "scorecam": lambda k: k,  # one masked forward per channel
    "ablationcam": lambda k: k,  # one ablated forward per channel
    "extremal": lambda k: 800 * 3,  # 800 iterations of forward + backward
    "lime": lambda k: 1000,  # 1000 samples
    "gradientshap": lambda k: 50 * 3,  # 50 samples, forward + backward
}

#: What the projection counts, per image and per network (the CNN notebooks; the transformers of
#: Tables 2/A.8 are not included). Maps are computed once and shared through the map cache.
COUNTS = {
    # Table 1: one map of every method (reused by Tables 3, 4 and A.9 where the class is the same)
    "maps": "every method of Table 1 (table_methods('table1'))",
    # Table 1 AD/AG/AI: 1 masked forward per method; Table 4: ~3 per method
    "classification_forwards_per_method": 4,
    # Table 3 / Fig. 3: insertion + deletion, 2 x 225 forwards per method of Table 3
    "insertion_deletion_forwards_per_method": 2 * 225,
    # imagenet-1k only: the study notebooks (Tables 5, 6, A.12, A.13, A.14, A.9; Figs. A.4-A.6)
    # add about this many Opti-CAM runs per image (objectives x normalizations, learning rates,
    # randomized networks, other target rules), each counted at the measured 100-iteration cost
    "study_opticam_runs": 20,
    # and about this many extra insertion/deletion or masked-forward evaluations per image
    "study_forwards": 20 * 8,
}
#: Images and networks of each profile.
PROFILES = {
    "imagenet-1k": (1000, ("resnet50", "vgg16_bn")),
    "imagenet": (50000, ("resnet50", "vgg16_bn")),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**20:8.0f} MiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB RSS"


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def inputs(batch: int, device: str, size: int = 224):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(device)
    return x, ClassLogit(torch.randint(0, 10, (batch,), generator=gen).to(device))


def bench_opticam(model, device, batch, iterations, repeats, size=224, **kw) -> tuple[float, float]:
    """(images/s, seconds of the first call beyond a steady call: compile time)."""
    x, target = inputs(batch, device, size)
    sync(device)
    t0 = time.perf_counter()
    optimize(model, x, target, model.target_layer, iterations=iterations, tol=-1.0, **kw)
    sync(device)
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        optimize(model, x, target, model.target_layer, iterations=iterations, tol=-1.0, **kw)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return batch / best, max(first - best, 0.0)


def bench_insdel(
    model, device, batch, step, repeats, size=224, compile=False
) -> tuple[float, float, float]:
    """(images/s, forwards/s, compile seconds) of insertion + deletion, ``batch`` images and
    ``batch`` forwards per pass; ``compile``: the forwards under ``torch.compile``."""
    x, _ = inputs(batch, device, size)
    maps = torch.rand(batch, 1, size, size, device=device)
    n_steps = -(-size * size // step)
    kw = {"step": step, "batch_size": batch, "compile": compile}
    sync(device)
    t0 = time.perf_counter()
    insertion_deletion(model, x, maps, **kw)  # warm-up (and compilation)
    sync(device)
    first = time.perf_counter() - t0
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        insertion_deletion(model, x, maps, **kw)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return batch / best, batch * 2 * (n_steps + 1) / best, max(first - best, 0.0)


def channels(model, device) -> int:
    x, _ = inputs(1, device, 64)
    with torch.no_grad():
        feats, _ = forward_features(model, x, model.target_layer)
    return int(feats.shape[1])


def paper_rows(table: str) -> list[str]:
    """The methods of the paper's ``table`` on ResNet50 (a registered plugin is no paper row)."""
    extra = set(methods_not_in_paper())
    return [m for m in table_methods(table, "resnet50")[0] if m not in extra]


def per_image_seconds(opticam_s: float, fwd_s: float, k: int, study: bool) -> float:
    """Seconds per image and network of the paper's protocol (see ``COUNTS``): the paper's rows
    only, whatever plugins this process has registered."""
    t1, t3 = (paper_rows(t) for t in ("table1", "table3"))
    maps = sum(MAP_COST[m](k) for m in t1 if m != "opticam") * fwd_s + opticam_s
    metrics = len(t1) * COUNTS["classification_forwards_per_method"] * fwd_s
    metrics += len(t3) * COUNTS["insertion_deletion_forwards_per_method"] * fwd_s
    extra = 0.0
    if study:
        extra = COUNTS["study_opticam_runs"] * opticam_s + COUNTS["study_forwards"] * fwd_s
    return maps + metrics + extra


def hms(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h:d}:{rest // 60:02d}:{rest % 60:02d}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny CNN, 2 iterations, batch 2 (tests)")
    ap.add_argument("--models", nargs="+", default=None, help="default resnet50 vgg16_bn")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default 64 128 256 512")
    ap.add_argument("--iterations", type=int, default=None, help="default 100 (quick: 2)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also bf16 autocast")
    ap.add_argument(
        "--compile",
        default=None,
        help="torch.compile mode or backend of the compiled rows (default: Inductor's default; "
        "'none' skips them; quick: none)",
    )
    ap.add_argument("--insdel-batch", type=int, default=None, help="default 64 (quick: 2)")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds: once spent, the remaining Opti-CAM rows are skipped (printed as such); the "
        "insertion/deletion rows and the projection still run. For a time-limited GPU session: "
        "list the batches that matter most first",
    )
    args = ap.parse_args(argv)
    dev = args.device
    quick = args.quick
    models = args.models or (["tiny"] if quick else ["resnet50", "vgg16_bn"])
    batches = args.batches or ([2] if quick else [64, 128, 256, 512])
    iterations = args.iterations or (2 if quick else 100)
    compile_arg = args.compile or ("none" if quick else "default")
    compiled = (
        None if compile_arg == "none" else (True if compile_arg == "default" else compile_arg)
    )
    insdel_batch = args.insdel_batch or (2 if quick else 64)
    size = 64 if quick else 224  # quick: small images (the tiny CNN takes any size)
    insdel_step = size * size // 4 if quick else 224
    repeats = 1 if quick else args.repeats
    name = (
        torch.cuda.get_device_name()
        if dev.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device {dev}: {name}; torch {torch.__version__}; {iterations} Opti-CAM iterations, "
          "early stopping off, random weights")  # fmt: skip
    results: dict = {"opticam": {}, "insdel": {}, "projection": {}}
    start = time.perf_counter()
    best_opt: dict[str, float] = {}
    fwd_rate: dict[str, float] = {}
    k_of: dict[str, int] = {}
    for model_name in models:
        model = load_model(
            model_name, weights=None if model_name == "tiny" else "random", device=dev
        )
        k_of[model_name] = channels(model, dev)
        variants = [("eager", {})]
        if compiled is not None:
            variants.append((f"compiled ({compile_arg})", {"compile": compiled}))
        if args.bf16:
            variants += [
                (f"{v} bf16", {**kw, "autocast_dtype": torch.bfloat16}) for v, kw in variants
            ]
        for batch in batches:
            for label, kw in variants:
                spent = args.budget is not None and time.perf_counter() - start > args.budget
                if spent and results["opticam"]:  # (the first row always runs)
                    print(f"Opti-CAM  {model_name:10s} batch {batch:4d} {label:24s} skipped "
                          f"(--budget {args.budget:.0f} s spent)", flush=True)  # fmt: skip
                    continue
                reset_peak(dev)
                try:
                    rate, ctime = bench_opticam(model, dev, batch, iterations, repeats, size, **kw)
                except torch.OutOfMemoryError:
                    print(f"{model_name:10s} batch {batch:4d} {label:24s} out of memory")
                    continue
                results["opticam"][(model_name, batch, label)] = rate
                best_opt[model_name] = max(best_opt.get(model_name, 0.0), rate)
                extra = f"  compile {ctime:6.1f} s" if "compiled" in label else ""
                print(f"Opti-CAM  {model_name:10s} batch {batch:4d} {label:24s} "
                      f"{rate:9.2f} images/s  peak {peak_mib(dev)}{extra}", flush=True)  # fmt: skip
        insdel_variants = [("eager", False)]
        if compiled is not None:
            insdel_variants.append((f"compiled ({compile_arg})", compiled))
        for label, comp in insdel_variants:
            reset_peak(dev)
            img_s, fwd_s, ctime = bench_insdel(
                model, dev, insdel_batch, insdel_step, repeats, size, comp
            )
            fwd_rate[model_name] = max(fwd_rate.get(model_name, 0.0), fwd_s)
            results["insdel"][model_name if not comp else (model_name, label)] = fwd_s
            extra = f"  compile {ctime:6.1f} s" if comp else ""
            print(f"ins/del   {model_name:10s} batch {insdel_batch:4d} {label:24s} "
                  f"{fwd_s:12.1f} forwards/s ({img_s:.2f} images/s)  peak {peak_mib(dev)}{extra}",
                  flush=True)  # fmt: skip
        del model
    print()
    print("Projection (measured costs x counts; ideal scaling over GPUs, balanced shards):")
    print(f"  counts per image and network: maps of {paper_rows('table1')}")
    print(f"  (non-Opti-CAM maps in forward equivalents: Score-CAM/Ablation-CAM K, LIME 1000, "
          f"ExPerturbation 2400, GradientSHAP 150, gradient CAMs 3); {COUNTS}")  # fmt: skip
    for prof, (n_images, nets) in PROFILES.items():
        total = 0.0
        stood_in = []
        for net in nets:
            # A network not measured (quick: the tiny CNN; --budget: rows skipped) borrows the
            # cost of one that was, and the line says so.
            measured = [m for m in models if m in best_opt]
            o_ref = net if net in best_opt else measured[0]
            f_ref = net if net in fwd_rate else models[0]
            if (o_ref, f_ref) != (net, net):
                stood_in.append(
                    f"{net}: {o_ref}'s Opti-CAM" if f_ref == net else f"{net}: {f_ref}'s"
                )
            per = per_image_seconds(
                1 / best_opt[o_ref], 1 / fwd_rate[f_ref], k_of[f_ref], study=prof == "imagenet-1k"
            )
            total += per * n_images
        results["projection"][prof] = total
        stand_in = f" (costs of {'; '.join(stood_in)})" if stood_in else ""
        print(f"  {prof:12s} {n_images:6d} images x {len(nets)} networks: "
              f"1 GPU {hms(total)}, 8 GPUs {hms(total / 8)}{stand_in}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
