"""Sphinx extension for the book: serve MathJax 3 from the ``django-static-mathjax`` package.

Math then renders with no CDN (offline builds, air-gapped readers, reproducible pages). Enable it
in ``_config.yml``::

    sphinx:
      extra_extensions: [paper_code.sphinxext]
      config:
        mathjax_path: mathjax/tex-chtml.js

The MathJax ``es5`` folder (about 24 MB) is copied into ``<html>/_static/mathjax`` when the build
finishes; nothing is committed to the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

MATHJAX_PATH = "mathjax/tex-chtml.js"


def mathjax_es5_dir() -> Path:
    """The ``es5`` folder of the installed MathJax 3 (from ``django-static-mathjax``)."""
    try:
        import mathjax  # django-static-mathjax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "MathJax is served locally from the 'django-static-mathjax' package: "
            "pip install 'paper_code[book]'"
        ) from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").exists():
        raise RuntimeError(f"MathJax es5 build not found in {es5}")
    return es5


def copy_mathjax(static_dir: Path) -> Path:
    """Copy MathJax's es5 folder to ``static_dir/mathjax`` (skipped when already there)."""
    target = static_dir / "mathjax"
    if not (target / "tex-chtml.js").exists():
        shutil.copytree(mathjax_es5_dir(), target, dirs_exist_ok=True)
    return target


def _build_finished(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static")


def _thebe_enabled(app: Any) -> bool:
    options = getattr(app.config, "html_theme_options", None) or {}
    return bool((options.get("launch_buttons") or {}).get("thebe"))


def _is_thebe(js: Any) -> bool:
    name = str(getattr(js, "filename", "") or "")
    body = str((getattr(js, "attributes", None) or {}).get("body", ""))
    return "thebe" in name or "THEBE_JS_URL" in body


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    """Drop duplicated scripts, and sphinx-thebe's scripts when thebe is off.

    jupyter-book always loads sphinx-thebe; its inline ``const THEBE_JS_URL = ...`` is added twice
    (a JavaScript error: "Identifier 'THEBE_JS_URL' has already been declared") and names a CDN.
    """
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: list[Any] = []
    for js in scripts:
        if js in seen or (not _thebe_enabled(app) and _is_thebe(js)):
            continue
        seen.append(js)
    context["script_files"] = seen


def setup(app: Any) -> dict[str, Any]:
    mathjax_es5_dir()  # fail early with a clear message
    app.connect("build-finished", _build_finished)
    app.connect("html-page-context", _page_context, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
