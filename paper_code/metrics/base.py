r"""The template every metric follows, in the spirit of Quantus' ``Metric.__call__`` (input checks,
then preprocessing, then the per-batch evaluation; understandable-machine-intelligence-lab/Quantus,
``quantus/metrics/base.py``), and the metadata each metric declares beside its code.

A metric is a plain function registered by :func:`metric`, which records its :class:`MetricInfo`
(name, score direction, unit, paper equation, reference) in :data:`METRICS`. Inside, an
:class:`Evaluation` does what every metric needs, once for all of them: the input checks (images
``[B, 3, H, W]``, maps ``[B, 1, H, W]`` at the input resolution, moved to the images' device), the
class of each image (given classes, one class for all, or ``None`` = the predicted class), the
evaluation forward (eager or compiled, :func:`paper_code.methods.forward.evaluation_forward`, in
channels-last, under ``torch.inference_mode``, float64 softmax), chunks of ``batch_size``
evaluations with an optional progress bar, and the chunked calls of an explainer. What is left in
the metric is its formula::

    @metric(AD=MetricInfo("Average Drop", "lower", "%", "13", "faithfulness"))
    def average_drop(model, images, maps, classes=None, *, batch_size=None, progress=False,
                     compile=None):
        ev = Evaluation(model, images, maps, batch_size=batch_size, progress=progress,
                        compile=compile)
        cls = ev.classes(classes)
        p = ev.probs(lambda sl: ev.images[sl], cls)
        o = ev.probs(lambda sl: ev.images[sl] * ev.maps[sl], cls)
        return {"AD": (p - o).clamp(min=0) / p * 100}

The low-level checks and chunking are shared with the explainers (:mod:`paper_code.methods.base`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import nn

from ..methods.base import (
    check_images,
    check_maps,
    chunks,
    class_indices,
    default_batch_size,
    resolve_batch_size,
)
from ..methods.forward import evaluation_forward
from ..methods.hooks import channels_last
from ..models.outputs import logits_of

__all__ = [
    "METRICS",
    "DIRECTIONS",
    "Evaluation",
    "Explainer",
    "MetricInfo",
    "class_probs",
    "default_batch_size",
    "metric",
    "probabilities",
]

#: ``explainer(images, classes) -> maps [B, 1, H, W]``: how the robustness metrics re-explain.
Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# --------------------------------------------------------------------------- metadata

#: Score directions: which way is better.
DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric (Quantus-style: ``score_direction``, ``evaluation_category``).

    Attributes:
        name: display name used in the paper's tables.
        direction: ``"higher"`` or ``"lower"`` is better.
        unit: ``"%"``, ``"ratio"`` or ``"log-ratio"``.
        equation: equation number in the paper, or the section/reference that defines it.
        category: ``"faithfulness"``, ``"robustness"``, ``"complexity"`` or ``"localization"``.
        function: the function of :mod:`paper_code.metrics` that computes it (and the key it
            returns); filled in by :func:`metric`.
        reference: the publication and reference code that define the metric.
    """

    name: str
    direction: str
    unit: str
    equation: str
    category: str
    function: str = ""
    reference: str = ""


#: Every metric of the paper, keyed by the name used in the returned dicts, in the order the
#: metric modules register them (:func:`metric`).
METRICS: dict[str, MetricInfo] = {}

F = TypeVar("F", bound=Callable[..., object])


def metric(**infos: MetricInfo) -> Callable[[F], F]:
    """Register the metrics a function computes, keyed by the name of each score in the dict it
    returns, in :data:`METRICS` (the one source of the metadata; ``function`` is filled in).

    >>> @metric(X=MetricInfo("Example", "higher", "%", "0", "faithfulness"))
    ... def example(): ...
    >>> METRICS.pop("X").function
    'example'
    """

    def register(fn: F) -> F:
        for key, info in infos.items():
            if info.direction not in DIRECTIONS:
                raise ValueError(f"{key}: direction must be one of {DIRECTIONS}")
            if key in METRICS and METRICS[key].function != fn.__name__:
                raise ValueError(f"metric {key!r} is already computed by {METRICS[key].function}")
            METRICS[key] = replace(info, function=fn.__name__)
        return fn

    return register


# --------------------------------------------------------------------------- evaluation


def probabilities(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``classes`` ``[N]`` from ``logits`` ``[N, C]``, in float64 so that
    :math:`1 - p` stays accurate for confident predictions (AG's denominator, eq. 15; a project
    choice, the paper is silent).

    >>> probabilities(torch.zeros(2, 4), torch.tensor([0, 3])).tolist()
    [0.25, 0.25]
    """
    return logits_of(logits).double().softmax(1).gather(1, classes[:, None].long())[:, 0]


class Evaluation:
    """One metric call's checked inputs and the forward passes of its evaluations.

    Args:
        model: the classifier (``None`` for a metric that only re-explains, Max-Sensitivity).
        images: ``[B, 3, H, W]``; any values (the metrics accept shifted images, e.g. to test a
            baseline).
        maps: ``[B, 1, H, W]`` at the images' resolution, or ``None``; :attr:`maps` holds them on
            the images' device, in their dtype.
        batch_size: evaluations per forward pass (``None``: :func:`default_batch_size`).
        progress: a tqdm bar over the chunks.
        compile: the forward passes under ``torch.compile`` with static shapes
            (:func:`paper_code.methods.forward.evaluation_forward`).
        channels_last: feed the network channels-last tensors (with its weights in channels-last:
            :func:`paper_code.methods.hooks.channels_last`): markedly faster convolutions on CPU
            (oneDNN) and GPU, the same math up to float rounding.

    >>> import paper_code
    >>> ev = Evaluation(paper_code.load_model("tiny"), torch.rand(3, 3, 224, 224), batch_size=2)
    >>> ev.classes(7).tolist(), [(s.start, s.stop) for s in ev.chunks(3)]
    ([7, 7, 7], [(0, 2), (2, 3)])
    """

    def __init__(
        self,
        model: nn.Module | None,
        images: torch.Tensor,
        maps: torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
        compile: bool | str | None = None,
        channels_last: bool = True,
    ) -> None:
        check_images(images, pixels=False)
        self.model = model
        self.images = images
        self._maps = None if maps is None else check_maps(maps, images)
        self.batch_size = resolve_batch_size(batch_size)
        self.progress = progress
        self.compile = compile
        self.channels_last = channels_last

    @property
    def maps(self) -> torch.Tensor:
        """The maps, on the images' device and in their dtype."""
        if self._maps is None:
            raise ValueError("this metric needs maps [B, 1, H, W]")
        return self._maps

    def chunks(self, n: int, desc: str = "", progress: bool | None = None) -> Iterator[slice]:
        """Slices of ``range(n)`` of at most :attr:`batch_size` (a bar if :attr:`progress`)."""
        show = self.progress if progress is None else progress
        return chunks(n, self.batch_size, progress=show, desc=desc)

    def classes(self, classes: torch.Tensor | Sequence[int] | int | None) -> torch.Tensor:
        """Class indices ``[B]`` on the images' device: ``classes`` (one per image, or one for
        all), or for ``None`` the predicted class of each image (its argmax over one chunked pass
        of the evaluation forward; the class of insertion/deletion, Section 5.3.2, and of ADCC)."""
        if classes is None:
            if self.model is None:
                raise ValueError("classes are needed: there is no model to predict them")
            return self.forward(lambda sl: self.images[sl], None, progress=False)[1]
        return class_indices(classes, self.images.shape[0], self.images.device, strict=False)

    def forward(
        self,
        inputs: Callable[[slice], torch.Tensor],
        classes: torch.Tensor | None,
        n: int | None = None,
        desc: str = "",
        progress: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate ``n`` inputs (default: one per image) in chunks: ``inputs(sl)`` builds the
        inputs of the evaluations in slice ``sl``. Returns the float64 softmax probability of each
        evaluation's class, ``classes[i]`` or (for ``None``) the argmax, and those classes."""
        if self.model is None:
            raise ValueError("this metric needs a model")
        n = self.images.shape[0] if n is None else n
        device = self.images.device
        probs = torch.empty(n, dtype=torch.float64, device=device)
        out_classes = torch.empty(n, dtype=torch.long, device=device)
        net = evaluation_forward(self.model, self.compile)
        with channels_last(self.model, self.channels_last), torch.inference_mode():
            for sl in self.chunks(n, desc, progress):
                x = inputs(sl)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                logits = logits_of(net(x))
                c = logits.argmax(1) if classes is None else classes[sl]
                out_classes[sl] = c
                probs[sl] = probabilities(logits, c)
        return probs, out_classes

    def probs(
        self,
        inputs: Callable[[slice], torch.Tensor],
        classes: torch.Tensor,
        n: int | None = None,
        desc: str = "",
    ) -> torch.Tensor:
        """:meth:`forward`'s probabilities of the given ``classes`` (float64 ``[n]``)."""
        return self.forward(inputs, classes, n, desc)[0]

    def explain(
        self,
        explainer: Explainer,
        images: torch.Tensor,
        classes: torch.Tensor,
        desc: str = "",
        progress: bool = False,
    ) -> torch.Tensor:
        """``explainer(images, classes)`` over chunks of :attr:`batch_size` images, with autograd
        enabled (gradient methods and Opti-CAM need it), detached, on the images' device."""
        with torch.enable_grad():
            maps = [
                explainer(images[sl], classes[sl])
                for sl in self.chunks(images.shape[0], desc, progress)
            ]
        return torch.cat(maps).detach().to(self.images.device)


def class_probs(
    model: nn.Module,
    images: torch.Tensor,
    classes: torch.Tensor | Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    compile: bool | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probability (float64) of ``classes`` (default: the argmax) -> ``(probs [B], classes [B])``:
    the :math:`p^c` of eqs. (13)-(15) (Section 4).

    ``compile``: the forward passes under ``torch.compile`` with static shapes
    (:func:`paper_code.methods.forward.evaluation_forward`; every metric takes it).

    >>> import paper_code
    >>> p, c = class_probs(paper_code.load_model("tiny"), torch.rand(2, 3, 224, 224), [3, 5])
    >>> p.dtype, c.tolist(), bool(((p > 0) & (p < 1)).all())
    (torch.float64, [3, 5], True)
    """
    ev = Evaluation(model, images, batch_size=batch_size, progress=progress, compile=compile)
    cls = None if classes is None else ev.classes(classes)
    return ev.forward(lambda sl: images[sl], cls, desc="probs")
