"""What a model returns, made into logits.

Many models do not return a plain ``[B, C]`` tensor: Hugging Face models return a ``ModelOutput``
(``.logits``), torchvision's Inception/GoogLeNet a named tuple in training mode, detection-style or
auxiliary-head models a tuple or a dict. Every forward pass of :mod:`paper_code.methods` and
:mod:`paper_code.metrics` goes through :func:`logits_of`, so such a model works as it is, and an
output it cannot read gives an error that says what it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def logits_of(output: Any) -> torch.Tensor:
    """The ``[B, C]`` logits in a model's ``output``.

    A tensor is returned as it is; otherwise, in this order: an object with a tensor ``.logits``
    attribute (Hugging Face ``ModelOutput``), a mapping with a ``"logits"`` key, a tuple or list
    whose first element is a tensor (the main head first, as torchvision and most code do).

    Raises:
        TypeError: the output holds none of these, or the logits are not ``[B, C]``.
    """
    logits = output
    if not isinstance(logits, torch.Tensor):
        attr = getattr(output, "logits", None)
        if isinstance(attr, torch.Tensor):
            logits = attr
        elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
            logits = output["logits"]
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            logits = output[0]
        else:
            keys = f" with keys {sorted(map(str, output))}" if isinstance(output, Mapping) else ""
            raise TypeError(
                f"the model returned a {type(output).__name__}{keys}; paper_code needs its logits "
                "[B, C]: a tensor, an object with .logits, a dict with 'logits', or a tuple whose "
                "first element is the logits (wrap the model in an nn.Module that returns them)"
            )
    if logits.dim() != 2:
        raise TypeError(
            f"the model's logits must be [B, C] (one row of class scores per image), got shape "
            f"{list(logits.shape)}; wrap the model so that it returns one score per class"
        )
    return logits
