"""How much Opti-CAM's maps move under perturbations of the size of float rounding.

    python benchmarks/opticam_sensitivity.py

On the 9 bundled sample photos with EfficientNet-Lite0 (CPU, 100 iterations, lr 0.1), compares the
reference run (network as published, ``fuse=False``, batches of 5) with (a) the same network in
batches of 3 and (b) the network in inference form (batch norms folded, the default). Both change
the logits only at the 1e-5 level; the script prints how far the maps and the per-image AG move.
"""

from __future__ import annotations

import torch

import paper_code as pc


def maps_of(model, x, y, bs):
    return torch.cat(
        [pc.explain("opticam", model, x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
    )


def main() -> None:
    data = pc.load_dataset("sample")
    x = torch.stack([data[i]["image"] for i in range(len(data))])
    y = torch.tensor([data[i]["label"] for i in range(len(data))])
    plain = pc.load_model("efficientnet_lite0", fuse=False)
    fused = pc.load_model("efficientnet_lite0")
    ref = maps_of(plain, x, y, 5)
    ag_ref = pc.metrics.classification(plain, x, ref, y)["AG"]
    print(f"reference (as published, batches of 5): mean AG {float(ag_ref.mean()):.2f}")
    for name, model, bs in (("batches of 3", plain, 3), ("inference form", fused, 5)):
        other = maps_of(model, x, y, bs)
        ag = pc.metrics.classification(plain, x, other, y)["AG"]
        diff = (other - ref).abs()
        print(
            f"{name:15s}: map |diff| mean {float(diff.mean()):.4f}, max {float(diff.max()):.3f}; "
            f"mean AG {float(ag.mean()):.2f}; largest per-image AG change "
            f"{float((ag - ag_ref).abs().max()):.1f} points",
            flush=True,
        )


if __name__ == "__main__":
    main()
