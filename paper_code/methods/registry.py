"""The registry of saliency methods: the single source of their ids, paper names, kinds and defaults.

Every method module registers its functions with :func:`register`; nothing here imports a method
module back (the dispatcher :func:`paper_code.methods.explain` lives in its own module), so there is no
import circle. Tables, notebooks and the command line read :data:`METHODS`.

A registered function has the signature ``fn(model, images, target, layer, **options) -> [B, 1, H, W]``
with ``images`` in [0, 1], ``target`` a callable ``target(logits, index) -> scores`` (see
:mod:`paper_code.methods.targets`) and ``layer`` the feature module (``None`` for methods that need
none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: The kinds of explainer, as the paper groups them.
KINDS = ("cam", "optimization", "perturbation", "gradient", "attention", "sanity")

#: Model families a method can run on.
FAMILIES = ("cnn", "vit")

MethodFn = Callable[..., Any]


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, for tables, notebooks and the command line.

    Attributes:
        name: the id used in code (``opticam``, ``gradcam``, ...).
        paper_name: the row label in the paper's tables (``Opti-CAM``, ``GradientShap``, ...).
        kind: one of :data:`KINDS`.
        needs_layer: whether the method reads a feature layer (CAMs and Opti-CAM do).
        fn: the function ``fn(model, images, target, layer, **options)``.
        defaults: the default options (documented in the function's docstring), for the record.
        families: model families it applies to (the paper runs Ablation-CAM on CNNs only).
        differentiable: whether it needs autograd (Max-Sensitivity then re-explains with grad on).
    """

    name: str
    paper_name: str
    kind: str
    needs_layer: bool
    fn: MethodFn
    defaults: Mapping[str, Any] = field(default_factory=dict)
    families: tuple[str, ...] = FAMILIES
    differentiable: bool = False

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


#: Registered methods, id -> spec, in registration order.
METHODS: dict[str, MethodSpec] = {}


def register(
    name: str,
    *,
    paper_name: str,
    kind: str,
    needs_layer: bool,
    defaults: Mapping[str, Any] | None = None,
    families: tuple[str, ...] = FAMILIES,
    differentiable: bool = False,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add ``fn`` to :data:`METHODS` under ``name`` with its metadata."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    bad = set(families) - set(FAMILIES)
    if bad:
        raise ValueError(f"unknown families {sorted(bad)}; valid: {', '.join(FAMILIES)}")

    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = MethodSpec(
            name=name,
            paper_name=paper_name,
            kind=kind,
            needs_layer=needs_layer,
            fn=fn,
            defaults=MappingProxyType(dict(defaults or {})),
            families=tuple(families),
            differentiable=differentiable,
        )
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``, or a clear error listing the valid ids."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        ) from None


def paper_names() -> dict[str, str]:
    """``{id: paper name}`` of every registered method."""
    return {n: s.paper_name for n, s in METHODS.items()}


def method_for_paper_name(paper_name: str) -> str | None:
    """The id whose paper name is ``paper_name`` (``None`` if no registered method has it)."""
    for n, s in METHODS.items():
        if s.paper_name == paper_name:
            return n
    return None
