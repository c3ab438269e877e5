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

import torch
from torch import nn

from ..models.outputs import logits_of
from ..names import ENV_COMPILE

__all__ = ["ENV_COMPILE", "StaticForward", "evaluation_forward"]

#: Compiled forwards per model (weakly keyed: a freed model takes its graphs along), per mode.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Modes of ``torch.compile``; any other string is taken as a backend name ("aot_eager", ...).
_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class StaticForward:
    """``model(x)`` through ``torch.compile(model, dynamic=False)``; a batch of ``n`` images is
    padded with zero images to the smallest size already compiled that holds it (a new, larger
    size compiles once). Use :func:`evaluation_forward` to get the one shared per model.

    Attributes:
        sizes: the batch sizes compiled so far.
    """

    def __init__(self, model: nn.Module, mode: str | None = None) -> None:
        if mode is None or mode in _MODES:
            self._fn = torch.compile(model, dynamic=False, mode=mode)
        else:
            self._fn = torch.compile(model, dynamic=False, backend=mode)
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
    mode = None if compile is True else str(compile)
    per_model = _COMPILED.setdefault(model, {})
    if mode not in per_model:
        per_model[mode] = StaticForward(model, mode)
    return per_model[mode]
