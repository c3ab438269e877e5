"""Model loading: offline default, torchvision layers, weights files, clear errors."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import paper_code as pc
from paper_code import models
from paper_code.hooks import capture


@pytest.fixture(scope="module")
def lite0():
    return pc.load_model("efficientnet_lite0")


def test_efficientnet_lite0_wrapper_matches_package_forward(lite0):
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = lite0(x)
        theirs = lite0.net.backbone((x * 255 - 127) / 128)  # the package's own forward
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_efficientnet_lite0_target_layer_fires_once_with_head_features(lite0):
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad(), capture(lite0.target_layer) as cap:
        lite0(x)
        calls, feats = cap.calls, cap.output
    assert calls == 1
    assert feats.shape == (1, 1280, 7, 7)
    assert feats.min() >= 0 and feats.max() <= 6  # after the head's ReLU6
    with torch.no_grad():
        ref = lite0.net.backbone.extract_features((x * 255 - 127) / 128)
    # Same operations; only kernel selection (global oneDNN state left by other tests) may differ.
    assert torch.allclose(feats, ref, rtol=1e-4, atol=1e-4)


def test_categories_and_transform(lite0):
    assert lite0.num_classes == 1000 and lite0.categories[281] == "tabby"
    from PIL import Image

    img = Image.new("RGB", (400, 300), (255, 0, 0))
    t = lite0.transform(img)
    assert t.shape == (3, 224, 224) and t[0].min() == 1.0 and t[1].max() == 0.0


@pytest.mark.parametrize(
    "name, layer, shape",
    [("resnet50", "layer4.2", (2048, 7, 7)), ("vgg16_bn", "features.42", (512, 14, 14))],
)
def test_torchvision_paper_layers(name, layer, shape):
    model = pc.load_model(name, weights="random")
    assert model.target_layer_name == layer
    with torch.no_grad(), capture(model.target_layer) as cap:
        model(torch.rand(1, 3, 224, 224))
        assert cap.output.shape[1:] == shape
    if name == "vgg16_bn":
        assert isinstance(model.target_layer, torch.nn.ReLU)
    assert torch.allclose(model.standardize.mean.flatten(), torch.tensor(models.IMAGENET_MEAN))


def test_weights_from_a_local_state_dict(tmp_path):
    src = pc.load_model("resnet50", weights="random")
    path = tmp_path / "r50.pth"
    torch.save(src.net.state_dict(), path)
    loaded = pc.load_model("resnet50", weights=path)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(src(x), loaded(x))


def test_offline_torchvision_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(models.WeightsUnavailableError) as info:
        pc.load_model("vgg16_bn")
    msg = str(info.value)
    assert "vgg16_bn-6c64b313.pth" in msg and "weights=" in msg and str(tmp_path) in msg
    assert info.value.__suppress_context__  # no urllib traceback chained


def test_missing_weights_file_and_unknown_model():
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pc.load_model("tiny", weights="nope.pth")
    with pytest.raises(ValueError, match="efficientnet_lite0.*resnet50.*vgg16_bn"):
        pc.load_model("alexnet")


def test_layer_lookup_and_unstandardized_switch():
    model = pc.load_model("tiny")
    assert model.get_layer("features.7") is model.target_layer
    with pytest.raises(ValueError, match="no layer 'features.99'"):
        model.get_layer("features.99")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        standardized = model(x)
        with models.without_standardization(model):
            raw = model(x)
            assert torch.equal(raw, model.net(x))
        assert torch.equal(model(x), standardized)
