"""Networks from outside the package: any timm model (``timm:<name>``) or Hugging Face image
classifier (``hf:<repo or folder>``), wrapped as a :class:`~paper_code.models.base.Classifier`.

The wrapper is the same as for the paper's networks: [0, 1] images in, the model's own input
standardization as the first layer, so that every method and metric of the paper applies to it:

- **standardization** from the model's pretrained configuration (timm's ``pretrained_cfg`` mean/std;
  Hugging Face's image processor ``image_mean``/``image_std``), ImageNet statistics if it has none;
- **the layer of the CAM methods** by one rule: timm's last feature stage
  (``feature_info[-1]``, the last spatial feature map before pooling); for other networks the last
  module that outputs a spatial map ``[B, K, h, w]`` (``h w > 1``), is called once per forward
  pass and is no pooling layer (:func:`last_spatial_layer`). The per-model ``cam_layers`` parameter of
  the pages (or ``layer=`` of :func:`paper_code.explain`) overrides it;
- **transformers** (timm ``VisionTransformer``-like models: a ``blocks`` list and patch tokens) use the
  paper's layer, the last block's ``norm1``, and the token-to-grid reshape, exactly like ViT-B/16;
- **weights**: the published ones (timm's or the hub's cache, downloaded when online; offline
  without them, :class:`~paper_code.models.base.WeightsUnavailableError` names what is missing),
  ``"random"`` for a random initialization (no download), or a file (a state dict of the network).

>>> from paper_code.models import load_model
>>> m = load_model("timm:resnet18", weights="random")
>>> m.name, m.family, m.target_layer_name, tuple(m(torch.rand(1, 3, 224, 224)).shape)
('timm:resnet18', 'cnn', 'layer4', (1, 1000))
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..imagenet import imagenet_categories
from .base import IMAGENET_MEAN, IMAGENET_STD, Classifier, Standardize, WeightsUnavailableError

__all__ = ["PREFIXES", "is_external", "last_spatial_layer", "load_external", "spatial_layers"]

#: The prefixes of external model names.
PREFIXES = ("timm:", "hf:")

_POOLING = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def is_external(name: str) -> bool:
    """Whether ``name`` names a network from outside the package (``timm:...``, ``hf:...``)."""
    return isinstance(name, str) and name.startswith(PREFIXES)


def spatial_layers(model: nn.Module, images: torch.Tensor) -> list[tuple[str, torch.Size, int]]:
    """Modules of ``model`` whose output is a ``[B, K, h, w]`` map with ``h * w > 1``, in the order
    they first run on ``images`` (one forward pass, no gradients), with the shape of that first
    output and how many times each ran: the candidates for a CAM method's layer."""
    seen: dict[str, list] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-2:].numel() > 1:
                if name in seen:
                    seen[name][1] += 1
                else:
                    seen[name] = [out.shape, 1]

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return [(n, shape, calls) for n, (shape, calls) in seen.items()]


def last_spatial_layer(net: nn.Module, size: int = 224) -> str:
    """The rule for a network without a known layer: the last module whose output is a spatial
    map, that is called once per forward pass (a module shared by several places, like
    torchvision's ResNet ReLU, would be captured several times) and is no pooling layer; leaf
    modules only, so a stage's container does not shadow its last layer."""
    leaves = {n for n, m in net.named_modules() if n and not list(m.children())}
    pools = {n for n, m in net.named_modules() if isinstance(m, _POOLING)}
    was_training = net.training
    net.eval()
    try:
        cands = spatial_layers(net, torch.zeros(1, 3, size, size))
    finally:
        net.train(was_training)
    good = [n for n, _, calls in cands if n in leaves and n not in pools and calls == 1]
    if not good:
        raise ValueError(
            "no layer with a spatial feature map was found; pass the layer by name "
            "(the per-model 'layers' parameter, or layer= of paper_code.explain)"
        )
    return good[-1]


def _is_vit(net: nn.Module) -> bool:
    return hasattr(net, "blocks") and hasattr(net, "patch_embed")


def _timm(name: str, weights: str | os.PathLike | None) -> Classifier:
    import timm

    from .vit import disable_fused_attention, wrap_timm_vit

    timm.layers.set_fused_attn(False)  # attention must be observable (RawAtt, Rollout, TIBAV)
    if weights is None:
        try:
            net = timm.create_model(name, pretrained=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise WeightsUnavailableError(
                f"cannot load timm:{name}: its pretrained weights are not in the Hugging Face "
                f"cache and could not be downloaded ({type(e).__name__}: {str(e).splitlines()[0]}). "
                "Go online once, or pass a weights file (-p weights '{"
                f"timm:{name}: /path/file.safetensors}}') or weights='random'."
            ) from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random network in every process
            net = timm.create_model(name, pretrained=False)
        if str(weights) != "random":
            from .vit import _read_weights

            net.load_state_dict(_read_weights(weights))
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(cfg.get("std") or IMAGENET_STD)
    categories = imagenet_categories() if net.num_classes == 1000 else None
    if _is_vit(net):
        disable_fused_attention(net)
        return wrap_timm_vit(f"timm:{name}", net, mean, std, categories)
    info = getattr(net, "feature_info", None)
    layer = None
    if info:
        try:
            layer = info[-1]["module"]
        except (KeyError, IndexError, TypeError):
            layer = None
    if not layer:
        layer = last_spatial_layer(net)
    return Classifier(
        f"timm:{name}",
        net,
        Standardize(mean, std),
        layer,
        categories or [f"class_{i}" for i in range(net.num_classes)],
    )


class _HFLogits(nn.Module):
    """A Hugging Face image classifier called with ``pixel_values``, returning its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def _hf(name: str, weights: str | os.PathLike | None) -> Classifier:
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "hf: networks need the transformers package: pip install 'paper_code[hf]'"
        ) from e
    local = Path(name).is_dir()
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        if weights is None:
            model = transformers.AutoModelForImageClassification.from_pretrained(name)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = transformers.AutoModelForImageClassification.from_config(config)
            if str(weights) != "random":
                from .vit import _read_weights

                model.load_state_dict(_read_weights(weights))
    except OSError as e:
        where = "folder" if local else "Hugging Face hub"
        raise WeightsUnavailableError(
            f"cannot load hf:{name} from the {where}: not in the cache and not downloadable "
            f"({str(e).splitlines()[0]}). Go online once, or save it with save_pretrained() "
            "and pass hf:/path/to/folder."
        ) from None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(name)
        mean = tuple(getattr(proc, "image_mean", None) or mean)
        std = tuple(getattr(proc, "image_std", None) or std)
    except (OSError, ValueError):
        pass  # no processor saved: ImageNet statistics
    model.eval()
    net = _HFLogits(model)
    labels = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(labels)) or len(labels))
    categories = [str(labels.get(i, f"class_{i}")) for i in range(n)]
    if n == 1000 and all(c.startswith("LABEL_") or c.startswith("class_") for c in categories):
        categories = imagenet_categories()
    return Classifier(
        f"hf:{name}", net, Standardize(mean, std), last_spatial_layer(net), categories
    )


def load_external(name: str, weights: str | os.PathLike | None = None) -> Classifier:
    """The :class:`Classifier` of an external network name (see the module docstring)."""
    prefix, _, rest = name.partition(":")
    if not rest:
        raise ValueError(f"{name!r}: give a model after the prefix, e.g. timm:resnet50")
    if prefix == "timm":
        return _timm(rest, weights)
    if prefix == "hf":
        return _hf(rest, weights)
    raise ValueError(f"unknown model prefix {prefix!r}; valid: {', '.join(PREFIXES)}")
