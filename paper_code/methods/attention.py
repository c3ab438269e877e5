r"""Attention-based explanations of vision transformers (Table 2, Table A.8, Table 3): RawAtt, Rollout and
TIBAV, batched and in pure torch, for timm ``VisionTransformer`` networks (ViT-B/16, DeiT-B/16).

Notation: block :math:`b = 1..L` has post-softmax attention :math:`A_b \in \mathbb{R}^{H \times N \times N}`
(:math:`H` heads, :math:`N = P + hw` tokens, :math:`P` prefix tokens: the class token, plus DeiT's
distillation token when distilled). :math:`\bar A_b = \frac{1}{H}\sum_h A_b^h` is the head mean.
Every method returns a row of an :math:`N \times N` matrix at the class token, restricted to the
:math:`hw` patch tokens and reshaped to the :math:`h \times w` grid; the final map is
:math:`n(\mathrm{up}(\cdot))` (bilinear upsampling, ``align_corners=False``, then range normalization with
the :math:`\epsilon` guard: :func:`paper_code.methods.maps`), as for the CAMs.

- **RawAtt**: :math:`\bar A_L[\mathrm{CLS}, P:]`, the last block's attention of the class token.
- **Rollout** (Abnar & Zuidema, ACL 2020): :math:`\hat A_b = \mathrm{rownorm}(\tfrac12 \bar A_b + \tfrac12 I)`,
  :math:`R = \hat A_L \cdots \hat A_{s+1}`, map :math:`R[\mathrm{CLS}, P:]`, with :math:`s` =
  ``start_layer`` (default 1, :data:`START_LAYER`: Chefer et al.'s evaluation script).
- **TIBAV** (Chefer, Gur & Wolf, CVPR 2021, "Transformer Interpretability Beyond Attention
  Visualization"): LRP relevance :math:`R_b` of each attention map combined with its gradient,
  :math:`\tilde A_b = I + \frac{1}{H}\sum_h (\nabla A_b^h \odot R_b^h)^+`,
  :math:`C = \tilde A_L \cdots \tilde A_{s+1}` (no row normalization), map :math:`C[\mathrm{CLS}, P:]`.
  This is the full relevance propagation of that paper (see :func:`tibav`), written from the paper
  and BASELINES.md; not the gradient-times-attention rule of their ICCV 2021 paper.

Attention is read from timm's non-fused attention path: :func:`capture_attention` switches every
``Attention`` module to ``fused_attn = False`` for the duration and hooks ``attn_drop`` (identity in eval
mode), whose output is the post-softmax attention. RawAtt and Rollout do not depend on the class.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.outputs import logits_of
from .hooks import frozen
from .maps import normalize_range, upsample
from .registry import register
from .targets import Target

__all__ = [
    "AttentionCapture",
    "LRPTrace",
    "attention_gradients",
    "attention_maps",
    "capture_attention",
    "lrp_add",
    "lrp_clone",
    "lrp_linear",
    "lrp_matmul",
    "lrp_trace",
    "rawatt_lowres",
    "rollout_lowres",
    "rollout_matrix",
    "tibav_lowres",
]

#: Stabilizer of the LRP divisions :math:`R / Z` (with the sign of :math:`Z`; 0 where :math:`Z = 0`).
LRP_EPS = 1e-9

#: First block (0-based) of the Rollout and TIBAV products by default: 1, as Chefer et al.'s
#: evaluation script ``baselines/ViT/generate_visualizations.py`` (hila-chefer/Transformer-Explainability)
#: passes to both (the generator functions' own default, and their demo notebook's, is 0).
START_LAYER = 1


# --------------------------------------------------------------------------- model access


def _split(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(timm network, standardization or None) of a paper_code Classifier or a bare timm ViT."""
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module):
        return net, getattr(model, "standardize", None)
    return model, None


def attention_modules(net: nn.Module) -> list[nn.Module]:
    """The timm ``Attention`` modules of ``net`` in forward order (modules with ``fused_attn`` and ``attn_drop``)."""
    mods = [m for m in net.modules() if hasattr(m, "fused_attn") and hasattr(m, "attn_drop")]
    if not mods:
        raise ValueError(
            f"{type(net).__name__} has no timm Attention modules: the attention methods need a timm "
            "VisionTransformer (e.g. load_model('vit_base_patch16_224'))"
        )
    return mods


def num_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens (1: class token; 2 for distilled DeiT)."""
    return int(getattr(_split(model)[0], "num_prefix_tokens", 1))


@dataclass
class AttentionCapture:
    """Post-softmax attention ``[B, H, N, N]`` of each block, recorded by :func:`capture_attention`."""

    maps: list[torch.Tensor | None]
    calls: list[int]
    grads: list[torch.Tensor | None] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        """The recorded maps; checks every block ran exactly once."""
        if any(c != 1 for c in self.calls) or any(m is None for m in self.maps):
            raise ValueError(
                f"attention hooks fired {self.calls} times (expected once per block and forward pass)"
            )
        return [m for m in self.maps if m is not None]


@contextmanager
def capture_attention(model: nn.Module, retain_grad: bool = False) -> Iterator[AttentionCapture]:
    """Record every block's post-softmax attention during the forward passes run inside the block.

    Fused attention is switched off while the block runs (and restored on exit, as are the hooks):
    with ``F.scaled_dot_product_attention`` the attention matrix never exists. With ``retain_grad``
    a tensor hook stores :math:`\\partial(\\cdot)/\\partial A_b` in ``capture.grads`` during ``backward``.
    """
    mods = attention_modules(_split(model)[0])
    cap = AttentionCapture([None] * len(mods), [0] * len(mods), [None] * len(mods))
    old = [m.fused_attn for m in mods]
    handles = []

    def make_hook(i: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            cap.maps[i] = output
            cap.calls[i] += 1
            if retain_grad and output.requires_grad:

                def store(g: torch.Tensor) -> None:
                    cap.grads[i] = g

                output.register_hook(store)

        return hook

    try:
        for i, m in enumerate(mods):
            m.fused_attn = False
            handles.append(m.attn_drop.register_forward_hook(make_hook(i)))
        yield cap
    finally:
        for h in handles:
            h.remove()
        for m, f in zip(mods, old):
            m.fused_attn = f


def attention_maps(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every block's post-softmax attention ``[B, H, N, N]`` for ``images`` in [0, 1] (one forward, no grad)."""
    with torch.no_grad(), frozen(model), capture_attention(model) as cap:
        model(images)
        return [a.detach() for a in cap.tensors()]


def attention_gradients(
    model: nn.Module, images: torch.Tensor, target: Target
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    r"""Attention :math:`A_b` and :math:`\nabla A_b = \partial \sum_i g_{c_i}(y_i) / \partial A_b` from hooks.

    One forward and one backward pass of the model itself (tensor hooks on the captured attention).
    The input is marked ``requires_grad`` so that the graph exists with frozen weights.
    """
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad(), frozen(model), capture_attention(model, retain_grad=True) as cap:
        logits = logits_of(model(x))
        index = torch.arange(images.shape[0], device=logits.device)
        target(logits, index).sum().backward()
        maps = [a.detach() for a in cap.tensors()]
        grads = [g if g is not None else torch.zeros_like(a) for g, a in zip(cap.grads, maps)]
    return maps, grads


# --------------------------------------------------------------------------- maps


def _grid(rows: torch.Tensor, prefix: int) -> torch.Tensor:
    """Class-token rows ``[B, N]`` -> patch maps ``[B, 1, s, s]`` (prefix tokens dropped)."""
    patches = rows[:, prefix:]
    b, n = patches.shape
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return patches.reshape(b, 1, side, side)


def _finish(lowres: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return normalize_range(upsample(lowres, tuple(images.shape[-2:])))


def rawatt_lowres(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    r"""RawAtt at patch resolution: :math:`\bar A_L[\mathrm{CLS}, P:]` ``[B, 1, h, w]``."""
    last = attention_maps(model, images)[-1]
    return _grid(last.mean(dim=1)[:, 0], num_prefix_tokens(model))


def rollout_matrix(attentions: list[torch.Tensor], start_layer: int = 0) -> torch.Tensor:
    r"""Attention rollout :math:`\hat A_L \cdots \hat A_{s+1}` with :math:`\hat A_b = \mathrm{rownorm}(\tfrac12 \bar A_b + \tfrac12 I)`.

    ``attentions`` are head-averaged ``[B, N, N]`` (or per-head ``[B, H, N, N]``, averaged here).
    Rows are renormalized to sum to 1 (a no-op up to rounding for row-stochastic attention).
    """
    mats = [a.mean(dim=1) if a.dim() == 4 else a for a in attentions[start_layer:]]
    if not mats:
        raise ValueError(f"start_layer {start_layer} leaves no block of {len(attentions)}")
    eye = torch.eye(mats[0].shape[-1], dtype=mats[0].dtype, device=mats[0].device)
    joint = None
    for a in mats:
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def _check_start_layer(start_layer: int, blocks: int) -> None:
    ok = isinstance(start_layer, numbers.Integral) and not isinstance(start_layer, bool)
    if not ok or not 0 <= start_layer < blocks:
        raise ValueError(
            f"start_layer must be an integer in [0, {blocks - 1}] ({blocks} blocks), got {start_layer!r}"
        )


def rollout_lowres(
    model: nn.Module, images: torch.Tensor, start_layer: int = START_LAYER
) -> torch.Tensor:
    r"""Rollout at patch resolution: :math:`R[\mathrm{CLS}, P:]` ``[B, 1, h, w]``."""
    attentions = attention_maps(model, images)
    _check_start_layer(start_layer, len(attentions))
    joint = rollout_matrix(attentions, int(start_layer))
    return _grid(joint[:, 0], num_prefix_tokens(model))


@register("rawatt", paper_name="RawAtt", kind="attention", needs_layer=False, families=("vit",))
def rawatt(model, images, target=None, layer=None) -> torch.Tensor:
    r"""RawAtt: the last block's class-token attention over the patches, averaged over heads.

    .. math:: S = n\big(\mathrm{up}(\tfrac{1}{H}\textstyle\sum_h A^h_L[\mathrm{CLS}, P:])\big)

    Class-agnostic (``target`` is ignored). As the "raw attention" baseline of Chefer et al.'s code
    (last block, head mean).
    """
    return _finish(rawatt_lowres(model, images), images)


@register(
    "rollout",
    paper_name="Rollout",
    kind="attention",
    needs_layer=False,
    families=("vit",),
)
def rollout(model, images, target=None, layer=None, start_layer: int = START_LAYER) -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying attention flow in transformers").

    .. math:: \hat A_b = \frac{\tfrac12 \bar A_b + \tfrac12 I}{\mathrm{rowsum}}, \qquad
              R = \hat A_L \hat A_{L-1} \cdots \hat A_{s+1}, \qquad
              S = n\big(\mathrm{up}(R[\mathrm{CLS}, P:])\big)

    (residual identity, head mean, rows renormalized). Class-agnostic (``target`` is ignored).

    Options:
        start_layer: :math:`s`, the number of leading blocks left out of the product (0-based
            index of its first block; 1-based blocks :math:`s+1, \dots, L` as in the formula;
            :math:`s = 0`: all blocks). Default **1**: the paper takes
            Rollout from Chefer et al.'s repository (hila-chefer/Transformer-Explainability), whose
            evaluation script ``generate_visualizations.py`` calls ``generate_rollout(...,
            start_layer=1)``; 0 is the function's own default (and their demo notebook's).
            With 1 the first block's attention, which mixes raw patch embeddings, is left out.
    """
    return _finish(rollout_lowres(model, images, start_layer), images)


# --------------------------------------------------------------------------- LRP rules


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:math:`a / (b + \\epsilon\\,\\mathrm{sign}(b))`, and 0 where :math:`b = 0`."""
    den = b + LRP_EPS * torch.where(b >= 0, 1.0, -1.0).to(b.dtype)
    return torch.where(b == 0, torch.zeros_like(a), a / den)


def lrp_linear(x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    r"""LRP :math:`\alpha_1\beta_0` rule of a linear layer :math:`z = W x` (bias ignored).

    With :math:`x^\pm`, :math:`W^\pm` the positive/negative parts,
    :math:`Z_j = \sum_i W^+_{ji} x^+_i + W^-_{ji} x^-_i \ge 0` (the positive contributions) and
    :math:`R_i = x^+_i \sum_j W^+_{ji} R_j / Z_j + x^-_i \sum_j W^-_{ji} R_j / Z_j`.
    Conserves :math:`\sum_i R_i = \sum_j R_j` (where :math:`Z_j \ne 0`). ``x`` ``[..., D_in]``,
    ``weight`` ``[D_out, D_in]``, ``r`` ``[..., D_out]``.
    """
    px, nx = x.clamp(min=0), x.clamp(max=0)
    pw, nw = weight.clamp(min=0), weight.clamp(max=0)
    z = px @ pw.T + nx @ nw.T
    s = _safe_div(r, z)
    return px * (s @ pw) + nx * (s @ nw)


def lrp_matmul(
    a: torch.Tensor, b: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Relevance of both factors of :math:`Z = a\,b` (batched matrix product), gradient × input, halved.

    :math:`S = R / Z`; :math:`R_a = \tfrac12\, a \odot (S b^\top)`, :math:`R_b = \tfrac12\, b \odot (a^\top S)`.
    Each of :math:`\sum R_a`, :math:`\sum R_b` equals :math:`\tfrac12 \sum R`.
    """
    s = _safe_div(r, a @ b)
    return 0.5 * a * (s @ b.transpose(-1, -2)), 0.5 * b * (a.transpose(-1, -2) @ s)


def lrp_add(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Relevance of both terms of a residual sum :math:`z = a + b`, per sample.

    :math:`R_a = a \odot R / z`, :math:`R_b = b \odot R / z`, then each is rescaled so that its total is
    :math:`\frac{|\sum R_a|}{|\sum R_a| + |\sum R_b|} \sum R` (resp. :math:`b`): the total is conserved.
    Sums are per sample (Chefer et al.'s code sums over the whole batch of one image).
    """
    s = _safe_div(r, a + b)
    ra, rb = a * s, b * s
    dims = tuple(range(1, r.dim()))
    sa, sb = ra.sum(dims, keepdim=True), rb.sum(dims, keepdim=True)
    total = r.sum(dims, keepdim=True)
    denom = sa.abs() + sb.abs()
    ra = ra * _safe_div(_safe_div(sa.abs(), denom) * total, sa)
    rb = rb * _safe_div(_safe_div(sb.abs(), denom) * total, sb)
    return ra, rb


def lrp_clone(*branches: torch.Tensor) -> torch.Tensor:
    """Relevance of a tensor used by several branches (a residual split): the sum of the branches'."""
    out = branches[0]
    for r in branches[1:]:
        out = out + r
    return out


# --------------------------------------------------------------------------- TIBAV


@dataclass
class _Block:
    x: torch.Tensor  # block input [B, N, C]
    n1: torch.Tensor  # norm1(x)
    q: torch.Tensor  # [B, H, N, d], scaled by d^-1/2
    k: torch.Tensor
    v: torch.Tensor
    attn: torch.Tensor  # [B, H, N, N], post-softmax
    ctx: torch.Tensor  # attn @ v as [B, N, C] (proj input)
    out: torch.Tensor  # attention branch output
    mid: torch.Tensor  # x + out
    n2: torch.Tensor  # norm2(mid)
    hidden: torch.Tensor  # GELU(fc1(n2)) (fc2 input)
    mlp: torch.Tensor  # MLP branch output


@dataclass
class LRPTrace:
    """What :func:`lrp_trace` computes (for TIBAV and its tests).

    Attributes:
        logits: ``[B, classes]`` of the explicit forward pass (equal to the model's).
        attentions: ``[B, H, N, N]`` per block.
        gradients: :math:`\\nabla A_b` per block.
        relevances: :math:`R_b`, relevance of each attention map.
        block_totals: ``[L + 1, B]`` total relevance at each block's output (row 0: last block) and at
            the first block's input (last row); all equal :math:`\\sum R_{\\text{logits}}` if conserved.
    """

    logits: torch.Tensor
    attentions: list[torch.Tensor]
    gradients: list[torch.Tensor]
    relevances: list[torch.Tensor]
    block_totals: torch.Tensor


def _check_supported(net: nn.Module) -> None:
    bad = []
    if (
        getattr(net, "global_pool", "token") != "token"
        or getattr(net, "attn_pool", None) is not None
    ):
        bad.append(f"global_pool={getattr(net, 'global_pool', None)!r} (needs 'token')")
    if not isinstance(getattr(net, "fc_norm", nn.Identity()), nn.Identity):
        bad.append("fc_norm")
    for i, blk in enumerate(net.blocks):
        a = blk.attn
        for name, mod in (
            ("ls1", blk.ls1),
            ("ls2", blk.ls2),
            ("attn.q_norm", a.q_norm),
            ("attn.k_norm", a.k_norm),
            ("attn.norm", getattr(a, "norm", nn.Identity())),
            ("mlp.norm", getattr(blk.mlp, "norm", nn.Identity())),
        ):
            if not isinstance(mod, nn.Identity):
                bad.append(f"blocks.{i}.{name}")
        if getattr(a, "gate", None) is not None:
            bad.append(f"blocks.{i}.attn.gate")
    if bad:
        raise NotImplementedError(
            f"TIBAV's relevance propagation covers the plain ViT/DeiT block; unsupported parts: {bad}"
        )


def _forward(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[_Block], torch.Tensor]:
    """The timm ViT forward pass written out, recording what the relevance rules need (eval mode)."""
    t = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
    blocks = []
    for blk in net.blocks:
        a = blk.attn
        n1 = blk.norm1(t)
        bsz, n, _ = n1.shape
        qkv = a.qkv(n1).reshape(bsz, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q = q * a.scale
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        attn = a.attn_drop(attn)
        ctx = (attn @ v).transpose(1, 2).reshape(bsz, n, -1)
        out = a.proj_drop(a.proj(ctx))
        mid = t + blk.drop_path1(out)
        n2 = blk.norm2(mid)
        hidden = blk.mlp.drop1(blk.mlp.act(blk.mlp.fc1(n2)))
        mlp = blk.mlp.drop2(blk.mlp.fc2(hidden))
        blocks.append(_Block(t, n1, q, k, v, attn, ctx, out, mid, n2, hidden, mlp))
        t = mid + blk.drop_path2(mlp)
    pooled = net.norm(t)[:, 0]
    logits = net.head(net.head_drop(net.fc_norm(pooled)))
    return logits, blocks, pooled


def _block_relprop(
    blk: nn.Module, rec: _Block, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance at the block input and of its attention map, from the relevance ``r`` at its output."""
    a = blk.attn
    r_mid, r_mlp = lrp_add(rec.mid, rec.mlp, r)
    r_hidden = lrp_linear(rec.hidden, blk.mlp.fc2.weight, r_mlp)  # GELU: pass-through
    r_n2 = lrp_linear(rec.n2, blk.mlp.fc1.weight, r_hidden)  # norm2: pass-through
    r_mid = lrp_clone(r_mid, r_n2)
    r_x, r_out = lrp_add(rec.x, rec.out, r_mid)
    r_ctx = lrp_linear(rec.ctx, a.proj.weight, r_out)
    bsz, n, _ = r_ctx.shape
    r_ctx = r_ctx.reshape(bsz, n, a.num_heads, a.head_dim).transpose(1, 2)
    r_attn, r_v = lrp_matmul(rec.attn, rec.v, r_ctx)
    # softmax: pass-through; A = q k^T (the scale is a factor of q: no effect on the ratios).
    r_q, r_kt = lrp_matmul(rec.q, rec.k.transpose(-2, -1), r_attn)
    r_qkv = torch.stack([r_q, r_kt.transpose(-2, -1), r_v])  # [3, B, H, N, d]
    r_qkv = r_qkv.permute(1, 3, 0, 2, 4).reshape(bsz, n, -1)
    r_n1 = lrp_linear(rec.n1, a.qkv.weight, r_qkv)  # norm1: pass-through
    return lrp_clone(r_x, r_n1), r_attn


def lrp_trace(model: nn.Module, images: torch.Tensor, target: Target) -> LRPTrace:
    r"""One explicit forward pass, the attention gradients and the LRP relevances of every attention map.

    The relevance at the logits is :math:`\partial \sum_i g_{c_i}(y_i) / \partial y`, i.e. the one-hot
    vector of the class for the logit target (Chefer et al.'s initial relevance). Rules: linear layers
    (qkv, proj, fc1, fc2, head) :func:`lrp_linear` (:math:`\alpha_1\beta_0`, bias ignored); the two
    attention products :func:`lrp_matmul`; residual sums :func:`lrp_add`; the residual split
    :func:`lrp_clone`; LayerNorm, GELU, softmax and dropout pass the relevance through unchanged; the
    class-token pooling puts the head's input relevance on token 0.
    """
    net, standardize = _split(model)
    _check_supported(net)
    x = images if standardize is None else standardize(images)
    x = x.detach().clone().requires_grad_(True)  # frozen weights: the graph needs one leaf
    with torch.enable_grad():
        logits, recs, pooled = _forward(net, x)
        index = torch.arange(images.shape[0], device=logits.device)
        score = target(logits, index).sum()
        grads = torch.autograd.grad(score, [logits] + [r.attn for r in recs])
    r_logits, attn_grads = grads[0].detach(), [g.detach() for g in grads[1:]]
    with torch.no_grad():
        recs = [_Block(*(t.detach() for t in vars(r).values())) for r in recs]
        r_pooled = lrp_linear(pooled.detach(), net.head.weight, r_logits)
        r = torch.zeros_like(recs[-1].x)
        r[:, 0] = r_pooled  # token pooling; the final norm passes relevance through
        totals = [r.sum(dim=(1, 2))]
        relevances: list[torch.Tensor] = []
        for blk, rec in zip(reversed(list(net.blocks)), reversed(recs)):
            r, r_attn = _block_relprop(blk, rec, r)
            relevances.insert(0, r_attn)
            totals.append(r.sum(dim=(1, 2)))
    return LRPTrace(
        logits.detach(), [r.attn for r in recs], attn_grads, relevances, torch.stack(totals)
    )


def tibav_lowres(
    model: nn.Module, images: torch.Tensor, target: Target, start_layer: int = START_LAYER
) -> torch.Tensor:
    r"""TIBAV at patch resolution: :math:`C[\mathrm{CLS}, P:]` ``[B, 1, h, w]`` (see :func:`tibav`)."""
    _check_start_layer(start_layer, len(attention_modules(_split(model)[0])))
    start_layer = int(start_layer)
    with frozen(model):
        trace = lrp_trace(model, images, target)
    n = trace.attentions[0].shape[-1]
    eye = torch.eye(n, dtype=images.dtype, device=images.device)
    joint = None
    for g, rel in list(zip(trace.gradients, trace.relevances))[start_layer:]:
        a = eye + (g * rel).clamp(min=0).mean(dim=1)
        joint = a if joint is None else a @ joint
    if joint is None:
        raise ValueError(f"start_layer {start_layer} leaves no block of {len(trace.gradients)}")
    return _grid(joint[:, 0], num_prefix_tokens(model))


@register(
    "tibav",
    paper_name="TIBAV",
    kind="attention",
    needs_layer=False,
    families=("vit",),
)
def tibav(model, images, target, layer=None, start_layer: int = START_LAYER) -> torch.Tensor:
    r"""TIBAV (Chefer, Gur & Wolf, CVPR 2021, "Transformer Interpretability Beyond Attention Visualization").

    .. math:: \tilde A_b = I + \mathbb{E}_h\big[(\nabla A_b \odot R_b)^+\big], \qquad
              C = \tilde A_L \cdots \tilde A_{s+1}, \qquad S = n\big(\mathrm{up}(C[\mathrm{CLS}, P:])\big),

    with :math:`\nabla A_b = \partial y_c / \partial A_b` and :math:`R_b` the LRP relevance of the
    attention map, propagated from the one-hot relevance at the logits through the whole network by the
    rules of :func:`lrp_trace` (:math:`\alpha_1\beta_0` linear layers, halved gradient × input at the two
    attention products, residual sums split by the magnitude of each term's relevance, residual splits
    summed, LayerNorm/GELU/softmax pass-through). No row normalization (unlike Rollout).

    This is the full relevance propagation of the CVPR paper, written from the paper (the reference code
    is CUDA-only and runs one image at a time); batched, with the residual split's totals per image.
    Not the ICCV 2021 "Generic Attention-model Explainability" rule (gradient × attention, no LRP).

    Options:
        start_layer: :math:`s`, the number of leading blocks left out of the product (1-based
            blocks :math:`s+1, \dots, L` in the formula). Default **1**, as Chefer et al.'s evaluation script
            ``generate_visualizations.py`` passes to ``generate_LRP(..., method="transformer_attribution",
            start_layer=1)``; 0 (all blocks) is that function's own default. See :func:`rollout`.
    """
    return _finish(tibav_lowres(model, images, target, start_layer), images)
