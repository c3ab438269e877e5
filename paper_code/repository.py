"""Where the book and its sources live: one setting, every link derived from it.

The setting is ``repository.url`` in ``_config.yml`` (``https://github.com/<owner>/<repo>``);
the environment variable ``PAPER_CODE_REPOSITORY`` overrides it (forks, CI, tests). From it come:

- the repository and commit links (the book's repository button, provenance captions),
- the Binder and Colab launch links (``launch_buttons`` in ``_config.yml``),
- the GitHub Pages URL of the published book (``https://<owner>.github.io/<repo>/``),
- what the notebooks' set-up cell installs (``paper_code[book] @ git+<url>@<branch>``, or a
  local clone's folder).

``python -m paper_code urls`` prints them all.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from .layout import REPO_ROOT

__all__ = [
    "ENV_BRANCH",
    "ENV_REPOSITORY",
    "Links",
    "book_config",
    "branch",
    "commit_url",
    "links",
    "pip_requirement",
    "repository_url",
    "site_config",
]

#: Environment variable overriding ``_config.yml``'s ``repository.url``.
ENV_REPOSITORY = "PAPER_CODE_REPOSITORY"


#: Environment variable overriding ``_config.yml``'s ``repository.branch``.
ENV_BRANCH = "PAPER_CODE_BRANCH"


_GITHUB = re.compile(r"^https?://github\.com/(?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$")


def book_config(book_root: str | os.PathLike[str] = REPO_ROOT) -> dict[str, Any]:
    """``_config.yml`` of ``book_root`` as a dict."""
    return yaml.safe_load((Path(book_root) / "_config.yml").read_text()) or {}


def repository_url(config: Mapping[str, Any] | None = None) -> str:
    """The repository: ``$PAPER_CODE_REPOSITORY``, else ``_config.yml``'s ``repository.url``.

    A URL (``https://github.com/owner/repo``) or, for tests and offline use, a local folder."""
    env = os.environ.get(ENV_REPOSITORY, "").strip()
    if env:
        return env
    cfg = book_config() if config is None else config
    return str((cfg.get("repository") or {}).get("url") or "").strip()


def branch(config: Mapping[str, Any] | None = None) -> str:
    env = os.environ.get(ENV_BRANCH, "").strip()
    if env:
        return env
    cfg = book_config() if config is None else config
    return str((cfg.get("repository") or {}).get("branch") or "main")


def _is_local(url: str) -> bool:
    return bool(url) and (url.startswith(("/", "file:", ".", "~")) or Path(url).is_dir())


def pip_requirement(url: str, ref: str = "main", extra: str = "book") -> str:
    """What ``pip install`` needs to install ``paper_code[extra]`` from the repository ``url``.

    >>> pip_requirement("https://github.com/o/r", "main")
    'paper_code[book] @ git+https://github.com/o/r@main'
    >>> pip_requirement("/tmp/clone")
    '/tmp/clone[book]'
    """
    suffix = f"[{extra}]" if extra else ""
    if _is_local(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        return f"{Path(path).expanduser()}{suffix}"
    if url.startswith("git+"):
        url = url[4:]
    at = f"@{ref}" if ref else ""
    return f"paper_code{suffix} @ git+{url.removesuffix('/')}{at}"


class Links(dict):
    """Every link derived from the repository setting (a dict; missing ones are ``""``)."""

    def __str__(self) -> str:
        width = max(len(k) for k in self)
        return "\n".join(f"{k:<{width}}  {v or '-'}" for k, v in self.items())


def links(
    url: str | None = None,
    ref: str | None = None,
    notebook: str = "book/table1.ipynb",
    config: Mapping[str, Any] | None = None,
) -> Links:
    """The repository, Pages, Binder and Colab links for ``url`` (default: the setting).

    ``notebook``: the repository path used for the example Binder and Colab links."""
    cfg = book_config() if config is None and url is None else (config or {})
    url = repository_url(cfg) if url is None else url
    ref = ref or (branch(cfg) if cfg else "main")
    launch = (cfg.get("launch_buttons") or {}) if cfg else {}
    binderhub = str(launch.get("binderhub_url") or "https://mybinder.org").rstrip("/")
    colab = str(launch.get("colab_url") or "https://colab.research.google.com").rstrip("/")
    out = Links(
        repository=url,
        branch=ref,
        pages="",
        binder="",
        colab="",
        commit="",
        pip=pip_requirement(url, ref) if url else "",
    )
    m = _GITHUB.match(url)
    if m:
        owner, repo = m["owner"], m["repo"]
        out["repository"] = f"https://github.com/{owner}/{repo}"
        out["pip"] = pip_requirement(out["repository"], ref)
        host = f"{owner.lower()}.github.io"
        out["pages"] = f"https://{host}/" if repo.lower() == host else f"https://{host}/{repo}/"
        out["binder"] = f"{binderhub}/v2/gh/{owner}/{repo}/{ref}?urlpath=tree/{notebook}"
        out["colab"] = f"{colab}/github/{owner}/{repo}/blob/{ref}/{notebook}"
        out["commit"] = f"https://github.com/{owner}/{repo}/commit/<sha>"
    elif urlparse(url).scheme in ("http", "https"):
        out["binder"] = f"{binderhub}/v2/git/{url.replace(':', '%3A').replace('/', '%2F')}/{ref}"
        if urlparse(url).netloc.endswith("gitlab.com"):
            out["commit"] = f"{url.rstrip('/')}/-/commit/<sha>"
    return out


def commit_url(sha: str, url: str | None = None) -> str:
    """Web page of commit ``sha`` in the repository (``""`` when it has none: local folder,
    unknown host, unknown commit)."""
    sha = sha.split("+")[0].strip()
    if not re.fullmatch(r"[0-9a-f]{7,40}", sha):
        return ""
    template = links(url=url if url is not None else repository_url())["commit"]
    return template.replace("<sha>", sha) if template else ""


def site_config(
    config: Mapping[str, Any], url: str | None = None, ref: str | None = None
) -> dict[str, Any]:
    """``_config.yml`` with the repository setting applied: ``repository.url``, ``html.baseurl``
    (the Pages URL) and only the launch buttons and repository button that work for it (the theme
    warns, failing a ``-W`` build, on Colab or repository buttons for a non-GitHub URL)."""
    cfg = copy.deepcopy(dict(config))
    url = repository_url(cfg) if url is None else url
    ref = ref or branch(cfg)
    out = links(url=url, ref=ref, config=cfg)
    repo = cfg.setdefault("repository", {})
    html = cfg.setdefault("html", {})
    launch = cfg.setdefault("launch_buttons", {})
    repo["branch"] = ref
    if out["pages"]:  # GitHub
        repo["url"] = out["repository"]
        html["baseurl"] = out["pages"]
    else:
        # Local folder or another host: no repository/launch buttons (they would be broken links).
        repo.pop("url", None)
        html["use_repository_button"] = False
        html["use_issues_button"] = False
        html["use_edit_page_button"] = False
        for k in ("colab_url", "binderhub_url", "jupyterhub_url", "deepnote_url"):
            launch.pop(k, None)
    return cfg
