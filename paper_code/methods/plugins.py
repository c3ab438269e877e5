"""Saliency methods from outside the package: register your explainer, and it runs in the paper's
protocol beside the paper's methods (every table where its kind and model family fit, with the
same intervals, and a paired verdict against Opti-CAM).

Three ways in, one registry (:data:`paper_code.methods.METHODS`):

- in Python, :func:`register` as a decorator (``paper_code.register``);
- the ``plugins`` parameter of a profile or notebook (``-p plugins '[mypkg.cams]'``): every page
  imports those modules, whose import registers their methods (:func:`load_plugins`);
- an installed package's entry point in the group ``paper_code.methods``
  (``[project.entry-points."paper_code.methods"] mycam = "mypkg.cams"``), imported by
  :func:`load_plugins` wherever methods are looked up by the book and the command line.

A method is ``fn(model, images, target, layer, *, option=default, ...) -> [B, 1, H, W]`` in [0, 1]:
``images`` are ``[B, 3, H, W]`` in [0, 1] (the model standardizes inside), ``target`` a callable
``target(logits, index) -> scores`` (:mod:`paper_code.methods.targets`), ``layer`` the feature module
for methods that declare ``needs_layer=True`` (else ``None``). Its options are its keyword
parameters with their defaults, as for the built-in methods.

>>> import torch
>>> import paper_code as pc
>>> @pc.register("centre_blob", kind="perturbation", needs_layer=False)
... def centre_blob(model, images, target, layer=None, *, width=0.5):
...     h, w = images.shape[-2:]
...     ys = torch.linspace(-1, 1, h).view(h, 1)
...     xs = torch.linspace(-1, 1, w).view(1, w)
...     m = torch.exp(-(ys**2 + xs**2) / (2 * width**2))
...     return (m / m.max()).expand(images.shape[0], 1, h, w).clone()
>>> maps = pc.explain("centre_blob", pc.load_model("tiny"), torch.rand(2, 3, 224, 224), [0, 1])
>>> tuple(maps.shape), pc.methods.METHODS["centre_blob"].builtin
((2, 1, 224, 224), False)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from importlib import metadata

from .registry import FAMILIES, METHODS, MethodFn, register_spec

__all__ = ["ENTRY_POINT_GROUP", "PluginError", "load_plugins", "register"]

#: The entry-point group of installed plugin packages.
ENTRY_POINT_GROUP = "paper_code.methods"

_LOADED_MODULES: set[str] = set()
_ENTRY_POINTS_LOADED = False


class PluginError(RuntimeError):
    """A plugin that cannot be used: one line saying which and why."""


def _check_signature(name: str, fn: MethodFn) -> None:
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(positional) < 4 and not star:
        got = ", ".join(p.name for p in params)
        raise PluginError(
            f"method {name!r}: its function must take (model, images, target, layer, "
            f"**options); {fn.__qualname__} takes ({got})"
        )


def register(
    name: str,
    *,
    paper_name: str | None = None,
    kind: str = "cam",
    needs_layer: bool = True,
    families: Sequence[str] = FAMILIES,
    differentiable: bool = False,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add an explainer from outside the package to the registry.

    Args:
        name: its id (``explain(name, ...)``, the ``methods`` parameter, the rows' ``method``).
        paper_name: its label in the tables (default: ``name``); a label the paper's tables use
            would be taken for the paper's method, so it is refused.
        kind: ``"cam"``, ``"optimization"``, ``"perturbation"``, ``"gradient"`` or ``"attention"``.
        needs_layer: whether it reads a feature layer (it then gets the network's CAM layer).
        families: ``("cnn",)``, ``("vit",)`` or both: the networks it runs on.
        differentiable: whether it needs autograd (Max-Sensitivity re-explains with gradients on).

    Raises:
        PluginError: a name or label of a built-in method, or a function that does not take
            ``(model, images, target, layer, ...)``. The output is checked at every call
            (:func:`paper_code.explain`: ``[B, 1, H, W]`` of the images' size, in [0, 1]).
    """
    builtin = METHODS.get(name)
    if builtin is not None and builtin.builtin:
        raise PluginError(f"method name {name!r} clashes with the built-in method {name!r}")
    label = paper_name or name
    taken = {s.paper_name: s.name for s in METHODS.values() if s.builtin}
    if label in taken:
        raise PluginError(
            f"method {name!r}: its table label {label!r} is the built-in {taken[label]!r}'s"
        )

    def deco(fn: MethodFn) -> MethodFn:
        _check_signature(name, fn)
        return register_spec(
            name, paper_name=label, kind=kind, needs_layer=needs_layer, families=tuple(families),
            differentiable=differentiable, builtin=False,
        )(fn)  # fmt: skip

    return deco


def load_plugins(
    modules: Sequence[str] | str | None = None, entry_points: bool = True
) -> list[str]:
    """Import plugin ``modules`` (dotted names; their import registers their methods) and, once
    per process, the installed packages' entry points of :data:`ENTRY_POINT_GROUP`. Returns the
    ids of the methods registered from outside the package so far.

    Raises:
        PluginError: a module or entry point that does not import (one line, with the cause).
    """
    global _ENTRY_POINTS_LOADED
    if isinstance(modules, str):
        modules = [modules]
    for mod in modules or ():
        if mod in _LOADED_MODULES:
            continue
        try:
            importlib.import_module(mod)
        except Exception as e:  # any failure of a user's module
            raise PluginError(
                f"plugin module {mod!r} could not be imported: {type(e).__name__}: {e}"
            ) from None
        _LOADED_MODULES.add(mod)
    if entry_points and not _ENTRY_POINTS_LOADED:
        _ENTRY_POINTS_LOADED = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as e:
                raise PluginError(
                    f"plugin entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} "
                    f"could not be loaded: {type(e).__name__}: {e}"
                ) from None
    return [n for n, s in METHODS.items() if not s.builtin]
