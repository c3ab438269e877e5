"""Publish the book: build the site of a profile from executed notebooks and deploy it (GitHub
Pages). ``python -m paper_code.book.publish build --profile sample`` and ``deploy --dry-run``;
the links all come from the one repository setting (:mod:`paper_code.repository`).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from ..layout import REPO_ROOT
from ..repository import links


def build(
    profile: str = "sample",
    executed: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    book_root: str | os.PathLike[str] = REPO_ROOT,
) -> Path:
    """The workflow's build step: the site of ``profile``, from already executed notebooks.

    ``executed``: a folder of executed ``<name>.ipynb`` (committed, or downloaded from a GPU run's
    artifact); they are copied to ``<out>/notebooks`` and nothing is executed. Without it the
    profile is executed here (CPU profiles only: ``sample``, ``smoke``). Returns the HTML folder.
    Raises ``RuntimeError`` when a notebook failed or the build had a warning."""

    from .reproduce import reproduce

    out = Path(out or Path("_build") / "publish" / str(profile)).resolve()
    if executed:
        executed = Path(executed)
        found = sorted(executed.glob("*.ipynb"))
        if not found:
            raise FileNotFoundError(f"no executed notebooks (*.ipynb) in {executed}")
        (out / "notebooks").mkdir(parents=True, exist_ok=True)
        for nb in found:
            shutil.copy2(nb, out / "notebooks" / nb.name)
    status = reproduce(profile, out=out, book_root=book_root, execute=not executed, progress=False)
    html = out / "_build" / "html"
    if status != 0 or not (html / "index.html").exists():
        raise RuntimeError(f"the book of profile {profile!r} did not build cleanly (see above)")
    return html


def deploy_dry_run(html: str | os.PathLike[str], limit_bytes: int = 1024**3) -> dict[str, Any]:
    """What ``actions/upload-pages-artifact`` + ``actions/deploy-pages`` would publish, checked
    without publishing: the same tar (links dereferenced, no ``.git``/``.github``), an
    ``index.html`` at its top, no link out of the folder, under GitHub Pages' 1 GB. Returns a
    summary (files, bytes, tar path)."""
    import subprocess
    import tempfile

    html = Path(html).resolve()
    if not (html / "index.html").is_file():
        raise FileNotFoundError(f"{html}/index.html: not a built site")
    for p in html.rglob("*"):
        if p.is_symlink() and not p.resolve().is_relative_to(html):
            raise ValueError(f"{p} links outside the site")
    tar = Path(tempfile.mkdtemp(prefix="pages-")) / "artifact.tar"
    subprocess.run(
        ["tar", "--dereference", "--hard-dereference", "--exclude=.git", "--exclude=.github",
         "-cf", str(tar), "-C", str(html), "."],
        check=True,
    )  # fmt: skip
    size = tar.stat().st_size
    if size > limit_bytes:
        raise ValueError(f"site is {size / 2**20:.0f} MiB, over GitHub Pages' limit")
    names = subprocess.run(
        ["tar", "-tf", str(tar)], capture_output=True, text=True, check=True
    ).stdout.split()
    if "./index.html" not in names:
        raise ValueError("index.html is not at the top of the artifact")
    return {"files": sum(1 for n in names if not n.endswith("/")), "bytes": size, "tar": str(tar)}


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        prog="python -m paper_code.book.publish",
        description="Build the book for GitHub Pages and check what would be deployed.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("urls", help="print the links derived from the repository setting")
    p = sub.add_parser("build", help="build the site from executed notebooks of a profile")
    p.add_argument("--profile", default="sample")
    p.add_argument("--executed", default=None, help="folder of executed notebooks (no execution)")
    p.add_argument("--out", default=None, help="output folder (default _build/publish/<profile>)")
    p = sub.add_parser("deploy", help="check the Pages artifact of a built site")
    p.add_argument("html", help="the built site (<out>/_build/html)")
    p.add_argument("--dry-run", action="store_true", required=True, help="(only mode here)")
    args = parser.parse_args(argv)
    if args.command == "urls":
        print(links())
    elif args.command == "build":
        executed = args.executed or None
        if executed and not Path(executed).is_dir():
            print(f"no folder {executed}: executing the profile instead")
            executed = None
        html = build(args.profile, executed, args.out)
        print(f"site: {html / 'index.html'}")
    else:
        info = deploy_dry_run(args.html)
        print(f"dry run: {info['files']} files, {info['bytes'] / 2**20:.1f} MiB -> {info['tar']}")
        print(
            f"would be published at {links()['pages'] or '(no GitHub Pages URL for this setting)'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
