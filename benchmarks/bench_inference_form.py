"""What the CPU speed settings buy: EfficientNet-Lite0 forward and forward + backward, ms per image.

    python benchmarks/bench_inference_form.py [--batch 4] [--repeats 10]

Configurations: the network as published (``load_model(..., fuse=False)``) and in inference form
(batch norms folded, the default), each with glibc's default allocator and with
``paper_code.runtime.tune_cpu_allocator`` (applied by ``load_model`` on a CPU). The allocator
setting is process-wide and cannot be undone, so each configuration runs in its own subprocess.
Also prints the largest logit difference between the two forms (float rounding only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
from paper_code.models import load_model
fuse, batch, repeats = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
model = load_model("efficientnet_lite0", fuse=fuse)
for p in model.parameters():
    p.requires_grad_(False)
model = model.to(memory_format=torch.channels_last)
x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
x = x.contiguous(memory_format=torch.channels_last)

def forward(x):
    with torch.inference_mode():
        return model(x)

def forward_backward(x):
    xx = x.clone().requires_grad_(True)
    model(xx)[:, 0].sum().backward()

out = {}
for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
    fn(x); fn(x)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        best = min(best, (time.perf_counter() - t0) / repeats / batch * 1000)
    out[name] = best
out["logits"] = forward(x).tolist()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    logits = {}
    for fuse in (False, True):
        for tuned in (False, True):
            env = dict(os.environ)
            env.pop("PAPER_CODE_NO_MALLOPT", None)
            if not tuned:
                env["PAPER_CODE_NO_MALLOPT"] = "1"
            cmd = [sys.executable, "-c", CHILD, str(int(fuse)), str(args.batch), str(args.repeats)]
            res = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True,
                                            check=True).stdout.strip().splitlines()[-1])  # fmt: skip
            logits[fuse] = res.pop("logits")
            print(
                f"{'inference form' if fuse else 'as published':15s} "
                f"{'tuned allocator' if tuned else 'glibc default':16s} batch {args.batch}: "
                + "  ".join(f"{k} {v:6.2f} ms/image" for k, v in res.items()),
                flush=True,
            )
    diff = max(abs(a - b) for ra, rb in zip(logits[False], logits[True]) for a, b in zip(ra, rb))
    print(f"largest logit difference between the two forms: {diff:.2e}")


if __name__ == "__main__":
    main()
