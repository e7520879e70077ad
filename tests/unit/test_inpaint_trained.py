"""Trained inpainting (paper §4.5): LaMa-style training masks, the masked-image condition reaching the UNet,
exact compositing, input validation, and a few-step `ldm train diffusion` → `ldm inpaint` round trip."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
from ldmkit.cli.main import main as ldm
from ldmkit.conditioning import (
    ConcatConfig,
    ConditionerConfig,
    TextEncoderConfig,
    build_conditioner,
    masked_image_concat,
)
from ldmkit.data.masks import MASK_KINDS, MaskConfig, random_masks, sample_mask
from ldmkit.config import from_dict
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError, DataError
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines import InpaintPipeline
from ldmkit.pipelines.text2img import seeded_noise

# --- masks ---------------------------------------------------------------------------------------------------------


def _bbox_fill(mask: torch.Tensor) -> float:
    """Fraction of the mask's bounding box that is masked (1 for a single rectangle)."""
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    return float(mask.sum() / box)


def test_masks_are_binary_shaped_and_deterministic_per_seed():
    a = random_masks(6, 24, 40, generator=torch.Generator().manual_seed(3))
    b = random_masks(6, 24, 40, generator=torch.Generator().manual_seed(3))
    c = random_masks(6, 24, 40, generator=torch.Generator().manual_seed(4))
    assert a.shape == (6, 1, 24, 40) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = random_masks(2, 16, 16)
    torch.manual_seed(5)
    assert torch.equal(d, random_masks(2, 16, 16))  # no generator: torch's global one, seeded as usual


@pytest.mark.parametrize("size", [32, 96])
def test_mask_coverage_stays_in_range_and_spreads_over_it(size):
    generator = torch.Generator().manual_seed(0)
    draws = [sample_mask(size, size, generator=generator) for _ in range(150)]
    coverage = torch.tensor([mask.mean().item() for mask, _ in draws])
    assert coverage.min() >= 0.1 and coverage.max() <= 0.6
    assert 0.2 < coverage.mean() < 0.45  # not collapsed onto one end of the range
    assert (coverage < 0.2).any() and (coverage > 0.45).any()
    kinds = [kind for _, kind in draws]
    for kind in MASK_KINDS:  # strokes and boxes, thick and thin, all occur
        assert kinds.count(kind) >= 10, kinds.count(kind)


def test_each_kind_draws_its_own_shape():
    one = {"max_elements": 1, "coverage": (0.01, 0.99)}
    boxes = MaskConfig(thick_strokes=0, thin_strokes=0, large_boxes=1, thin_boxes=0, **one)
    thin = MaskConfig(thick_strokes=0, thin_strokes=0, large_boxes=0, thin_boxes=1, **one)
    strokes = MaskConfig(thick_strokes=1, thin_strokes=0, large_boxes=0, thin_boxes=0, **one)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        box, kind = sample_mask(64, 64, boxes, generator)
        assert kind == "large_boxes" and _bbox_fill(box) == 1.0  # one solid rectangle
        long, kind = sample_mask(64, 64, thin, generator)
        rows, cols = long.any(1).sum().item(), long.any(0).sum().item()
        assert kind == "thin_boxes" and _bbox_fill(long) == 1.0 and max(rows, cols) >= 3 * min(rows, cols)
    fills = [_bbox_fill(sample_mask(64, 64, strokes, generator)[0]) for _ in range(20)]
    assert np.median(fills) < 0.8  # a polyline with turns does not fill its bounding box


def test_mask_config_is_validated_and_sits_in_concat_config():
    with pytest.raises(ConfigError, match="reversed"):
        MaskConfig(thick_width=(0.3, 0.1))
    with pytest.raises(ConfigError, match="must be positive"):
        MaskConfig(thick_strokes=0, thin_strokes=0, large_boxes=0, thin_boxes=0)
    with pytest.raises(ConfigError, match="coverage"):
        MaskConfig(coverage=(0.4, 0.4))
    cfg = from_dict(ConditionerConfig, {"concat": {"kind": "masked_image", "masks": {"coverage": [0.2, 0.3]}}})
    assert cfg.concat.masks.coverage == (0.2, 0.3)


def test_masked_image_route_draws_masks_from_the_config():
    boxes = MaskConfig(thick_strokes=0, thin_strokes=0, large_boxes=1, thin_boxes=0, max_elements=1,
                       coverage=(0.01, 0.99))
    cfg = ConditionerConfig(drop_prob=0.0, concat=ConcatConfig(kind="masked_image", downsample_factor=2,
                                                               latent_channels=3, masks=boxes))
    conditioner = build_conditioner(cfg, first_stage=lambda x: F.avg_pool2d(x, 2))
    image = torch.rand(3, 3, 16, 16) * 2 - 1
    concat = conditioner.encode({"image": image}, generator=torch.Generator().manual_seed(7)).concat
    expected = random_masks(3, 16, 16, boxes, torch.Generator().manual_seed(7))
    assert concat.shape == (3, 4, 8, 8)
    assert torch.equal(concat[:, 3:], F.max_pool2d(expected, 2))  # the mask channel is the drawn mask
    assert torch.allclose(concat[:, :3], F.avg_pool2d(image * (1 - expected), 2))


# --- the pipeline ----------------------------------------------------------------------------------------------------


def _pipeline(kind: str = "none") -> InpaintPipeline:
    """A tiny untrained inpainting model (f = 2, 3 latent channels) in memory."""
    torch.manual_seed(0)
    autoencoder = build_autoencoder(AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2),
                                                      num_res_blocks=1, latent_channels=3, mid_attention=False))
    autoencoder.eval()
    text = {}
    if kind == "text":
        text = {"kind": "text", "embed_dim": 16, "text": TextEncoderConfig(width=16, depth=1, heads=2)}
    cfg = ConditionerConfig(**text, concat=ConcatConfig(kind="masked_image", downsample_factor=2, latent_channels=3))
    conditioner = build_conditioner(cfg, captions=["a red circle"], first_stage=autoencoder.encode).eval()
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(2,), num_head_channels=8, context_dim=conditioner.context_dim,
                           concat_channels=conditioner.concat_channels)).eval()
    return InpaintPipeline(LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()),
                                                conditioner=conditioner, autoencoder=autoencoder, latent_size=(8, 8)))


@pytest.fixture(scope="module")
def pipe() -> InpaintPipeline:
    return _pipeline()


def _image(seed: int = 0) -> torch.Tensor:
    values = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(seed))
    return values.float() / 127.5 - 1  # exactly v / 127.5 − 1, as an 8-bit file reads


def _mask() -> torch.Tensor:
    mask = torch.zeros(16, 16)
    mask[2:9, 5:14] = 1
    return mask


FAST = {"steps": 3, "sampler": "ddim", "output": "tensor", "progress": False}


def _record_unet_inputs(pipe: InpaintPipeline) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []
    handle = pipe.unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen, handle


def test_masked_image_and_mask_reach_the_unet_and_sampling_starts_from_noise(pipe):
    image, mask = _image(), _mask()
    seen, handle = _record_unet_inputs(pipe)
    try:
        pipe(image, mask, seed=4, **FAST)
    finally:
        handle.remove()
    assert len(seen) == 3 and all(x.shape == (1, 3 + 4, 8, 8) for x in seen)  # z_t ⊕ [E(x ⊙ (1 − m)), m↓]
    expected = masked_image_concat(image, mask[None, None], pipe.autoencoder.encode).concat
    for x in seen:
        assert torch.allclose(x[:, 3:], expected, atol=1e-6)
    assert torch.equal(seen[0][:, 6], F.max_pool2d(mask[None, None], 2)[:, 0])
    assert torch.allclose(seen[0][:, :3], seeded_noise([4], (3, 8, 8)), atol=1e-6)  # starts from pure noise
    # No blending: the known latent cells end where the model takes them, not pinned to the encoded input
    # (as the zero-shot route would).
    steps: list[torch.Tensor] = []
    pipe(image, mask, seed=4, callback=lambda step: steps.append(step.x), **FAST)
    keep = (F.max_pool2d(mask[None, None], 2) == 0).expand(1, 3, 8, 8)
    assert not torch.allclose(steps[-1][keep], pipe.encode_image(image)[keep], atol=1e-2)
    # What lies under the mask does not reach the model.
    changed = torch.where(mask.bool(), -image, image)
    seen, handle = _record_unet_inputs(pipe)
    try:
        pipe(changed, mask, seed=4, **FAST)
    finally:
        handle.remove()
    assert torch.allclose(seen[0][:, 3:], expected, atol=1e-6)


def test_output_keeps_unmasked_pixels_exactly(pipe):
    image, mask = _image(1), _mask()
    out = pipe(image, mask, n=2, seed=2, **FAST)
    assert out.shape == (2, 3, 16, 16)
    keep = ~mask.bool().expand_as(out)
    assert torch.equal(out[keep], image.expand_as(out)[keep])
    assert not torch.allclose(out[~keep], image.expand_as(out)[~keep], atol=0.05)
    assert torch.equal(out, pipe(image, mask, n=2, seed=2, **FAST))  # seeded
    assert not torch.equal(out[0], out[1])  # image i uses seed + i


def test_text_inpainting_model_takes_an_optional_prompt_and_guides_with_the_concat_in_both_branches():
    pipe = _pipeline("text")
    image, mask = _image(2), _mask()
    seen, handle = _record_unet_inputs(pipe)
    try:
        with_prompt = pipe(image, mask, "a red circle", guidance=3.0, **FAST)
        without = pipe(image, mask, guidance=3.0, **FAST)
    finally:
        handle.remove()
    assert with_prompt.shape == without.shape == (1, 3, 16, 16)
    assert seen[0].shape[0] == 2  # conditional and unconditional passes in one batch
    assert torch.equal(seen[0][0, 3:], seen[0][1, 3:])  # both carry the masked image and the mask


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(8, 16), "the mask is 16x8 pixels but the image is 16x16"),
    (torch.full((16, 16), 0.5), "not black and white"),
])
def test_bad_masks_are_one_line_errors(pipe, mask, message):
    with pytest.raises(DataError, match=message) as info:
        pipe(_image(), mask, **FAST)
    assert "\n" not in str(info.value)


def test_prompt_is_refused_by_a_model_without_text(pipe):
    with pytest.raises(ConfigError, match="not on text"):
        pipe(_image(), _mask(), "a red circle", **FAST)


# --- training and the command ----------------------------------------------------------------------------------------

SYNTHETIC = ["data.source=synthetic", "data.resolution=16", "data.synthetic.count=16", "data.synthetic.supersample=1",
             "data.synthetic.shapes=[circle, square]", "data.synthetic.max_objects=1"]
TRAIN = ["train.device=cpu", "train.progress=false", "train.image_every=0", "train.log_every=1", "train.batch_size=4",
         "train.checkpoint_every=0", "train.steps=2", "train.warmup_steps=0", "train.num_workers=0"]
TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1, 2]", "unet.attention_resolutions=[2]",
             "unet.num_head_channels=8", "unet.num_res_blocks=1"]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, make_first_stage, recording_diffusion_losses):
    """`ldm train diffusion --config fluent-emoji-64-inpaint`, 2 steps on the synthetic set, tiny f = 4 first stage."""
    autoencoder = make_first_stage((1, 1, 2))
    out = tmp_path_factory.mktemp("ldm-inpaint")
    with recording_diffusion_losses() as losses:
        assert ldm(["train", "diffusion", "--config", "fluent-emoji-64-inpaint", f"autoencoder={autoencoder}",
                    f"train.out={out}", *SYNTHETIC, *TRAIN, *TINY_UNET]) == 0
    return out / "model", losses


def test_training_runs_with_a_finite_loss(trained_model):
    model, losses = trained_model
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert InpaintPipeline.load(model, device="cpu").trained_for_inpainting


def test_inpaint_command_with_a_trained_model(tmp_path, trained_model):
    model, _ = trained_model
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 2:10] = 255
    Image.fromarray(source).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert ldm(["inpaint", "--model", str(model), "--image", str(tmp_path / "image.png"), "--mask",
                str(tmp_path / "mask.png"), "--steps", "2", "--n", "2", "--device", "cpu", "--out", str(out)]) == 0
    for name in ("0000.png", "0001.png"):
        result = np.asarray(Image.open(out / name))
        assert result.shape == (16, 16, 3) and np.array_equal(result[mask == 0], source[mask == 0])


def test_inpaint_command_refuses_a_prompt_for_a_model_without_text(tmp_path, capsys, trained_model):
    model, _ = trained_model
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "mask.png")
    code = ldm(["inpaint", "--model", str(model), "--image", str(tmp_path / "image.png"), "--mask",
                str(tmp_path / "mask.png"), "--prompt", "a cat", "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not on text" in err and len(err.splitlines()) == 1
