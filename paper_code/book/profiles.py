"""Profiles: the parameters of a whole run of the book (``paper_code/book/profiles/*.yml``).

A profile names its parameters (every page takes those it declares), per-page overrides
(``notebooks:``), the pages it skips with the reason (``skip``, ``skip_reasons``) and the times
the project measured (``expected_seconds``); ``extends:`` inherits from another profile.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: The bundled profiles.
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

#: Keys every profile must define under ``parameters``.
REQUIRED_PARAMETERS = (
    "models",
    "weights",
    "cam_layers",
    "plugins",
    "dataset",
    "root",
    "n_images",
    "methods",
    "iterations",
    "device",
    "batch_size",
    "seed",
    "output_dir",
    "cache_dir",
)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def list_profiles() -> list[str]:
    """Names of the bundled profiles."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yml"))


def load_profile(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A profile as a dict ``{name, description, parameters, notebooks}``.

    ``name_or_path``: a bundled profile name (``sample``, ``smoke``, ``imagenet-1k``, ``imagenet``)
    or the path of a YAML file. ``extends: <profile>`` in a file inherits from another profile
    (names or paths relative to the file); ``notebooks: {<name>: {...}}`` holds per-notebook
    parameter overrides.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yml", ".yaml") or path.exists()):
        path = PROFILES_DIR / f"{name_or_path}.yml"
        if not path.exists():
            raise FileNotFoundError(
                f"unknown profile {str(name_or_path)!r}: not a file, and not one of "
                f"{', '.join(list_profiles())}"
            )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile must be a YAML mapping")
    data.setdefault("name", path.stem)
    data.setdefault("description", "")
    parent = data.pop("extends", None)
    if parent:
        parent_path = path.parent / str(parent)
        base = load_profile(parent_path if parent_path.exists() else parent)
        base.pop("source", None)
        data = _merge(base, data)
    data["parameters"] = dict(data.get("parameters") or {})
    data["notebooks"] = dict(data.get("notebooks") or {})
    data["source"] = str(path)
    return data


def profile_parameters(profile: Mapping[str, Any], notebook: str | None = None) -> dict[str, Any]:
    """The profile's parameters with the overrides of ``notebook`` applied."""
    params = dict(profile.get("parameters") or {})
    if notebook is not None:
        params.update((profile.get("notebooks") or {}).get(notebook) or {})
    params["profile"] = profile.get("name", "custom")
    return params


def resolve_run(
    profile: str | os.PathLike[str] | Mapping[str, Any],
    out: str | os.PathLike[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """The profile of a run with ``parameters`` applied, and its output folder: ``out`` overrides
    the profile's ``output_dir`` (and its ``cache_dir``, unless ``parameters`` sets one).

    ``parameters`` (the command line's ``-p``) win over the whole profile, its per-notebook
    overrides included: ``-p id_step 224`` reaches Table 3 even where the profile sets its own."""
    prof = dict(profile) if isinstance(profile, Mapping) else load_profile(profile)
    prof["parameters"] = {**prof.get("parameters", {}), **(parameters or {})}
    prof["notebooks"] = {
        name: {k: v for k, v in (over or {}).items() if k not in (parameters or {})}
        for name, over in (prof.get("notebooks") or {}).items()
    }
    params = prof["parameters"]
    if out is not None:
        params["output_dir"] = str(out)
        if not (parameters and "cache_dir" in parameters):
            params["cache_dir"] = str(Path(out) / "cache")
    out_dir = Path(params.get("output_dir") or "_build/reproduce").resolve()
    params["output_dir"] = str(out_dir)
    return prof, out_dir
