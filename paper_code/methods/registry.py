"""The registry of saliency methods: the single source of their ids, paper names and kinds.

A method's default options are those of its function's signature, read from it
(:attr:`MethodSpec.defaults`): stated once, where they are used.

Every method module registers its functions with :func:`register`; nothing here imports a method
module back (the dispatcher :func:`paper_code.methods.explain` lives in its own module), so there is no
import circle. Tables, notebooks and the command line read :data:`METHODS`.

A registered function has the signature ``fn(model, images, target, layer, **options) -> [B, 1, H, W]``
with ``images`` in [0, 1], ``target`` a callable ``target(logits, index) -> scores`` (see
:mod:`paper_code.methods.targets`) and ``layer`` the feature module (``None`` for methods that need
none).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
        families: model families it applies to (the paper runs Ablation-CAM on CNNs only).
        differentiable: whether it needs autograd (Max-Sensitivity then re-explains with grad on).
        options_of: where ``fn`` passes its ``**options`` (e.g. Extremal Perturbation's
            optimizer), whose keyword defaults are then the method's too.
        builtin: ``False`` for a method registered from outside the package
            (:func:`paper_code.methods.plugins.register`).
    """

    name: str
    paper_name: str
    kind: str
    needs_layer: bool
    fn: MethodFn
    families: tuple[str, ...] = FAMILIES
    differentiable: bool = False
    options_of: MethodFn | None = None
    builtin: bool = True

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The method's options and their defaults, read from its signature (after ``model,
        images, target, layer``) and from that of :attr:`options_of`."""
        out: dict[str, Any] = {}
        for fn in (self.fn, self.options_of):
            if fn is None:
                continue
            params = list(inspect.signature(fn).parameters.values())
            skip = 4 if fn is self.fn else 3  # the optimizer takes (model, images, target)
            for q in params[skip:]:
                if q.kind in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD) and q.default is not q.empty:
                    out.setdefault(q.name, q.default)
        return MappingProxyType(out)

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


#: Registered methods, id -> spec, in registration order.
METHODS: dict[str, MethodSpec] = {}


def register_spec(
    name: str,
    *,
    paper_name: str,
    kind: str,
    needs_layer: bool,
    families: tuple[str, ...] = FAMILIES,
    differentiable: bool = False,
    options_of: MethodFn | None = None,
    builtin: bool = True,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: add ``fn`` to :data:`METHODS` under ``name`` with its metadata (the package's
    methods use :func:`register`; methods from outside, :func:`paper_code.methods.plugins.register`)."""
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
            families=tuple(families),
            differentiable=differentiable,
            options_of=options_of,
            builtin=builtin,
        )
        return fn

    return deco


def register(
    name: str,
    *,
    paper_name: str,
    kind: str,
    needs_layer: bool,
    families: tuple[str, ...] = FAMILIES,
    differentiable: bool = False,
    options_of: MethodFn | None = None,
) -> Callable[[MethodFn], MethodFn]:
    """Decorator of the package's own methods: add ``fn`` to :data:`METHODS` (see
    :func:`register_spec`)."""
    return register_spec(
        name, paper_name=paper_name, kind=kind, needs_layer=needs_layer, families=families,
        differentiable=differentiable, options_of=options_of,
    )  # fmt: skip


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``, or a clear error listing the valid ids."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}"
        ) from None


class PaperNames(Mapping[str, str]):
    """``{id: paper name}`` of every registered method, kept current as methods are registered
    (methods from outside the package included)."""

    def __getitem__(self, name: str) -> str:
        return METHODS[name].paper_name

    def __iter__(self):
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


def paper_names() -> dict[str, str]:
    """``{id: paper name}`` of every registered method."""
    return {n: s.paper_name for n, s in METHODS.items()}


def method_for_paper_name(paper_name: str) -> str | None:
    """The id whose paper name is ``paper_name`` (``None`` if no registered method has it)."""
    for n, s in METHODS.items():
        if s.paper_name == paper_name:
            return n
    return None
