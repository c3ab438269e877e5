"""Vision-transformer models (paper_code/models/vit.py): loading, weights, attention observability, layer.

Tiny random timm ViTs built offline; one random-weight ViT-B is saved and reloaded with ``weights=PATH``
(a single one-image forward pass). No download is attempted anywhere.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_vit import tiny_vit

import paper_code as pc
from paper_code.methods import attention as att
from paper_code.methods.hooks import FeatureLayer, forward_with_gradients, tokens_to_grid
from paper_code.methods.targets import ClassLogit
from paper_code.models import WeightsUnavailableError, fuse_for_inference
from paper_code.models import vit as vitmod

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def model():
    return tiny_vit(depth=2, affine=False)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_wrapped_tiny_vit_metadata(model):
    assert model.family == "vit" and model.reshape_transform is tokens_to_grid
    assert model.target_layer_name == "blocks.1.norm1"
    assert model.target_layer is model.net.blocks[-1].norm1
    assert all(not blk.attn.fused_attn for blk in model.net.blocks)


def test_fused_and_unfused_attention_give_the_same_logits(model, images):
    fused = copy.deepcopy(model)
    for blk in fused.net.blocks:
        blk.attn.fused_attn = True
    with torch.no_grad():
        a, b = model(images), fused(images)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() < 1e-5


def test_attention_is_captured_only_without_fused_attention(model, images):
    maps = att.attention_maps(model, images)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 65, 65)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(3, 2, 65), rtol=0, atol=1e-5)
    # capture_attention switches fused attention off itself, and restores the flag afterwards.
    fused = copy.deepcopy(model)
    for blk in fused.net.blocks:
        blk.attn.fused_attn = True
    torch.testing.assert_close(att.attention_maps(fused, images)[-1], maps[-1])
    assert all(blk.attn.fused_attn for blk in fused.net.blocks)
    # A plain hook on attn_drop never fires with fused attention (why it is switched off).
    calls = []
    h = fused.net.blocks[-1].attn.attn_drop.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        fused(images)
    h.remove()
    assert calls == []


def test_norm1_gradients_reach_patch_tokens_but_block_output_gradients_do_not(model, images):
    """The paper's layer (blocks[-1].norm1) feeds the last attention, where the class token reads the
    patches: non-zero patch gradients. The last block's *output* reaches the head only through the
    class token (final LayerNorm is per token): patch gradients are exactly zero, so every gradient
    CAM at that layer is an all-zero map (the classic bug, pytorch-grad-cam #363/#513)."""
    target = ClassLogit(torch.tensor([1, 2, 3]))
    layer = FeatureLayer(model.net.blocks[-1].norm1, tokens_to_grid)
    _, g = forward_with_gradients(model, images, target, layer)
    assert g.shape == (3, 32, 8, 8)
    assert (g.abs().amax(dim=(1, 2, 3)) > 1e-6).all()
    assert (g.abs().sum(dim=1) > 0).float().mean() == 1.0  # every patch position
    out_layer = FeatureLayer(model.net.blocks[-1], tokens_to_grid)
    _, g_out = forward_with_gradients(model, images, target, out_layer)
    assert torch.count_nonzero(g_out) == 0


def test_distilled_prefix_tokens_are_dropped():
    torch.manual_seed(0)
    net = timm.create_model(
        "deit_tiny_distilled_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=1,
        num_heads=2,
        num_classes=3,
    )
    model = vitmod.wrap_timm_vit("tiny_deit_distilled", net)
    tokens = torch.randn(2, 2 + 16, 16)
    assert model.reshape_transform(tokens).shape == (2, 16, 4, 4)
    torch.testing.assert_close(model.reshape_transform(tokens), tokens_to_grid(tokens, 2))
    assert att.num_prefix_tokens(model) == 2


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    """A random ViT-B/16 state dict file (random normal tensors with timm's names and shapes; built on
    the meta device, so no slow initialization). DeiT-B/16 has the same names and shapes."""
    with torch.device("meta"):
        net = timm.create_model("vit_base_patch16_224", pretrained=False)
    g = torch.Generator().manual_seed(0)
    state = {k: 0.02 * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "vit_b_random.pth"
    torch.save(state, path)
    return path


def test_vit_b_weights_file_and_fuse_is_a_no_op(vit_b_file):
    """ViT-B loaded with weights=PATH; fuse_for_inference (load_model's default) changes nothing: no
    batch norm in a ViT. One forward pass of one image, with the attention captured."""
    model = pc.load_model("vit_base_patch16_224", weights=str(vit_b_file), fuse=False)
    assert model.weights_id.startswith("sha256:") and model.weight_tag == str(vit_b_file)
    assert model.family == "vit" and model.target_layer_name == "blocks.11.norm1"
    assert model.target_layer is model.net.blocks[11].norm1
    assert model.reshape_transform is tokens_to_grid and model.net.num_prefix_tokens == 1
    assert torch.equal(model.standardize.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(model.standardize.std.flatten(), torch.full((3,), 0.5))
    assert all(not blk.attn.fused_attn for blk in model.net.blocks)
    types = [type(m) for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fuse_for_inference(model) is model
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    saved = torch.load(vit_b_file, weights_only=True)
    assert all(torch.equal(model.net.state_dict()[k], saved[k]) for k in saved)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), att.capture_attention(model) as cap:
        logits = model(x)
        maps = cap.tensors()
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert len(maps) == 12 and maps[11].shape == (1, 12, 197, 197)


def test_deit_b_metadata_without_forward(vit_b_file):
    model = pc.load_model("deit_base_patch16_224", weights=str(vit_b_file))
    assert model.family == "vit" and model.target_layer_name == "blocks.11.norm1"
    assert model.net.num_prefix_tokens == 1 and model.reshape_transform is tokens_to_grid
    torch.testing.assert_close(
        model.standardize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406])
    )
    torch.testing.assert_close(model.standardize.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert model.num_classes == 1000 and model.weight_tag == str(vit_b_file)


def test_weight_tags_are_pinned():
    assert vitmod.WEIGHT_TAGS == {
        "vit_base_patch16_224": "vit_base_patch16_224.orig_in21k_ft_in1k",
        "deit_base_patch16_224": "deit_base_patch16_224.fb_in1k",
    }
    for name, tag in vitmod.WEIGHT_TAGS.items():
        assert tag in timm.list_pretrained(f"{name}*")
        cfg = timm.models.get_pretrained_cfg(tag)
        mean, std = vitmod.STANDARDIZATION[name]
        assert tuple(cfg.mean) == tuple(mean) and tuple(cfg.std) == tuple(std)
        assert name in pc.MODELS


def test_offline_without_cache_gives_a_clear_error(tmp_path, monkeypatch):
    """Empty hub cache and no network (huggingface_hub's offline mode: no request is made)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(vitmod, "hub_cache_dir", lambda: tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError) as info:
        pc.load_model("vit_base_patch16_224")
    msg = str(info.value)
    assert "vit_base_patch16_224.orig_in21k_ft_in1k" in msg and "model.safetensors" in msg
    assert str(tmp_path) in msg and "weights=" in msg
    assert info.value.__suppress_context__  # no huggingface/urllib traceback chained
    with pytest.raises(WeightsUnavailableError, match="deit_base_patch16_224.fb_in1k"):
        pc.load_model("deit_base_patch16_224")


def test_cached_hub_weights_are_used_without_network(tmp_path, monkeypatch):
    """A file in the hub cache layout (refs/main -> snapshots/<rev>/model.safetensors) is found offline."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(vitmod, "hub_cache_dir", lambda: tmp_path)
    tag = "vit_base_patch16_224.orig_in21k_ft_in1k"
    repo = tmp_path / f"models--timm--{tag}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    state = {"w": torch.arange(3.0)}
    save_file(state, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    got = vitmod._hub_weights(tag)
    assert torch.equal(got["w"], state["w"])


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pc.load_model("vit_base_patch16_224", weights="nope.pth")
