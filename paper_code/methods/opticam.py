r"""Opti-CAM (Zhang et al., CVIU 2024), Sections 3.1-3.2 and App. A, with the project defaults.

The saliency map is a convex combination of the feature maps of layer :math:`\ell`, whose weights are
optimized per image so that the masked image maximizes the class score:

- eq. (8)  :math:`S_\ell(x;u) = h\big(\sum_k \mathrm{softmax}(u)_k A^k_\ell(x)\big)`, h = identity;
- eq. (10) :math:`F^c_\ell(x;u) = g_c\big(f(x \odot n(\mathrm{up}(S_\ell(x;u))))\big)`, :math:`g_c(y) = y_c`;
- eq. (9)  :math:`u^* = \arg\max_u F^c_\ell(x;u)`, by Adam (lr 0.1, at most 100 iterations);
- eq. (11) the Opti-CAM map is :math:`n(\mathrm{up}(S_\ell(x;u^*)))`.

Deviations from the paper and from the official code are listed in :func:`optimize`'s docstring.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ..models.outputs import logits_of
from .base import index_chunks
from .forward import compile_mode, compile_options
from .hooks import FeatureLayer, channels_last, forward_features, frozen
from .maps import NORMALIZATIONS, normalize, upsample, weighted_sum
from .registry import register
from .targets import SubsetTarget, Target

#: Early-stopping tolerance of App. A: stop "when the change in loss is less than 1e-10".
STOP_TOLERANCE = 1e-10
#: Maximum Adam updates (App. A of the paper: at most 100 iterations).
ITERATIONS = 100
#: The official code's maximum (hanwei0912/OptiCAM, its driver's flag default).
OFFICIAL_ITERATIONS = 50


@dataclass
class OptiCAMResult:
    """Everything one Opti-CAM run produces.

    Attributes:
        maps: ``[B, 1, H, W]`` saliency maps in [0, 1] (eq. 11).
        trace: ``[T, B]`` objective :math:`F` at each iteration (NaN after an image stopped).
        iterations: ``[B]`` number of Adam updates each image received.
        weights: ``[B, K]`` final channel weights softmax(u*).
        snapshots: maps after ``n`` updates, for each ``n`` asked for in ``snapshots``.
    """

    maps: torch.Tensor
    trace: torch.Tensor
    iterations: torch.Tensor
    weights: torch.Tensor
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


def saliency(
    u: torch.Tensor, features: torch.Tensor, size: tuple[int, int], normalization: str = "range"
) -> torch.Tensor:
    r"""eqs. (8) and (11): :math:`n(\mathrm{up}(\sum_k \mathrm{softmax}(u)_k A^k))`, h = identity.

    ``u`` is ``[B, K]``, ``features`` ``[B, K, h, w]``; returns ``[B, 1, *size]``.
    """
    s = weighted_sum(torch.softmax(u, dim=1), features)
    return normalize(upsample(s, size), normalization)


def _masked_score(model, images, masks, target, index) -> torch.Tensor:
    return target(logits_of(model(images * masks)), index)


def _in_out_scores(model, images, masks, target, index) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of :math:`x \\odot s` and :math:`x \\odot (1 - s)`, both masked images in one forward pass."""
    n = images.shape[0]
    both = torch.cat([images * masks, images * (1 - masks)])
    scores = target(logits_of(model(both)), torch.cat([index, index]))
    return scores[:n], scores[n:]


def objective_mask(model, images, masks, target, index, clean):
    r"""eq. (10): :math:`F = g_c(f(x \odot s))` (the paper's objective)."""
    return _masked_score(model, images, masks, target, index)


def objective_diff(model, images, masks, target, index, clean):
    r"""eq. (19): :math:`F = -|g_c(f(x)) - g_c(f(x \odot s))|`."""
    return -(clean - _masked_score(model, images, masks, target, index)).abs()


def objective_iomask(model, images, masks, target, index, clean):
    r"""eq. (F.1): :math:`F = g_c(f(x \odot s)) - g_c(f(x \odot (1 - s)))`."""
    inside, outside = _in_out_scores(model, images, masks, target, index)
    return inside - outside


def objective_iodiff(model, images, masks, target, index, clean):
    r"""eq. (F.2): :math:`F = -|g_c(f(x)) - g_c(f(x \odot s))| + |g_c(f(x)) - g_c(f(x \odot (1-s)))|`."""
    inside, outside = _in_out_scores(model, images, masks, target, index)
    return -(clean - inside).abs() + (clean - outside).abs()


#: The objectives :math:`F` to maximize, per image (``[B]``), with :math:`s = n(\mathrm{up}(S_\ell(x;u)))`.
#: Each is ``fn(model, images, masks, target, index, clean_score) -> [B]``.
OBJECTIVE_FUNCTIONS = {
    "mask": objective_mask,
    "diff": objective_diff,
    "iomask": objective_iomask,
    "iodiff": objective_iodiff,
}
OBJECTIVES = tuple(OBJECTIVE_FUNCTIONS)


def objective(
    kind: str,
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    target: Target,
    index: torch.Tensor,
    clean_score: torch.Tensor,
) -> torch.Tensor:
    """The objective named ``kind`` (one of :data:`OBJECTIVES`), per image ``[B]``."""
    if kind not in OBJECTIVE_FUNCTIONS:
        raise ValueError(f"unknown objective {kind!r}; valid choices: {', '.join(OBJECTIVES)}")
    return OBJECTIVE_FUNCTIONS[kind](model, images, masks, target, index, clean_score)


def _features(
    model: nn.Module, layer: nn.Module | FeatureLayer, images: torch.Tensor, target: Target
) -> tuple[torch.Tensor, torch.Tensor]:
    """One clean forward pass: the layer's feature maps (detached) and the clean class scores.

    Uses the shared capture path (:func:`paper_code.methods.hooks.forward_features`), which checks that
    the layer ran exactly once and applies the layer's ``reshape_transform``.
    """
    feats, logits = forward_features(model, images, layer)
    index = torch.arange(images.shape[0], device=images.device)
    return feats.float().contiguous(), target(logits, index).detach()


class _Adam:
    """Adam with per-row activity: rows of inactive images receive no update at all.

    Same update as ``torch.optim.Adam`` (default betas, eps 1e-8, no weight decay). Stopped images
    must be excluded from the update entirely, because Adam's momentum would keep moving them even
    with a zero gradient (App. A's per-image stop needs it).
    """

    def __init__(self, u: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = torch.zeros_like(u)
        self.v = torch.zeros_like(u)
        self.t = 0

    def step(self, u: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor) -> None:
        self.t += 1
        m = self.m[rows].mul_(self.b1).add_(grad, alpha=1 - self.b1)
        v = self.v[rows].mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        self.m[rows], self.v[rows] = m, v
        bc1 = 1 - self.b1**self.t
        bc2 = 1 - self.b2**self.t
        denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
        u[rows] = u[rows] - (self.lr / bc1) * m / denom


@torch.inference_mode(False)  # a caller's no_grad / inference_mode must not stop the loop
@torch.enable_grad()
def optimize(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: nn.Module | FeatureLayer,
    *,
    iterations: int | None = None,
    lr: float = 0.1,
    objective_kind: str = "mask",
    normalization: str = "range",
    official: bool = False,
    init: float = 0.5,
    tol: float = STOP_TOLERANCE,
    snapshots: Sequence[int] = (),
    use_channels_last: bool = True,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    compile: bool | str = False,
    stop_check_every: int = 25,
) -> OptiCAMResult:
    r"""Run Opti-CAM (eqs. 8-11) on a batch and return maps, objective trace and weights.

    Algorithm (Section 3.2 and App. A, project defaults): features :math:`A_\ell(x)` computed once
    and held fixed; network frozen and in eval mode; :math:`u = 0.5` for every channel (uniform
    weights: the initial map is the channel mean); Adam over u only, lr 0.1; at most
    ``iterations`` = 100 updates.

    Early stopping (App. A, applied per image): image i stops at iteration t when
    :math:`|L_i(t) - L_i(t-1)| < 10^{-10}` and keeps the u that produced :math:`L_i(t)`. Stopped images
    leave the batch, so an image's map does not depend on its batch-mates (the paper's rule, applied
    per image; the official code applies a different, batch-level rule).

    ``official=True`` reproduces the official code instead (hanwei0912/OptiCAM): 50 iterations
    unless given, features through ReLU, one Adam over the batch-summed loss, and every
    ``iterations // 10`` steps the whole batch stops if the summed loss rose since the previous
    check, returning the maps of that step's forward pass. Results then depend on the batch (the
    official driver uses batches of 5).

    Args:
        iterations: maximum number of Adam updates (default 100; 50 when ``official``).
        lr: Adam learning rate (App. A: 0.1).
        objective_kind: ``mask`` (eq. 10, default), ``diff`` (19), ``iomask`` (F.1), ``iodiff`` (F.2).
        normalization: ``range`` (eq. 16, default), ``max`` (17), ``sigmoid`` (18).
        init: initial value of every u_k (0.5, as in the official code).
        tol: early-stopping tolerance on the change of the per-image loss.
        snapshots: iteration counts at which to also return the maps (Fig. A5 reads several budgets
            from one run); 0 is the initial map.
        use_channels_last: run the network in channels-last memory format (faster; same math).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the masked forward passes under autocast (GPU
            speed; off by default, maps then differ slightly).
        progress: show a tqdm bar over iterations.
        compile: run each iteration under ``torch.compile`` (a string is the compile ``mode``, e.g.
            ``"max-autotune-no-cudagraphs"``, or a backend name, e.g. ``"aot_eager"``); off by default, and the CPU default stays eager. See
            :func:`_optimize_compiled`: same per-image rule with static shapes and no host
            synchronisation per step; maps equal the eager ones up to rounding.
        stop_check_every: compiled path only: every this many iterations the loop asks the device
            whether any image is still active (one host synchronisation) and stops if none is;
            0 never asks (all ``iterations`` run; stopped images are frozen, so the maps are the
            same).
    """
    if objective_kind not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {objective_kind!r}; valid choices: {', '.join(OBJECTIVES)}"
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalization {normalization!r}; valid choices: {', '.join(NORMALIZATIONS)}"
        )
    if iterations is None:
        iterations = OFFICIAL_ITERATIONS if official else ITERATIONS
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if images.is_inference():  # made under inference_mode: cannot enter an autograd graph
        images = images.clone()
    if compile:
        if official:
            raise ValueError("compile=True needs the per-image rule (official=False)")
        return _optimize_compiled(
            model, images, target, layer, iterations=iterations, lr=lr,
            objective_kind=objective_kind, normalization=normalization, init=init, tol=tol,
            snapshots=snapshots, use_channels_last=use_channels_last,
            autocast_dtype=autocast_dtype, progress=progress,
            mode=compile_mode(compile), stop_check_every=stop_check_every,
        )  # fmt: skip
    size = tuple(images.shape[-2:])
    b = images.shape[0]
    device = images.device
    fn = OBJECTIVE_FUNCTIONS[objective_kind]
    with frozen(model), channels_last(model, use_channels_last):
        feats, clean = _features(model, layer, images, target)
        if official:
            feats = feats.clamp_min(0)
        x = images.contiguous(memory_format=torch.channels_last) if use_channels_last else images
        u = torch.full((b, feats.shape[1]), float(init), device=device)
        adam = _Adam(u, lr)
        trace = torch.full((iterations, b), float("nan"), device=device)
        done = torch.zeros(b, dtype=torch.long, device=device)  # updates received
        rule = OfficialStop(b, iterations, device) if official else PerImageStop(b, tol, device)
        shots: dict[int, torch.Tensor] = {}
        want = set(int(s) for s in snapshots)
        if 0 in want:
            shots[0] = saliency(u, feats, size, normalization).detach()
        final: torch.Tensor | None = None
        bar = tqdm(range(iterations), desc="Opti-CAM", disable=not progress, leave=False)
        for t in bar:
            rows = rule.rows()
            if rows.numel() == 0:
                break
            ur = u[rows].clone().requires_grad_(True)
            masks = saliency(ur, feats[rows], size, normalization)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                f = fn(model, x[rows], masks, target, rows, clean[rows])
            loss = -f.float()
            trace[t, rows] = -loss.detach()
            keep = rule.update(t, rows, loss.detach())
            if keep is None:  # the rule stops every image and returns this step's maps
                final = masks.detach()
                break
            if not bool(keep.any()):
                break
            (grad,) = torch.autograd.grad(loss[keep].sum(), ur)
            adam.step(u, grad[keep], rows[keep])
            done[rows[keep]] += 1
            if (t + 1) in want:
                shots[t + 1] = saliency(u, feats, size, normalization).detach()
        bar.close()
        maps = final if final is not None else saliency(u, feats, size, normalization)
    return OptiCAMResult(
        maps=maps.detach().contiguous(),
        trace=trace,
        iterations=done,
        weights=torch.softmax(u, dim=1),
        snapshots=shots,
    )


# --------------------------------------------------------------------------- compiled loop

#: Compiled pieces per model (weakly keyed: a model that is freed takes its graphs along), then per
#: (size, normalization, mode); and the batch sizes compiled so far, so a smaller batch (the last
#: one of a dataset, or the images a cache still misses) is padded to one of them instead of
#: compiling again.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _Compiled:
    saliency: Callable
    model: Callable
    step: Callable
    sizes: set[int] = field(default_factory=set)


def _adam_masked(u, m, v, grad, loss, prev, active, done, t, lr_bc1, sqrt_bc2, b1, b2, eps, tol):
    """One Adam step and the per-image stopping rule on every row, with static shapes: rows that are
    inactive (stopped earlier, or padding) or stop now keep their u, m and v (same update and rule
    as :class:`_Adam` and :class:`PerImageStop`, which instead leave those rows out)."""
    stop = active & ((loss - prev).abs() < tol)
    prev = torch.where(active, loss, prev)
    step = active & ~stop
    m_new = m * b1 + grad * (1 - b1)
    v_new = v * b2 + grad * grad * (1 - b2)
    c1, c2 = lr_bc1[t], sqrt_bc2[t]  # [1]: gathered on the device, no host scalar
    u_new = u - c1 * m_new / (v_new.sqrt() / c2 + eps)
    s = step[:, None]
    u = torch.where(s, u_new, u)
    m = torch.where(s, m_new, m)
    v = torch.where(s, v_new, v)
    return u, m, v, prev, step, done + step.long(), t + 1


def _compiled_parts(model: nn.Module, size, normalization: str, mode: str | None) -> _Compiled:
    per_model = _COMPILED.setdefault(model, {})
    key = (tuple(size), normalization, mode)
    if key not in per_model:

        def sal(u, feats):
            return saliency(u, feats, size, normalization)

        def net(x):
            return logits_of(model(x))

        kw = compile_options(mode)
        per_model[key] = _Compiled(
            torch.compile(sal, **kw), torch.compile(net, **kw), torch.compile(_adam_masked, **kw)
        )
    return per_model[key]


def _on_device(target: Target, device: torch.device) -> Target:
    """The target with its class tensors moved to ``device`` once (not at every step: a copy from
    host memory would synchronise)."""
    if isinstance(target, SubsetTarget):
        return SubsetTarget(_on_device(target.target, device), target.idx.to(device))
    classes = getattr(target, "classes", None)
    if isinstance(classes, torch.Tensor) and classes.device != device:
        target = copy.copy(target)
        target.classes = classes.to(device)
    return target


class _Padded:
    """Rows ``>= b`` are padding: they read the target of row 0 (any valid row)."""

    def __init__(self, target: Target, b: int) -> None:
        self.target, self.b = target, b

    def __call__(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.target(logits, torch.where(index < self.b, index, torch.zeros_like(index)))


def _optimize_compiled(
    model, images, target, layer, *, iterations, lr, objective_kind, normalization, init, tol,
    snapshots, use_channels_last, autocast_dtype, progress, mode, stop_check_every,
) -> OptiCAMResult:  # fmt: skip
    """Opti-CAM with the iteration under ``torch.compile``: the saliency (weighted sum,
    upsampling, normalization) and the network's forward and backward (AOTAutograd) are compiled
    graphs, the Adam step with the stopping rule (:func:`_adam_masked`) a third one.

    Every row stays in the batch at every step (static shapes) and the per-image rule is a mask,
    so nothing asks the host per step (no ``.item()``, no ``nonzero``): an image that stops keeps
    the u that produced its last loss, exactly as in the eager loop. A batch smaller than one
    compiled before for this model is padded to that size with inactive rows, so the last batch of
    a dataset does not compile again.
    """
    size = tuple(images.shape[-2:])
    b = images.shape[0]
    device = images.device
    fn = OBJECTIVE_FUNCTIONS[objective_kind]
    parts = _compiled_parts(model, size, normalization, mode)
    bp = min((n for n in parts.sizes if n >= b), default=b)
    parts.sizes.add(bp)
    target = _on_device(target, device)
    if bp > b:
        images = torch.cat([images, images[:1].expand(bp - b, *images.shape[1:])])
        target = _Padded(target, b)
    with frozen(model), channels_last(model, use_channels_last):
        feats, clean = _features(model, layer, images, target)
        x = images.contiguous(memory_format=torch.channels_last) if use_channels_last else images
        index = torch.arange(bp, device=device)
        u = torch.full((bp, feats.shape[1]), float(init), device=device)
        m, v = torch.zeros_like(u), torch.zeros_like(u)
        prev = torch.full((bp,), float("nan"), device=device)
        active = torch.arange(bp, device=device) < b
        done = torch.zeros(bp, dtype=torch.long, device=device)
        trace = torch.full((iterations, bp), float("nan"), device=device)
        # Adam's bias corrections as in _Adam (double precision, then float32), one per step.
        # The tables have a fixed length (128, or the next power of two), so that another
        # iteration count does not change a shape and compile again.
        b1, b2 = 0.9, 0.999
        steps = range(1, max(128, 1 << max(iterations - 1, 0).bit_length()) + 1)
        lr_bc1 = torch.tensor([lr / (1 - b1**k) for k in steps], device=device)
        sqrt_bc2 = torch.tensor([math.sqrt(1 - b2**k) for k in steps], device=device)
        t = torch.zeros(1, dtype=torch.long, device=device)  # step index, on the device
        want = set(int(s) for s in snapshots)
        shots: dict[int, torch.Tensor] = {}
        if 0 in want:
            shots[0] = saliency(u, feats, size, normalization)[:b].detach()
        nan = torch.tensor(float("nan"), device=device)
        bar = tqdm(range(iterations), desc="Opti-CAM", disable=not progress, leave=False)
        for it in bar:
            ur = u.detach().requires_grad_(True)
            masks = parts.saliency(ur, feats)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                f = fn(parts.model, x, masks, target, index, clean)
            loss = -f.float()
            trace[it] = torch.where(active, -loss.detach(), nan)
            (grad,) = torch.autograd.grad(loss.sum(), ur)
            u, m, v, prev, active, done, t = parts.step(
                u, m, v, grad, loss.detach(), prev, active, done, t, lr_bc1, sqrt_bc2,
                b1, b2, 1e-8, tol,
            )  # fmt: skip
            if (it + 1) in want:
                shots[it + 1] = saliency(u, feats, size, normalization)[:b].detach()
            if stop_check_every and (it + 1) % stop_check_every == 0 and not bool(active.any()):
                break
        bar.close()
        maps = saliency(u, feats, size, normalization)
    return OptiCAMResult(
        maps=maps[:b].detach().contiguous(),
        trace=trace[:, :b],
        iterations=done[:b],
        weights=torch.softmax(u[:b], dim=1),
        snapshots=shots,
    )


class PerImageStop:
    r"""The paper's stopping rule (App. A), applied per image (a project choice).

    Image i stops at iteration t when :math:`|L_i(t) - L_i(t-1)| < \mathrm{tol}` and keeps the u that
    produced :math:`L_i(t)`; stopped images leave the batch and receive no further Adam update, so an
    image's map does not depend on its batch-mates.
    """

    def __init__(self, b: int, tol: float, device: torch.device) -> None:
        self.tol = tol
        self.active = torch.ones(b, dtype=torch.bool, device=device)
        self.prev = torch.full((b,), float("nan"), device=device)

    def rows(self) -> torch.Tensor:
        return self.active.nonzero()[:, 0]

    def update(self, t: int, rows: torch.Tensor, loss: torch.Tensor) -> torch.Tensor | None:
        """Record the losses of ``rows``; return the mask (over ``rows``) of images that take a step."""
        stop = (loss - self.prev[rows]).abs() < self.tol
        self.prev[rows] = loss
        self.active[rows[stop]] = False
        return ~stop


class OfficialStop:
    """The official code's rule (hanwei0912/OptiCAM): one Adam over the batch-summed loss, and every
    ``iterations // 10`` steps the whole batch stops if the summed loss rose since the previous check,
    returning the maps of that step's forward pass. Results then depend on the batch."""

    def __init__(self, b: int, iterations: int, device: torch.device) -> None:
        self.all = torch.arange(b, device=device)
        self.every = max(iterations // 10, 1)
        self.previous: float | None = None

    def rows(self) -> torch.Tensor:
        return self.all

    def update(self, t: int, rows: torch.Tensor, loss: torch.Tensor) -> torch.Tensor | None:
        if t % self.every == 0:
            total = float(loss.sum())
            if self.previous is not None and total > self.previous:
                return None
            self.previous = total
        return torch.ones_like(rows, dtype=torch.bool)


@register(
    "opticam",
    paper_name="Opti-CAM",
    kind="optimization",
    needs_layer=True,
    differentiable=True,
)
def opticam(
    model: nn.Module,
    images: torch.Tensor,
    target: Target,
    layer: nn.Module | FeatureLayer,
    *,
    iterations: int | None = None,
    lr: float = 0.1,
    objective: str = "mask",
    normalization: str = "range",
    official: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    r"""Opti-CAM saliency maps ``[B, 1, H, W]`` (eqs. 8-11); see :func:`optimize` for every option.

    ``batch_size`` splits large batches into chunks (results are identical, since images are
    optimized independently, except in ``official`` mode whose stopping rule is batch-level).
    """
    chunks = index_chunks(images.shape[0], batch_size, images.device)
    out = []
    for idx in chunks:
        res = optimize(
            model,
            images[idx],
            SubsetTarget(target, idx),
            layer,
            iterations=iterations,
            lr=lr,
            objective_kind=objective,
            normalization=normalization,
            official=official,
            progress=progress,
            **options,
        )
        out.append(res.maps)
    return torch.cat(out)
