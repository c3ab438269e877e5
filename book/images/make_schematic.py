"""Draw book/images/opticam_schematic.png (the Opti-CAM pipeline of the paper's Fig. 1, as boxes).

Run from the repository root: python book/images/make_schematic.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = [  # (x, y, text, colour)
    (0.5, 2.0, "image\n$x$", "#eeeeee"),
    (2.3, 2.0, "network $f$\n(frozen)", "#dde8f5"),
    (4.15, 2.0, "feature maps\n$A^k_\\ell(x)$", "#eeeeee"),
    (6.0, 2.0, "$S_\\ell(x;u)=$\n$\\sum_k \\mathrm{softmax}(u)_k A^k_\\ell$", "#fff2cc"),
    (8.1, 2.0, "mask\n$n(\\mathrm{up}(S_\\ell))$", "#eeeeee"),
    (8.1, 0.5, "masked image\n$x \\odot n(\\mathrm{up}(S_\\ell))$", "#eeeeee"),
    (6.0, 0.5, "network $f$", "#dde8f5"),
    (3.9, 0.5, "objective $F^c_\\ell(x;u)$\n$= f(\\cdot)_c$ (logit)", "#e2f0d9"),
]
ARROWS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]


OUT = Path(__file__).with_name("opticam_schematic.png")


def main(out: Path = OUT) -> None:
    fig, ax = plt.subplots(figsize=(9, 3), dpi=120)
    ax.set_xlim(-0.4, 9.0)
    ax.set_ylim(-0.3, 2.8)
    ax.axis("off")
    for x, y, text, colour in BOXES:
        ax.add_patch(
            FancyBboxPatch(
                (x - 0.7, y - 0.35), 1.4, 0.7, boxstyle="round,pad=0.05", fc=colour, ec="k"
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=8)
    for a, b in ARROWS:
        (xa, ya, *_), (xb, yb, *_) = BOXES[a], BOXES[b]
        if ya == yb:
            start, end = (
                (xa + 0.8 * (1 if xb > xa else -1), ya),
                (xb - 0.8 * (1 if xb > xa else -1), yb),
            )
        else:
            start, end = (xa, ya - 0.4), (xb, yb + 0.4)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="k"))
    ax.add_patch(  # gradient path back to u, in blue as in the paper
        FancyArrowPatch(
            (3.9, 0.9),
            (5.8, 1.6),
            connectionstyle="arc3,rad=-0.3",
            arrowstyle="-|>",
            mutation_scale=12,
            color="tab:blue",
            lw=1.5,
        )
    )
    ax.text(3.2, 1.25, "Adam on $u$\n(maximize $F$)", color="tab:blue", fontsize=8, ha="center")
    fig.tight_layout()
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
