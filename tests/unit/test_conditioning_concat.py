"""Concat routes: masked image + mask, low-resolution image, one-hot semantic map on the latent grid."""

import pytest
import torch
import torch.nn.functional as F

from ldmkit.conditioning import (
    ConcatConfig,
    ConditionerConfig,
    TextEncoderConfig,
    build_conditioner,
    low_res_concat,
    masked_image_concat,
    one_hot_map,
    random_inpainting_mask,
    semantic_concat,
)
from ldmkit.errors import ConfigError, DataError


def _first_stage(factor, channels=3):
    """A stand-in encoder: average pooling by ``factor``, channels tiled/cut to ``channels``."""
    def encode(image):
        pooled = F.avg_pool2d(image, factor)  # [B, 3, H/f, W/f]
        return pooled.repeat(1, (channels + 2) // 3, 1, 1)[:, :channels]
    return encode


@pytest.mark.parametrize("factor", [4, 8])
def test_masked_image_shapes_and_mask(factor):
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :16, :] = 1.0  # fill in the top half
    mask[1, :, 20, 20] = 1.0  # one pixel marks its whole latent cell as unknown
    out = masked_image_concat(image, mask, _first_stage(factor, channels=4)).concat
    h = 32 // factor
    assert out.shape == (2, 5, h, h)
    assert torch.all(out[:, :4, : h // 2] == 0)  # the masked region was blanked before encoding
    assert torch.allclose(out[0, :4, h // 2:], _first_stage(factor, 4)(image)[0, :, h // 2:])
    assert torch.all(out[:, 4, : h // 2] == 1) and out[0, 4, h // 2:].sum() == 0
    assert out[1, 4, h // 2:].sum() == 1 and out[1, 4, 20 // factor, 20 // factor] == 1


@pytest.mark.parametrize("factor", [4, 8])
def test_low_res_resized_to_latent_grid(factor):
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    out = low_res_concat(low, (32 // factor, 32 // factor)).concat
    assert out.shape == (2, 3, 32 // factor, 32 // factor) and out.abs().max() <= 1
    flat = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(low_res_concat(flat, (4, 4)).concat, torch.full((1, 3, 4, 4), 0.25), atol=1e-5)
    encoded = low_res_concat(low, (32 // factor,) * 2, encode=_first_stage(factor, 4), downsample_factor=factor)
    assert encoded.concat.shape == (2, 4, 32 // factor, 32 // factor)


def test_one_hot_map_correctness():
    seg = torch.tensor([[[0, 1], [2, -1]]])
    onehot = one_hot_map(seg, 3)
    assert onehot.shape == (1, 3, 2, 2)
    assert onehot[0, :, 0, 0].tolist() == [1, 0, 0] and onehot[0, :, 0, 1].tolist() == [0, 1, 0]
    assert onehot[0, :, 1, 0].tolist() == [0, 0, 1] and onehot[0, :, 1, 1].sum() == 0  # -1 = unlabelled
    with pytest.raises(DataError, match=r"0\.\.2"):
        one_hot_map(torch.tensor([[[3]]]), 3)


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("mode", ["nearest", "area"])
def test_semantic_map_on_latent_grid(factor, mode):
    seg = torch.zeros(2, 32, 32, dtype=torch.long)
    seg[:, :, 16:] = 3  # right half class 3
    seg[1, :16, :16] = 1
    out = semantic_concat(seg, 5, (32 // factor, 32 // factor), mode).concat
    h = 32 // factor
    assert out.shape == (2, 5, h, h)
    assert torch.allclose(out.sum(1), torch.ones(2, h, h))
    assert torch.all(out[:, 3, :, h // 2:] == 1) and torch.all(out[0, 0, :, : h // 2] == 1)
    assert torch.all(out[1, 1, : h // 2, : h // 2] == 1)


def test_semantic_area_mode_gives_fractions():
    seg = torch.tensor([[[0, 1], [1, 1]]])
    out = semantic_concat(seg, 2, (1, 1), "area").concat
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.25, 0.75]))


def test_random_inpainting_mask():
    mask = random_inpainting_mask(8, 16, 24, torch.Generator().manual_seed(0))
    assert mask.shape == (8, 1, 16, 24) and set(mask.unique().tolist()) <= {0.0, 1.0}
    fraction = mask.mean(dim=(1, 2, 3))
    assert torch.all(fraction > 0.05) and torch.all(fraction < 0.6)


@pytest.mark.parametrize("factor", [4, 8])
def test_conditioner_with_text_and_masked_image(factor):
    torch.manual_seed(0)
    cfg = ConditionerConfig(kind="text", embed_dim=16, drop_prob=0.0,
                            text=TextEncoderConfig(width=16, depth=1, heads=2),
                            concat=ConcatConfig(kind="masked_image", downsample_factor=factor, latent_channels=4))
    cond = build_conditioner(cfg, captions=["a cat", "a dog"])
    assert cond.concat_channels == 5
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": ["a cat", "a dog"]}
    with pytest.raises(ConfigError, match="first stage"):
        cond.encode(batch)
    cond.set_first_stage(_first_stage(factor, 4))
    out = cond.encode(batch, generator=torch.Generator().manual_seed(0))
    assert out.context.shape[0] == 2 and out.concat.shape == (2, 5, 32 // factor, 32 // factor)
    assert list(cond.state_dict()) == [k for k in cond.state_dict() if k.startswith("encoder.")]


def test_conditioner_low_res_from_image_or_batch():
    cfg = ConditionerConfig(concat=ConcatConfig(kind="low_res", downsample_factor=4, low_res_factor=4))
    cond = build_conditioner(cfg)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    derived = cond.encode({"image": image}).concat
    assert derived.shape == (2, 3, 8, 8)
    given = cond.encode({"low_res": F.avg_pool2d(image, 4)}).concat
    assert given.shape == (2, 3, 8, 8)
    with pytest.raises(DataError):
        cond.encode({"image": torch.zeros(1, 3, 30, 30)})
    with pytest.raises(DataError, match="segmentation"):
        build_conditioner(ConditionerConfig(concat=ConcatConfig(kind="semantic", semantic_classes=3))).encode(
            {"image": image})
