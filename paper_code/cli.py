"""Command line: ``python -m paper_code {explain,run,reproduce,list}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


def _parse_value(text: str) -> Any:
    """``-p key value``: values are parsed as YAML (numbers, lists, true/false), else kept as text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _params(pairs: list[list[str]] | None) -> dict[str, Any]:
    return {k: _parse_value(v) for k, v in (pairs or [])}


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from . import explain, load_model
    from .data import open_rgb
    from .methods import get_method
    from .viz import overlay

    get_method(args.method)  # unknown ids fail here, with the list of valid ones
    model = load_model(args.model, weights=args.weights, device=args.device)
    image = open_rgb(args.image)
    x = model.transform(image)[None].to(args.device)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    pred = int(probs.argmax())
    target = pred if args.target is None else args.target
    if not 0 <= target < model.num_classes:
        raise SystemExit(f"--target {target} out of range 0..{model.num_classes - 1}")
    options: dict[str, Any] = {}
    if args.iterations is not None:
        options["iterations"] = args.iterations
    if args.method == "opticam":
        options["progress"] = not args.quiet
    maps = explain(args.method, model, x, [target], **options)
    print(f"predicted: {pred} {model.categories[pred]} (p={probs[pred]:.3f})")
    print(f"explained: {target} {model.categories[target]} (p={probs[target]:.3f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(x[0].cpu(), maps[0, 0].cpu()).save(out)
    print(f"overlay written to {out}")
    if args.save_map:
        path = Path(args.save_map)
        if path.suffix == ".png":
            from PIL import Image

            Image.fromarray((maps[0, 0].cpu().numpy() * 255).round().astype("uint8")).save(path)
        else:
            torch.save(maps[0].cpu(), path)
        print(f"raw map written to {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .reproduce.notebooks import NotebookError, run_notebook

    try:
        path = run_notebook(
            args.notebook,
            parameters=_params(args.param),
            output_dir=args.out,
            profile=args.profile,
        )
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"executed notebook: {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce.notebooks import reproduce

    return reproduce(
        args.profile,
        out=args.out,
        only=args.only,
        build=not args.no_build,
        parameters=_params(args.param),
    )


def cmd_list(args: argparse.Namespace) -> int:
    from .methods import METHODS
    from .names import MODELS
    from .reproduce.notebooks import list_profiles, toc_notebooks

    print("methods (id, paper name, kind, needs a layer):")
    for spec in METHODS.values():
        layer = "layer" if spec.needs_layer else "-"
        print(f"  {spec.name:14s} {spec.paper_name:16s} {spec.kind:13s} {layer}")
    print("models:    ", " ".join(MODELS))
    print("datasets:   sample imagenet folder")
    print("profiles:  ", " ".join(list_profiles()))
    print("notebooks: ", " ".join(Path(p).stem for p in toc_notebooks()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .names import MODELS

    parser = argparse.ArgumentParser(
        prog="python -m paper_code",
        description="Opti-CAM reproduction: explain an image, run one notebook, or rebuild the book.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="saliency map of one image, written as an overlay PNG")
    p.add_argument("image", help="path of an image file (any format PIL reads)")
    p.add_argument(
        "--method", default="opticam", help="method id (python -m paper_code list shows them)"
    )
    p.add_argument("--model", default="efficientnet_lite0", choices=MODELS)
    p.add_argument("--weights", default=None, help="state-dict file instead of the default weights")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    p.add_argument("--iterations", type=int, default=None, help="Opti-CAM iterations (default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    p.add_argument("--out", default="overlay.png", help="overlay PNG to write")
    p.add_argument("--save-map", default=None, help="also save the raw map (.png or .pt)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("run", help="execute one notebook of the book with papermill")
    p.add_argument("notebook", help="notebook name (table1, fig2, ...) or path")
    p.add_argument("--profile", default="sample", help="profile name or YAML path")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p.add_argument("--out", default="_build/reproduce/notebooks", help="executed notebooks folder")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="execute every notebook, then build the book from them")
    p.add_argument("--profile", default="sample", help="profile name or YAML path")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p.add_argument(
        "--out", default=None, help="output folder (default: _build/reproduce/<profile>)"
    )
    p.add_argument("--only", nargs="+", default=None, help="only these notebooks")
    p.add_argument("--no-build", action="store_true", help="execute only; skip jupyter-book build")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("list", help="list methods, models, profiles and notebooks")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        # ImageLoadError and WeightsUnavailableError are RuntimeErrors with a full message.
        print(f"error: {e}", file=sys.stderr)
        return 2
