"""Seconds per image of every page of a rehearsal run, and the projected time of the GPU profiles.

Reads the output folder of ``python -m paper_code rehearse`` (its ``timings.json``, written after
every notebook, and the pages' provenance for the image count) and prints, per page, the measured
seconds, the seconds per image, and what the ``imagenet-1k`` and ``imagenet`` profiles would take
on the same machine with the same settings (each page's image count from the profile: 1000, or
the 50,000 validation images where the profile says ``n_images: null``).

The per-image figure includes each page's fixed cost (kernel start, imports, loading the
networks), so the projection is an upper bound that gets tighter as the rehearsal's image count
grows; pages that reuse maps computed by an earlier page (most reuse Table 1's) are cheaper than
they would be alone, exactly as in the real run, which executes the pages in the same order.

    python benchmarks/rehearsal_report.py _build/reproduce/rehearsal
    python benchmarks/rehearsal_report.py OUT --images 64 --profiles imagenet-1k imagenet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: Images of the ILSVRC2012 validation set (``n_images: null`` in the GPU profiles).
IMAGENET_VAL = 50_000


def _images(out: Path) -> int | None:
    for path in sorted(out.glob("*_provenance.json")):
        try:
            n = json.loads(path.read_text()).get("images")
        except (OSError, ValueError):
            continue
        if isinstance(n, int) and n > 0:
            return n
    return None


def _hms(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def report(out: Path, images: int | None, profiles: list[str]) -> str:
    from paper_code.book.profiles import load_profile, profile_parameters

    timings = json.loads((out / "timings.json").read_text()).get("seconds") or {}
    if not timings:
        raise SystemExit(f"{out}/timings.json holds no page times: did the rehearsal run there?")
    n = images or _images(out)
    if not n:
        raise SystemExit("cannot tell the rehearsal's image count: pass --images N")
    profs = {p: load_profile(p) for p in profiles}
    head = ["page", "seconds", "s/image"] + [f"{p} (h:mm:ss)" for p in profiles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = dict.fromkeys(profiles, 0.0)
    for page, seconds in timings.items():
        per = seconds / n
        cells = [page, f"{seconds:.1f}", f"{per:.3f}"]
        for p, prof in profs.items():
            if page in (prof.get("skip") or ()):
                cells.append("skipped")
                continue
            count = profile_parameters(prof, page).get("n_images") or IMAGENET_VAL
            totals[p] += per * int(count)
            cells.append(_hms(per * int(count)))
        lines.append("| " + " | ".join(cells) + " |")
    total = ["**total**", f"{sum(timings.values()):.1f}", ""] + [_hms(totals[p]) for p in profiles]
    lines.append("| " + " | ".join(total) + " |")
    return (
        f"Rehearsal in {out}: {len(timings)} pages on {n} images each.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the rehearsal's output folder")
    ap.add_argument("--images", type=int, default=None, help="images per page (default: read)")
    ap.add_argument("--profiles", nargs="+", default=["imagenet-1k", "imagenet"])
    args = ap.parse_args(argv)
    print(report(args.out, args.images, args.profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
