"""Feature networks: EfficientNet-Lite0 (structure, strict loading, real-photo check) and FID Inception-v3."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ldmkit.errors import AssetMissingError, CheckpointError, ConfigError
from ldmkit.evaluation.efficientnet_lite import EfficientNetLite0, EffLite0Features, SameConv2d, load_efficientnet_lite0
from ldmkit.evaluation.extractor import FeatureExtractor, build_feature_extractor, metric_names
from ldmkit.evaluation.inception import (
    FIDInceptionV3,
    InceptionFeatures,
    find_inception_weights,
    load_fid_inception,
    resize_bilinear_tf1,
)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_efficientnet_lite0_has_the_layout_of_the_weights_file():
    state = EfficientNetLite0().state_dict()
    assert len(state) == 296  # keys of efficientnet-lite0-57934424.pth, num_batches_tracked included
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    shapes = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_fc.weight": (1000, 1280),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "_blocks.0._expand_conv.weight" not in state  # expansion 1: no expand conv
    assert all(m.eps == 1e-3 for m in EfficientNetLite0().modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_same_padding_matches_tensorflow():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    x = torch.randn(1, 1, 8, 9)
    out = conv(x)
    assert out.shape[-2:] == (4, 5)  # ceil(8/2), ceil(9/2)
    # TF pads the extra pixel at the bottom/right: 8 → pad (0, 1); 9 → pad (1, 1).
    expected = F.conv2d(F.pad(x, [1, 1, 0, 1]), conv.weight, stride=2)
    torch.testing.assert_close(out, expected)


def test_strict_loading_reports_missing_and_misshaped_keys(tmp_path):
    state = {k: v.clone() for k, v in EfficientNetLite0().state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    loaded = load_efficientnet_lite0(good)
    torch.testing.assert_close(loaded._fc.bias, state["_fc.bias"])
    missing = dict(state)
    del missing["_blocks.7._bn1.running_var"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing 1 \(_blocks.7._bn1.running_var\)"):
        load_efficientnet_lite0(tmp_path / "missing.safetensors")
    wrong = dict(state, **{"_fc.weight": torch.zeros(10, 1280)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_efficientnet_lite0(tmp_path / "wrong.safetensors")


def test_efflite0_extractor_interface_with_random_weights(tmp_path):
    save_file(EfficientNetLite0().state_dict(), str(tmp_path / "model.safetensors"))
    extractor = build_feature_extractor("efflite0", weights=tmp_path)
    assert isinstance(extractor, FeatureExtractor)
    assert (extractor.name, extractor.resolution, extractor.dim) == ("efflite0", 224, 1280)
    images = torch.rand(2, 3, 40, 56) * 2 - 1
    features, logits = extractor.features_and_logits(images)
    assert features.shape == (2, 1280) and features.dtype == torch.float32 and logits.shape == (2, 1000)
    torch.testing.assert_close(extractor(images[:1]), features[:1], rtol=1e-4, atol=1e-5)
    assert metric_names(extractor.label)["fd"] == "FD-EffLite0"
    with pytest.raises(ConfigError, match="feature network"):
        build_feature_extractor("inceptoin")


def _imagenet_crop(image: np.ndarray) -> torch.Tensor:
    """The classic ImageNet evaluation view: shorter side to 256, centre crop 224 → [1, 3, 224, 224] in [-1, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    scale = 256 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                      align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    return x[..., top:top + 224, left:left + 224] / 127.5 - 1


@pytest.mark.assets
def test_efflite0_classifies_real_photos():
    skimage_data = pytest.importorskip("skimage.data")
    try:
        extractor = build_feature_extractor("efflite0")
    except AssetMissingError:
        pytest.skip("efficientnet-lite0 asset not fetched (ldm assets fetch efficientnet-lite0)")
    assert isinstance(extractor, EffLite0Features)
    coffee = extractor.logits(_imagenet_crop(skimage_data.coffee())).softmax(-1)[0]
    assert int(coffee.argmax()) == 967 and float(coffee[967]) > 0.9  # espresso, ≈ 0.95
    cat = extractor.logits(_imagenet_crop(skimage_data.chelsea())).softmax(-1)[0]
    assert int(cat.argmax()) in (281, 282) and float(cat[281] + cat[282]) > 0.5  # tabby / tiger cat
    # The feature protocol (whole image squeezed to 224 px, no crop) still sees an espresso.
    whole = torch.from_numpy(skimage_data.coffee()).permute(2, 0, 1)[None].float() / 127.5 - 1
    features, logits = extractor.features_and_logits(whole)
    assert int(logits.argmax()) == 967 and features.shape == (1, 1280) and float(features.min()) >= 0


def test_fid_inception_structure():
    network = FIDInceptionV3()
    # torchvision's Inception-v3 without the auxiliary head has 23,834,568 parameters with 1000 classes;
    # the FID graph has 1008 classes.
    assert _params(network) == 23_834_568 + 8 * 2048 + 8
    keys = network.state_dict().keys()
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_mean" in keys and "fc.weight" in keys
    assert not any(k.startswith("AuxLogits") for k in keys)


def test_tf1_bilinear_resize_matches_its_definition():
    x = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7) ** 1.5
    out = resize_bilinear_tf1(x, (3, 11)).numpy()[0, 0]
    src = x.numpy()[0, 0]
    for i in range(3):
        for j in range(11):
            sy, sx = i * 5 / 3, j * 7 / 11
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            dy, dx = sy - y0, sx - x0
            top = src[y0, x0] + (src[y0, x1] - src[y0, x0]) * dx
            bottom = src[y1, x0] + (src[y1, x1] - src[y1, x0]) * dx
            assert out[i, j] == pytest.approx(top + (bottom - top) * dy, rel=1e-5)
    torch.testing.assert_close(resize_bilinear_tf1(x, (5, 7)), x)


def test_fid_inception_loading_and_forward(tmp_path, monkeypatch):
    state = FIDInceptionV3().state_dict()
    old_style = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(old_style, path)
    with pytest.raises(CheckpointError, match="not the standard FID Inception weights"):
        load_fid_inception(path)
    network = load_fid_inception(path, check_hash=False)  # files without BN step counters load too
    extractor = InceptionFeatures(network)
    pool3, logits = extractor.features_and_logits(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert pool3.shape == (1, 2048) and logits.shape == (1, 1008)
    assert metric_names(extractor.label) == {"fd": "FID", "kd": "KID", "precision": "Precision-Inception",
                                             "recall": "Recall-Inception", "is": "IS"}

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(AssetMissingError, match="cannot be fetched offline"):
        find_inception_weights()
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "weights-inception-2015-12-05-6726825d.pth").write_bytes(path.read_bytes())
    assert find_inception_weights().name == "weights-inception-2015-12-05-6726825d.pth"
    assert find_inception_weights(tmp_path) == path
