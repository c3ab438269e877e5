"""What a saliency map explains: a score per image, computed from the model's logits.

A *target* is a callable ``target(logits, index) -> scores``: ``logits`` is ``[N, C]`` and ``index``
(``[N]``, long) says which image of the batch each row belongs to, so methods that evaluate many
perturbed copies of one image (Score-CAM, Ablation-CAM) can score them against that image's class.
This mirrors pytorch-grad-cam's callable targets, batched. :func:`resolve_targets` turns the usual
user inputs (``None``, an int, a list or tensor of class indices, a target object) into one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..models.outputs import logits_of
from .base import class_indices

Target = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ClassLogit:
    """g_c(y) = y_c: the logit of class c (the paper's default selector, Section 3.2)."""

    def __init__(self, classes: torch.Tensor) -> None:
        self.classes = classes.long()

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        cls = self.classes.to(logits.device)[index.to(logits.device)]
        return logits.gather(1, cls[:, None])[:, 0]

    def __repr__(self) -> str:
        return f"ClassLogit({self.classes.tolist()})"


class ClassProbability(ClassLogit):
    """g_c(y) = softmax(y)_c: the probability of class c (an alternative selector)."""

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        cls = self.classes.to(logits.device)[index.to(logits.device)]
        return logits.softmax(1).gather(1, cls[:, None])[:, 0]


class ClassLogits:
    """Several classes per image: ``classes`` is ``[B, R]`` and the scores are ``[N, R]`` logits.

    Used where one set of forward passes serves several classes (Score-CAM's masked images do not
    depend on the class; only which logit is read does).
    """

    def __init__(self, classes: torch.Tensor) -> None:
        if classes.dim() != 2:
            raise ValueError(f"classes must be [B, R], got shape {list(classes.shape)}")
        self.classes = classes.long()

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, self.classes.to(logits.device)[index.to(logits.device)])


def resolve_classes(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None,
    num_classes: int,
) -> torch.Tensor:
    """Class indices ``[B]`` (long, on the images' device): :func:`paper_code.methods.base.class_indices`
    of ``targets`` checked against ``num_classes``; ``None`` means the predicted class (one forward
    pass of the batch), as in pytorch-grad-cam (jacobgil/pytorch-grad-cam, ``base_cam.py``)."""
    if targets is None:
        with torch.no_grad():
            return logits_of(model(images)).argmax(1)
    return class_indices(targets, images.shape[0], images.device, num_classes=num_classes)


def resolve_targets(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | Target | None,
    num_classes: int,
) -> Target:
    """A target callable from class indices (``None`` = predicted class) or a callable passed through."""
    if callable(targets) and not isinstance(targets, torch.Tensor):
        return targets
    return ClassLogit(resolve_classes(model, images, targets, num_classes))


class SubsetTarget:
    """A target restricted to a chunk of the batch: row j of the chunk is image ``idx[j]``."""

    def __init__(self, target: Target, idx: torch.Tensor) -> None:
        self.target, self.idx = target, idx

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.target(logits, self.idx[index.to(self.idx.device)])
