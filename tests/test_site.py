"""Browser test of the built book: build it from smoke-executed notebooks, serve it on 127.0.0.1 and
check every page in headless Chromium (Debian's ``chromium`` package, driven by Playwright).

Checked on every page: it loads with no JavaScript error, requests nothing outside the site (so math,
scripts and fonts work offline), has no raw TeX left (``\\(``) and no traceback or error output.
Table pages must also show a table, and table and figure pages at least one image that actually decoded; pages
with math must have MathJax output (``mjx-container``); every same-site link must answer HTTP 200.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from paper_code.book.publish import deploy_dry_run
from paper_code.book.toc import toc_files, toc_notebooks
from paper_code.layout import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian chromium not installed (apt-get install -y chromium)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def html_dir(smoke_book: Path) -> Path:
    """The book built from the session's smoke-executed notebooks (``smoke_book`` in conftest.py:
    ``reproduce``, which the publishing workflow's build step runs too).

    Set ``PAPER_CODE_SITE`` to an already built ``_build/html`` folder to test it instead."""
    prebuilt = os.environ.get("PAPER_CODE_SITE")
    html = Path(prebuilt) if prebuilt else smoke_book / "_build" / "html"
    assert (html / "index.html").exists(), f"no site in {html}"
    return html


@pytest.fixture(scope="module")
def site(html_dir: Path) -> Iterator[str]:
    """The built book served on 127.0.0.1; yields the base URL."""
    html = html_dir
    handler = functools.partial(_Quiet, directory=str(html))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


PAGES = [f"{entry}.html" for entry in toc_files()]
NOTEBOOK_PAGES = {f"book/{p.stem}.html" for p in toc_notebooks()}


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("page_path", PAGES)
def test_page(site: str, html_dir: Path, browser: object, page_path: str) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    external: list[str] = []
    js_errors: list[str] = []
    page.on(
        "request",
        lambda r: (
            external.append(r.url)
            if urlparse(r.url).scheme in ("http", "https") and not r.url.startswith(site)
            else None
        ),
    )
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    response = page.goto(urljoin(site, page_path), wait_until="networkidle")
    assert response is not None and response.status == 200, f"{page_path}: HTTP {response}"

    # Math: MathJax typeset every formula (it runs asynchronously after load).
    if page.locator(".math").count():
        page.wait_for_selector("mjx-container", state="attached", timeout=20_000)
        page.wait_for_function(
            "() => !window.MathJax || !MathJax.startup || MathJax.startup.promise", timeout=20_000
        )
        page.evaluate("() => window.MathJax && MathJax.startup.promise")
        assert page.locator("mjx-container").count() > 0, f"{page_path}: math not rendered"
    text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
    assert "\\(" not in text and "\\[" not in text, f"{page_path}: raw TeX left in the page"
    if page_path == "book/intro.html":
        assert page.locator("mjx-container").count() >= 4, "intro: the equations did not render"

    # No traceback or error output.
    assert "Traceback (most recent call last)" not in text, f"{page_path}: traceback shown"
    assert page.locator(".output.traceback, .output.error").count() == 0, f"{page_path}: error cell"
    for stderr in page.locator(".output.stderr").all_inner_texts():
        assert "Traceback" not in stderr and "Error" not in stderr, f"{page_path}: {stderr[:300]}"

    # Table pages show their table; table and figure pages show a decoded image.
    if page_path in NOTEBOOK_PAGES:
        if page_path.startswith("book/table"):
            assert page.locator("main table").count() > 0, f"{page_path}: no table"
        sizes = page.eval_on_selector_all(
            "main img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
        )
        assert any(ok and w > 0 and h > 0 for ok, w, h in sizes), f"{page_path}: no image {sizes}"
    elif page_path == "book/intro.html":
        widths = page.eval_on_selector_all("main img", "els => els.map(e => e.naturalWidth)")
        assert widths and all(w > 0 for w in widths), "intro: schematic did not load"

    # Every same-site link resolves.
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
    internal = {urldefrag(h)[0] for h in hrefs if h.startswith(site)}
    broken = [h for h in sorted(internal) if _status(h) != 200]
    assert not broken, f"{page_path}: broken links {broken}"

    # No absolute path of the machine that built it (papermill's injected cell, printed paths).
    html_text = page.content()
    for local in (str(REPO_ROOT), str(html_dir.parent.parent)):  # the checkout, the output folder
        assert local + "/" not in html_text, f"{page_path}: shows the local path {local}"
    assert "injected-parameters" not in html_text, f"{page_path}: papermill's cell is shown"

    assert not js_errors, f"{page_path}: JavaScript errors {js_errors}"
    assert not external, f"{page_path}: requests outside the site {external}"
    page.close()


#: Every table and figure of a page: its width against its container's.
_TOO_WIDE = """() => {
  const out = [];
  for (const el of document.querySelectorAll("main table, main img, main figure")) {
    const box = el.parentElement.closest(
      ".cell_output, .output, figure, .pst-scrollable-table-container, .table-wrapper, article");
    if (!box) continue;
    const w = el.getBoundingClientRect().width, room = box.clientWidth;
    if (w > room + 1) out.push(`${el.tagName.toLowerCase()} ${Math.round(w)} px in ${Math.round(room)} px`);
  }
  return out;
}"""


@pytest.mark.parametrize("page_path", PAGES)
def test_page_fits(site: str, browser: object, page_path: str) -> None:
    """At 1280 px every table and figure fits its container; at 400 px (a phone) nothing makes
    the page scroll sideways."""
    for width, height in ((1280, 900), (400, 850)):
        page = browser.new_page(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        page.goto(urljoin(site, page_path), wait_until="networkidle")
        if width == 1280:
            too_wide = page.evaluate(_TOO_WIDE)
            assert not too_wide, f"{page_path} at 1280 px: wider than their container: {too_wide}"
        scroll = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert scroll[0] <= scroll[1] + 1, f"{page_path} at {width} px scrolls sideways: {scroll}"
        page.close()


def test_deploy_dry_run(html_dir: Path) -> None:
    """The workflow's deploy step, without deploying: the Pages artifact it would upload."""
    info = deploy_dry_run(html_dir)
    assert info["files"] > len(PAGES) and info["bytes"] < 1024**3
    Path(info["tar"]).unlink()


def test_index_redirects_to_intro(site: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(site, wait_until="networkidle")
    assert page.url.endswith("book/intro.html")
    page.close()


def test_mathjax_served_locally(site: str) -> None:
    assert _status(urljoin(site, "_static/mathjax/tex-chtml.js")) == 200
    assert Path(urlparse(site).path)  # keep the fixture alive


def test_workflow_build_step_from_executed_notebooks(smoke_book: Path, tmp_path: Path) -> None:
    """The publishing workflow's build step renders the site from executed notebooks (as committed
    or downloaded from a GPU run) without executing anything."""
    from paper_code.book.publish import build as publish_build

    html = publish_build("smoke", executed=smoke_book / "notebooks", out=tmp_path / "pub")
    assert html == tmp_path / "pub" / "_build" / "html"
    assert (html / "index.html").exists() and (html / "book" / "table1.html").exists()
