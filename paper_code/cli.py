"""Command line: ``python -m paper_code {explain,evaluate,run,reproduce,rehearse,finetune,urls,list}``."""

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

    spec = get_method(args.method)
    options = _params(args.option)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        valid = ", ".join(spec.defaults) or "none"
        raise ValueError(f"{args.method} has no option {', '.join(unknown)}; its options: {valid}")
    model = load_model(args.model, weights=args.weights, device=args.device)
    image = open_rgb(args.image)
    x = model.transform(image)[None].to(args.device)
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    pred = int(probs.argmax())
    target = pred if args.target is None else args.target
    if not 0 <= target < model.num_classes:
        raise SystemExit(f"--target {target} out of range 0..{model.num_classes - 1}")
    if "progress" in spec.defaults:
        options.setdefault("progress", not args.quiet)
    try:
        maps = explain(args.method, model, x, [target], **options)
    except TypeError as e:  # a value of the wrong type for an option
        raise ValueError(f"{args.method}: {e}") from None
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


def _launch(args: argparse.Namespace, argv: list[str] | None) -> int | None:
    """``--nproc N`` (N > 1): rerun this command in N processes under torchrun."""
    if (args.nproc or 1) <= 1:
        return None
    from .experiments import distributed

    if distributed.is_distributed():
        raise ValueError("--nproc is for the launching command, not inside torchrun")
    argv = list(sys.argv[1:] if argv is None else argv)
    return distributed.launch(args.nproc, distributed.strip_option(argv, "--nproc"))


def cmd_run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from .book.runner import NotebookError, run_notebook
    from .experiments import distributed

    launched = _launch(args, argv)
    if launched is not None:
        return launched
    # Under torchrun, rank r > 0 writes its executed notebook under <out>/ranks/rank<r>; rank 0's
    # is the one the book uses.
    out = distributed.rank_dir(args.out)
    with distributed.serve_store(), distributed.notebook_scope(Path(args.notebook).stem):
        try:
            path = run_notebook(
                args.notebook,
                parameters=_params(args.param),
                output_dir=out,
                profile=args.profile,
            )
        except NotebookError as e:
            distributed.abort(str(e))  # the other ranks' barriers fail instead of waiting
            print(f"error: {e}", file=sys.stderr)
            return 1
    print(f"executed notebook: {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    from .book.reproduce import reproduce
    from .experiments import distributed

    launched = _launch(args, argv)
    if launched is not None:
        return launched
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs > 1 and (args.nproc or 1) > 1:
        raise ValueError(
            "--jobs and --nproc do not combine: --nproc shards every notebook's "
            "images over processes, --jobs runs several notebooks at once"
        )
    if distributed.is_distributed():
        # Every rank executes the notebooks on its shard; rank 0 then builds the site from its
        # executed notebooks (the book's), the others stop.
        with distributed.serve_store():
            status = distributed.run_notebooks(
                args.profile, out=args.out, only=args.only, parameters=_params(args.param)
            )
            if distributed.rank() > 0:
                return status
        return max(
            status,
            reproduce(
                args.profile,
                out=args.out,
                only=args.only,
                build=not args.no_build,
                parameters=_params(args.param),
                execute=False,
            ),
        )
    return reproduce(
        args.profile,
        out=args.out,
        only=args.only,
        build=not args.no_build,
        parameters=_params(args.param),
        jobs=args.jobs,
    )


def cmd_rehearse(args: argparse.Namespace) -> int:
    from .book.rehearsal import rehearse

    return rehearse(
        out=args.out,
        root=args.root,
        parameters=_params(args.param),
        only=args.only,
        build=not args.no_build,
        jobs=args.jobs,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .experiments.evaluate import evaluate

    options: dict[str, dict[str, Any]] = {}
    for key, value in args.option or []:
        method, dot, name = key.partition(".")
        if not dot:
            raise ValueError(f"--option {key}: write METHOD.NAME, e.g. opticam.iterations")
        options.setdefault(method, {})[name] = _parse_value(value)
    baselines = args.baselines
    if "," in baselines:
        baselines = [b for b in baselines.split(",") if b]
    result = evaluate(
        args.method,
        args.model,
        args.data,
        out=args.out,
        metrics=args.metrics,
        baselines=baselines,
        n_images=args.n_images,
        weights=args.weights,
        layer=args.layer,
        device=args.device,
        batch_size=args.batch_size,
        method_options=options,
        id_step=args.id_step,
        progress=not args.quiet,
    )
    print(result.markdown)
    for what, path in result.files.items():
        print(f"{what}: {path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneConfig, finetune

    options = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    options["progress"] = not options.pop("no_progress")
    finetune(FinetuneConfig(**options))
    return 0


def cmd_urls(args: argparse.Namespace) -> int:
    from .repository import links

    print(links(url=args.repository, notebook=args.notebook))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .book.profiles import list_profiles
    from .book.toc import toc_notebooks
    from .methods import METHODS
    from .names import MODELS

    print("methods (id, paper name, kind, needs a layer):")
    for spec in METHODS.values():
        layer = "layer" if spec.needs_layer else "-"
        print(f"  {spec.name:14s} {spec.paper_name:16s} {spec.kind:13s} {layer}")
        if args.options and spec.defaults:
            print("      " + ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items()))
    print("models:    ", " ".join(MODELS))
    from .data import DATASETS

    print("datasets:  ", " ".join(DATASETS))
    print("profiles:  ", " ".join(list_profiles()))
    print("notebooks: ", " ".join(Path(p).stem for p in toc_notebooks()))
    return 0


NPROC_HELP = (
    "run in N processes on this node under torchrun (each rank computes every N-th image, one GPU "
    "per rank with -p device cuda; rank 0 renders); for several nodes run torchrun yourself"
)


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
    p.add_argument(
        "--model",
        default="efficientnet_lite0",
        help=f"one of {', '.join(MODELS)}, or timm:<model> / hf:<repository or folder>",
    )
    p.add_argument("--weights", default=None, help="state-dict file instead of the default weights")
    p.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    p.add_argument(
        "-o",
        "--option",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="an option of the method (python -m paper_code list --options shows each method's, "
        "with its default), e.g. -o iterations 50 for Opti-CAM",
    )
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
    p.add_argument("--nproc", type=int, default=None, help=NPROC_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reproduce", help="execute every notebook, then build the book from them")
    p.add_argument("--profile", default="sample", help="profile name or YAML path")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p.add_argument(
        "--out", default=None, help="output folder (default: _build/reproduce/<profile>)"
    )
    p.add_argument("--only", nargs="+", default=None, help="only these notebooks")
    p.add_argument("--no-build", action="store_true", help="execute only; skip jupyter-book build")
    p.add_argument("--nproc", type=int, default=None, help=NPROC_HELP)
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run up to N notebooks at once, each in its own process with cores/N threads "
        "(their output goes to <out>/logs/); for many-core CPUs",
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "rehearse",
        help="every page of the GPU profiles on ResNet50, VGG16-BN, ViT-B and DeiT-B with random "
        "weights, on a synthetic ILSVRC2012 folder or yours: check the path before the GPU hours",
        description="Writes random weights files of the four networks and (without --root) a "
        "synthetic folder in the ILSVRC2012 layout, then runs the 'rehearsal' profile (1 image, "
        "2 Opti-CAM iterations, CPU) and builds its site. The numbers mean nothing.",
    )
    p.add_argument(
        "--root", default=None, help="your ILSVRC2012 val folder (default: a synthetic one)"
    )
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p.add_argument(
        "--out", default=None, help="output folder (default: _build/reproduce/rehearsal)"
    )
    p.add_argument("--only", nargs="+", default=None, help="only these notebooks")
    p.add_argument("--no-build", action="store_true", help="execute only; skip jupyter-book build")
    p.add_argument("--jobs", type=int, default=1, help="notebooks at once (see reproduce)")
    p.set_defaults(func=cmd_rehearse)

    p = sub.add_parser(
        "evaluate",
        help="your method(s) beside the paper's baselines on your images, with the paper's metrics",
        description="AD/AG/AI, insertion/deletion and (where the images have boxes) localization "
        "of the given methods and the paper's baselines, with 95%% bootstrap intervals and the "
        "paired difference of each method with Opti-CAM; writes a CSV, a Markdown table and a "
        "figure; a rerun resumes.",
    )
    p.add_argument(
        "--method",
        action="append",
        required=True,
        help="a method id, or module:function (repeat for several)",
    )
    p.add_argument("--model", default="efficientnet_lite0", help="network (timm:/hf: too)")
    p.add_argument("--weights", default=None, help="weights file of the network")
    p.add_argument(
        "--layer", default=None, help="layer of the CAM methods (dotted name; default: the paper's)"
    )
    p.add_argument("--data", default="sample", help="'sample' or a folder of images")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["classification", "insertion_deletion", "localization"],
        choices=["classification", "insertion_deletion", "localization"],
    )
    p.add_argument(
        "--baselines",
        default="cams",
        help="cams (the CAM baselines and Opti-CAM), paper (all of Table 1), none (Opti-CAM "
        "only), or a comma-separated list of ids",
    )
    p.add_argument("--n-images", type=int, default=None, help="the first N images only")
    p.add_argument("--out", default="_build/evaluate", help="output folder (resumable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", default=None, help="images per batch (or auto)")
    p.add_argument("--id-step", type=int, default=224, help="insertion/deletion pixels per step")
    p.add_argument(
        "-o", "--option", nargs=2, action="append", metavar=("METHOD.NAME", "VALUE"),
        help="an option of a method, e.g. -o opticam.iterations 50",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "finetune",
        help="fine-tune resnet50/vgg16_bn on Chest X-ray or Kvasir (the paper's App. E.2 recipe)",
        description="Stage 1: new final layer on the frozen backbone; stage 2: whole network, "
        "SGD momentum 0.9, lr 1e-5, 50 epochs. Rerun the same command to resume.",
    )
    p.add_argument("--dataset", required=True, choices=("chestxray", "kvasir"))
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--root", required=True, help="dataset folder (chest_xray/ or Kvasir v2)")
    p.add_argument("--out", default="ckpt", help="checkpoints, CSV log, summary (default ckpt)")
    p.add_argument("--weights", default=None, help="ImageNet weights file (default: torchvision's)")
    p.add_argument("--stage1-epochs", type=int, default=10, help="default 10 (paper: not given)")
    p.add_argument(
        "--stage1-optimizer", default="sgd", choices=("sgd", "adam"), help="default sgd (m=0.9)"
    )
    p.add_argument(
        "--stage1-lr",
        type=float,
        default=None,
        help="default: the paper's (1e-3; Kvasir 1e-4/5e-3)",
    )
    p.add_argument("--stage2-epochs", type=int, default=50, help="default 50 (paper)")
    p.add_argument("--stage2-lr", type=float, default=1e-5, help="default 1e-5 (paper)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (paper 0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    p.add_argument("--batch-size", type=int, default=32, help="default 32 (paper: not given)")
    p.add_argument("--augment", default="none", choices=("none", "flip", "crop-flip"))
    p.add_argument(
        "--select", default="last", choices=("last", "best"), help="exported model (default last)"
    )
    p.add_argument("--seed", type=int, default=0, help="head init, data order, augmentation")
    p.add_argument("--split-seed", type=int, default=0, help="Kvasir split seed (default 0)")
    p.add_argument("--split-file", default=None, help="Kvasir split JSON (default in --out)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (default 4)")
    p.add_argument("--max-batches", type=int, default=None, help="batches per epoch (smoke runs)")
    p.add_argument("--validate", default="header", choices=("header", "full", "none"))
    p.add_argument("--restart", action="store_true", help="ignore a resume checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "urls", help="the repository, GitHub Pages, Binder and Colab links of the one setting"
    )
    p.add_argument(
        "--repository",
        default=None,
        help="repository URL (default: $PAPER_CODE_REPOSITORY, else _config.yml repository.url)",
    )
    p.add_argument("--notebook", default="book/table1.ipynb", help="notebook of the launch links")
    p.set_defaults(func=cmd_urls)

    p = sub.add_parser("list", help="list methods, models, profiles and notebooks")
    p.add_argument("--options", action="store_true", help="each method's options and defaults")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func in (cmd_run, cmd_reproduce):
            return int(args.func(args, argv) or 0)
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        # ImageLoadError and WeightsUnavailableError are RuntimeErrors with a full message.
        print(f"error: {e}", file=sys.stderr)
        return 2
