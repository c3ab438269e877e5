"""The network's forward passes of the evaluation protocols (insertion/deletion, AD/AG/AI, AOPC,
ADCC, Score-CAM), optionally under ``torch.compile`` with static shapes.

After Opti-CAM, these plain forward passes dominate the cost of the full protocol (about 50,000
per 1,000 images for insertion/deletion alone). :func:`evaluation_forward` returns the model itself
(eager, the default) or a :class:`StaticForward`: the model compiled once per model and mode, with
``dynamic=False``, and every batch smaller than a size compiled before padded to it with zero
images (rows are independent in an evaluation-mode network, so the padding changes no result), so
the last, smaller chunk of a run does not compile again.

Opt-in, for GPUs: on the 2-core CPU of the ``sample`` profile the compiled forward was 1.27x faster
after 20 s of compilation per process, which the profile's few hundred forwards never repay.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models.outputs import logits_of
from ..names import ENV_COMPILE

__all__ = [
    "COMPILE_MODES",
    "ENV_COMPILE",
    "StaticForward",
    "compile_mode",
    "compile_options",
    "compile_setting",
    "evaluation_forward",
]

#: Compiled forwards per model (weakly keyed: a freed model takes its graphs along), per mode.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Modes of ``torch.compile``; any other string is taken as a backend name ("aot_eager", ...).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value: bool | str) -> str | None:
    """The ``torch.compile`` mode or backend of a compile setting that is on: ``True`` -> ``None``
    (Inductor's default mode), a string -> itself (what :func:`evaluation_forward` and
    :func:`paper_code.methods.opticam.optimize` take as ``compile``).

    >>> compile_mode(True), compile_mode("aot_eager")
    (None, 'aot_eager')
    """
    return None if value is True else str(value)


def compile_options(mode: str | None) -> dict[str, Any]:
    """Keyword arguments of ``torch.compile`` with static shapes for a mode of
    :data:`COMPILE_MODES` (or ``None``) or, for any other string, a backend name (``"aot_eager"``:
    graphs captured and differentiated, not code-generated: quick to build, for tests).

    >>> compile_options("max-autotune"), compile_options("aot_eager")
    ({'dynamic': False, 'mode': 'max-autotune'}, {'dynamic': False, 'backend': 'aot_eager'})
    """
    if mode is None or mode in COMPILE_MODES:
        return {"dynamic": False, "mode": mode}
    return {"dynamic": False, "backend": mode}


class StaticForward:
    """``model(x)`` through ``torch.compile(model, dynamic=False)``; a batch of ``n`` images is
    padded with zero images to the smallest size already compiled that holds it (a new, larger
    size compiles once). Use :func:`evaluation_forward` to get the one shared per model.

    Attributes:
        sizes: the batch sizes compiled so far.
    """

    def __init__(self, model: nn.Module, mode: str | None = None) -> None:
        self._fn = torch.compile(model, **compile_options(mode))
        self.sizes: set[int] = set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        fits = [s for s in self.sizes if s > n]
        if n in self.sizes or not fits:
            self.sizes.add(n)
            return logits_of(self._fn(x))
        size = min(fits)
        padded = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        if x.is_contiguous(memory_format=torch.channels_last):  # the layout the graph was built for
            padded = padded.contiguous(memory_format=torch.channels_last)
        return logits_of(self._fn(padded))[:n]


def compile_setting(value: bool | str | None) -> bool | str:
    """``value``, or for ``None`` the setting of :data:`ENV_COMPILE`, as ``False``, ``True`` or
    a mode/backend name."""
    if value is None:
        value = os.environ.get(ENV_COMPILE, "")
    if isinstance(value, str) and value.strip().lower() in ("", "0", "false", "no", "off", "none"):
        return False
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    return value


def evaluation_forward(
    model: nn.Module, compile: bool | str | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward pass the metrics and Score-CAM use: ``model`` itself when ``compile`` is false;
    else its :class:`StaticForward` (``True``: Inductor's default mode; a string: a
    ``torch.compile`` mode such as ``"max-autotune"``, or a backend such as ``"aot_eager"``;
    ``None``: the setting of :data:`ENV_COMPILE`, off by default)."""
    compile = compile_setting(compile)
    if not compile:
        return model
    mode = compile_mode(compile)
    per_model = _COMPILED.setdefault(model, {})
    if mode not in per_model:
        per_model[mode] = StaticForward(model, mode)
    return per_model[mode]
