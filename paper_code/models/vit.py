"""Vision transformers of the paper (Table 2, Table A.8, Table 3): ViT-B/16 and DeiT-B/16 from ``timm``.

Both are wrapped as :class:`~paper_code.models.base.Classifier` (``family="vit"``) and take images
``[B, 3, 224, 224]`` in **[0, 1] pixel space**; their input standardization is the first layer, so masks
multiply the [0, 1] image before standardization, as for the CNNs
(:mod:`paper_code.models.base`).

Weights (pinned timm tags, :data:`WEIGHT_TAGS`):

- ``vit_base_patch16_224`` -> ``vit_base_patch16_224.orig_in21k_ft_in1k``: the original ViT-B/16 of
  Dosovitskiy et al. (ImageNet-21k pre-training, ImageNet-1k fine-tuning, Google's JAX checkpoint
  ``jx_vit_base_p16_224-80ecf9dd``). It is the checkpoint of Chefer et al.'s Transformer-Explainability
  code, which the paper names as its implementation of RawAtt, Rollout and TIBAV (Section 5.2); the paper
  gives no tag. timm's *default* tag for this name has changed over versions (``augreg_in21k_ft_in1k``,
  then ``augreg2_in21k_ft_in1k`` since timm 0.9), so "the default" is not a stable reference and is
  not used. Standardization: mean = std = (0.5, 0.5, 0.5), the statistics it was trained with (timm's
  pretrained config of this tag).
- ``deit_base_patch16_224`` -> ``deit_base_patch16_224.fb_in1k``: the only DeiT-B/16-224 tag (Touvron
  et al., ImageNet-1k, non-distilled: one prefix token). Standardization: ImageNet mean/std
  (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225), the statistics DeiT was trained with (timm's config
  of this tag) and the paper's "standard ImageNet normalization" (Section 5.2). Chefer et al.'s code
  feeds DeiT with 0.5/0.5 instead; that mismatches the training statistics and is not followed.

Preprocessing is the project's Resize(256) + CenterCrop(224) (the official
Opti-CAM code's, hanwei0912/OptiCAM) for both, not timm's
per-model bicubic crops (crop_pct 0.9 for ViT, 0.875 for DeiT).

Attention is observable: every block is switched to timm's non-fused attention path
(``Attention.fused_attn = False``), so the post-softmax attention ``[B, heads, N, N]`` passes through
``attn_drop``, where :func:`paper_code.methods.attention.capture_attention` hooks it (with fused
attention that hook never fires). Logits are the same as with fused attention up to float rounding
(tested).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch import nn

from ..imagenet import imagenet_categories
from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    Standardize,
    WeightsUnavailableError,
    read_state_dict,
)
from .tokens import tokens_to_grid

#: Pinned timm pretrained tags (``<architecture>.<tag>``); see the module docstring for why.
WEIGHT_TAGS: dict[str, str] = {
    "vit_base_patch16_224": "vit_base_patch16_224.orig_in21k_ft_in1k",
    "deit_base_patch16_224": "deit_base_patch16_224.fb_in1k",
}

#: Input standardization (mean, std) of each model, applied inside the model.
STANDARDIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "vit_base_patch16_224": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "deit_base_patch16_224": (IMAGENET_MEAN, IMAGENET_STD),
}

#: The paper's layer (App. A): the layer norm of the last self-attention block.
TARGET_LAYER = "blocks.11.norm1"

#: Weight files looked for in a Hugging Face Hub repository, in this order (timm's hub layout).
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - dependency declared by the integrator
        raise ImportError("the vision transformers need the PyPI package 'timm'") from e
    return timm


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache timm downloads into (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hub_repo(tag: str) -> str:
    return f"timm/{tag}"


def _hub_weights(tag: str) -> dict:
    """The state dict of timm tag ``tag``: from the hub cache, else downloaded, else a clear error."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, cache = _hub_repo(tag), hub_cache_dir()
    for filename in _HUB_FILES:
        path = try_to_load_from_cache(repo, filename, cache_dir=cache)
        if isinstance(path, str) and os.path.isfile(path):
            return _read_weights(path)
    errors = []
    reason = _hub_unreachable()
    if reason:  # fail at once instead of huggingface_hub's retries (over a minute offline)
        errors.append(reason)
    for filename in _HUB_FILES if not reason else ():
        try:
            return _read_weights(hf_hub_download(repo, filename, cache_dir=cache))
        except Exception as e:  # noqa: BLE001 - offline, missing entry, HTTP error: all reported below
            errors.append(
                f"{filename}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
    arch = tag.split(".")[0]
    folder = cache / f"models--{repo.replace('/', '--')}"
    raise WeightsUnavailableError(
        f"cannot load the pretrained weights of {arch} (timm tag {tag!r}): {_HUB_FILES[0]} of the "
        f"Hugging Face Hub repository {repo} is not in the cache ({folder}) and downloading it failed "
        f"({'; '.join(errors)}). Either go online once (timm caches it under {cache}; set HF_HOME or "
        f"HF_HUB_CACHE to move it), or save the weights elsewhere with torch.save(timm.create_model("
        f"{tag!r}, pretrained=True).state_dict(), 'weights.pth') and pass "
        f"load_model({arch!r}, weights='/path/to/weights.pth') (a state dict file or a .safetensors file)."
    ) from None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached (``HF_HUB_OFFLINE`` set, no DNS, no route), or
    ``None``. One quick check, so an offline machine gets the clear error in seconds."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"the hub ({host}) is not reachable: {type(e).__name__}: {e}"
    return None


def _read_weights(path: str | os.PathLike) -> dict:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``)."""
    if str(path).endswith(".safetensors"):
        if not Path(path).is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return read_state_dict(path)


def disable_fused_attention(net: nn.Module) -> int:
    """Switch every timm ``Attention`` of ``net`` to the explicit softmax path; returns how many.

    The non-fused path computes ``softmax(q k^T / sqrt(d))`` and passes it through ``attn_drop``
    (identity in eval mode), where it can be hooked. Same function as fused attention.
    """
    n = 0
    for module in net.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "attn_drop"):
            module.fused_attn = False
            n += 1
    return n


def wrap_timm_vit(
    name: str,
    net: nn.Module,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
    categories: list[str] | None = None,
    target_layer_name: str | None = None,
) -> Classifier:
    """Wrap a timm ``VisionTransformer`` as a ``family="vit"`` :class:`Classifier` (any size; tests use tiny ones).

    Fused attention is switched off; the target layer defaults to the last block's ``norm1``; the
    reshape transform drops the ``net.num_prefix_tokens`` prefix tokens (class token, plus the
    distillation token of distilled DeiTs) and makes the patch tokens a square grid.
    """
    disable_fused_attention(net)
    prefix = int(getattr(net, "num_prefix_tokens", 1))
    reshape = (
        tokens_to_grid if prefix == 1 else functools.partial(tokens_to_grid, prefix_tokens=prefix)
    )
    if target_layer_name is None:
        target_layer_name = f"blocks.{len(net.blocks) - 1}.norm1"
    if categories is None:
        categories = [f"class_{i}" for i in range(net.num_classes)]
    img = net.patch_embed.img_size
    return Classifier(
        name,
        net,
        Standardize(mean, std),
        target_layer_name,
        categories,
        input_size=int(img[0] if isinstance(img, (tuple, list)) else img),
        family="vit",
        reshape_transform=reshape,
    )


def _build(name: str, weights: str | os.PathLike | None) -> Classifier:
    timm = _timm()
    tag = WEIGHT_TAGS[name]
    if weights == "random":
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(0)  # the same random network in every process
            net = timm.create_model(name, pretrained=False)
        finally:
            torch.random.set_rng_state(state)
    else:
        sd = _hub_weights(tag) if weights is None else _read_weights(weights)
        with torch.device("meta"):  # no random initialization of 86M parameters to overwrite
            net = timm.create_model(name, pretrained=False)
        net.load_state_dict(sd, assign=True)  # strict: every parameter comes from the file
        meta = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
        if meta:  # pragma: no cover - timm ViTs keep no buffers outside the state dict
            raise RuntimeError(f"{name}: tensors not set by the weights file: {meta}")
    mean, std = STANDARDIZATION[name]
    model = wrap_timm_vit(name, net, mean, std, imagenet_categories(), TARGET_LAYER)
    model.weight_tag = tag if weights is None else str(weights)
    return model


def _vit_base_patch16_224(weights: str | os.PathLike | None) -> Classifier:
    """ViT-B/16 (``vit_base_patch16_224.orig_in21k_ft_in1k``), standardization 0.5/0.5."""
    return _build("vit_base_patch16_224", weights)


def _deit_base_patch16_224(weights: str | os.PathLike | None) -> Classifier:
    """DeiT-B/16 (``deit_base_patch16_224.fb_in1k``), ImageNet standardization."""
    return _build("deit_base_patch16_224", weights)


def _vit_tiny(weights: str | os.PathLike | None) -> Classifier:
    """A small random ViT for tests and the ``smoke`` profile, like the ``tiny`` CNN: timm's
    ViT-Ti/16 shape (embedding 192, 3 heads) with 4 blocks, seeded random weights, 1000 classes,
    standardization 0.5/0.5. Exercises every transformer code path at a tenth of ViT-B's cost;
    its numbers mean nothing. ``weights`` may name a state dict saved from it."""
    timm = _timm()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        net = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=4)
    finally:
        torch.random.set_rng_state(state)
    if weights not in (None, "random"):
        net.load_state_dict(_read_weights(weights))
    model = wrap_timm_vit("vit_tiny", net, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), imagenet_categories())
    model.weight_tag = "random" if weights in (None, "random") else str(weights)
    return model


#: Builders of the transformers, by name: ``builder(weights) -> Classifier`` (timm is imported
#: only when one is called).
BUILDERS = {
    "vit_base_patch16_224": _vit_base_patch16_224,
    "deit_base_patch16_224": _deit_base_patch16_224,
    "vit_tiny": _vit_tiny,
}
