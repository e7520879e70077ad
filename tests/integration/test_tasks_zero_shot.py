"""Image-to-image (SDEdit) and zero-shot inpainting with tiny models trained on CPU, through the pipelines and
the `ldm img2img` / `ldm inpaint` commands."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.cli.main import main as ldm
from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.errors import ConfigError, DataError
from ldmkit.pipelines import ImageToImagePipeline, InpaintPipeline
from ldmkit.pipelines.inpaint import latent_mask, mask_to_tensor
from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
from ldmkit.training.diffusion_task import run_diffusion_training
from ldmkit.training.loop import train

SYNTHETIC = [
    "data.resolution=16", "data.synthetic.count=32", "data.synthetic.shapes=[circle, square]",
    "data.synthetic.colours=[red, blue]", "data.synthetic.sizes=[large]", "data.synthetic.max_objects=1",
    "data.synthetic.backgrounds=[white]",
]
TRAIN = ["train.device=cpu", "train.progress=false", "train.image_every=0", "train.log_every=1",
         "train.batch_size=8", "train.checkpoint_every=0"]
TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1, 2]", "unet.attention_resolutions=[2]",
             "unet.num_head_channels=8", "unet.num_res_blocks=1"]
TEXT = ["conditioner.kind=text", "conditioner.embed_dim=16", "conditioner.text.width=16", "conditioner.text.depth=1",
        "conditioner.text.heads=2"]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A text model on an f = 2 autoencoder (16 px images, 8×8 latents; sizes must be multiples of 4)."""
    ae_out = tmp_path_factory.mktemp("ae")
    experiment = load_config(AutoencoderExperiment, "synthetic-kl-f4", [
        *SYNTHETIC, *TRAIN, f"train.out={ae_out}", "train.steps=2", "model.base_channels=8",
        "model.channel_mult=[1, 2]", "loss.perceptual_weight=0", "scale_samples=16"], group="autoencoder")
    dataset = build_dataset(experiment.data)
    train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)
    out = tmp_path_factory.mktemp("ldm-text")
    run_diffusion_training("synthetic-text", [
        f"autoencoder={ae_out / 'model'}", *SYNTHETIC, *TRAIN, *TINY_UNET, f"train.out={out}", "train.steps=2",
        *TEXT])
    return out / "model"


@pytest.fixture(scope="module")
def inpaint_pipe(text_model):
    return InpaintPipeline.load(text_model, device="cpu")


def _image(seed=0, size=(16, 16)) -> torch.Tensor:
    """A random 8-bit image as [1, 3, H, W] in [-1, 1] (exactly v/127.5 − 1)."""
    values = torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(seed))
    return values.float() / 127.5 - 1


def _half_mask(size=(16, 16)) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[:, size[1] // 2:] = 1
    return mask


FAST = dict(prompt="a red circle", steps=3, output="tensor", progress=False)


def test_inpaint_keeps_unmasked_pixels_exactly_and_fills_the_mask(inpaint_pipe):
    image, mask = _image(), _half_mask()
    out = inpaint_pipe(image, mask, seed=1, **FAST)
    assert out.shape == (1, 3, 16, 16)
    keep = ~mask.bool().expand(1, 3, 16, 16)
    assert torch.equal(out[keep], image[keep])
    assert not torch.allclose(out[~keep], image[~keep], atol=0.05)  # the masked half was regenerated
    again = inpaint_pipe(image, mask, seed=1, **FAST)
    assert torch.equal(out, again)


def test_inpaint_with_an_empty_mask_returns_the_input(inpaint_pipe):
    image = _image(3)
    out = inpaint_pipe(image, torch.zeros(16, 16), n=2, sampler="ddim", **FAST)
    assert torch.equal(out, image.expand(2, -1, -1, -1))


def test_inpaint_blend_pins_the_known_latents(inpaint_pipe):
    """After the last step the known latent cells equal the encoded image (ᾱ = 1 there): the callback sees it."""
    image, mask = _image(4), _half_mask()
    known = inpaint_pipe.encode_image(image)
    unknown = latent_mask(mask[None, None], inpaint_pipe.autoencoder.downsample_factor)
    seen = []
    for sampler in ("ddim", "dpm++2m", "heun"):
        inpaint_pipe(image, mask, sampler=sampler, callback=lambda step: seen.append((step.index, step.total, step.x)),
                     **FAST)
        i, n, x = seen[-1]
        assert i == n - 1
        keep = (unknown == 0).expand_as(x)
        assert torch.allclose(x[keep], known.expand_as(x)[keep], atol=1e-5), sampler
        assert not torch.allclose(x[~keep], known.expand_as(x)[~keep], atol=1e-3), sampler


def test_inpaint_blend_noises_the_known_latents_to_the_next_level_of_the_samplers_ladder(inpaint_pipe):
    from ldmkit.pipelines.text2img import seeded_noise
    from ldmkit.samplers import make_ladder

    image, mask = _image(6), _half_mask()
    known = inpaint_pipe.encode_image(image)
    keep = (latent_mask(mask[None, None], inpaint_pipe.autoencoder.downsample_factor) == 0).expand_as(known)
    noise = seeded_noise([9], tuple(known.shape[1:]))
    for sampler, spacing in (("dpm++2m", "karras"), ("ddim", "trailing")):  # each sampler's default spacing
        ladder = make_ladder(inpaint_pipe.schedule, 4, spacing)
        seen = []
        inpaint_pipe(image, mask, sampler=sampler, seed=9, callback=lambda step, seen=seen: seen.append(step.x),
                     **dict(FAST, steps=4))
        for i, x in enumerate(seen[:-1]):
            a = ladder.alpha_bars[i + 1]
            expected = a**0.5 * known + (1 - a) ** 0.5 * noise
            assert torch.allclose(x[keep], expected[keep], atol=1e-5), (sampler, i)


def test_latent_mask_marks_a_cell_unknown_if_any_of_its_pixels_is():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 3, 5] = 1
    cells = latent_mask(mask, 4)
    assert cells.shape == (1, 1, 2, 2) and cells.sum() == 1 and cells[0, 0, 0, 1] == 1


def test_mask_files_are_thresholded_and_grey_masks_refused():
    array = np.zeros((8, 8), dtype=np.uint8)
    array[:, 4:] = 250  # nearly white still counts as white
    array[0, 0] = 100  # one grey pixel in 64 is more than 1%: refused
    with pytest.raises(DataError, match="not black and white"):
        mask_to_tensor(Image.fromarray(array))
    array[0, 0] = 5
    assert torch.equal(mask_to_tensor(Image.fromarray(array))[0, 0], torch.from_numpy(array >= 128).float())


def test_img2img_keeps_the_size_and_strength_controls_the_distance(text_model):
    pipe = ImageToImagePipeline.load(text_model, device="cpu")
    image = _image(5, size=(16, 24))  # not the training size: convolutional sampling
    steps = dict(FAST, steps=10, sampler="ddim", guidance=1.0)
    # The reference is what the first stage gives back for the input (the tiny autoencoder is barely trained).
    reference = pipe.decode(pipe.encode_image(image))
    distances = {}
    for strength in (0.1, 0.5, 1.0):
        out = pipe(image, strength=strength, seed=2, **steps)
        assert out.shape == (1, 3, 16, 24)
        distances[strength] = torch.mean((out - reference) ** 2).item()
    assert distances[0.1] < distances[0.5] < distances[1.0], distances
    assert distances[0.1] < 0.25 * distances[1.0], distances
    with pytest.raises(ConfigError, match="strength must be in"):
        pipe(image, strength=0.0, **steps)


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    grey = np.full((16, 16), 128, dtype=np.uint8)
    (d / "broken.png").write_bytes(b"not a png at all")
    return dict(image=_png(d / "image.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
                odd=_png(d / "odd.png", rng.integers(0, 256, (18, 16, 3), dtype=np.uint8)),
                mask=_png(d / "mask.png", mask), small_mask=_png(d / "small.png", mask[:8, :8]),
                grey=_png(d / "grey.png", grey), broken=str(d / "broken.png"))


def test_inpaint_command_writes_images_whose_kept_pixels_equal_the_input(tmp_path, text_model, files):
    out = tmp_path / "out"
    assert ldm(["inpaint", "--model", str(text_model), "--image", files["image"], "--mask", files["mask"],
                "--prompt", "a blue square", "--steps", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "grid.png", "settings.json"]
    result = np.asarray(Image.open(out / "0000.png"))
    source = np.asarray(Image.open(files["image"]))
    keep = np.asarray(Image.open(files["mask"])) == 0
    assert np.array_equal(result[keep], source[keep])


def test_img2img_command_writes_an_image_of_the_input_size(tmp_path, text_model, files):
    out = tmp_path / "out"
    assert ldm(["img2img", "--model", str(text_model), "--image", files["image"], "--prompt", "a red circle",
                "--strength", "0.5", "--steps", "2", "--n", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert Image.open(out / "0001.png").size == (16, 16)


@pytest.mark.parametrize("command, args, message", [
    ("inpaint", ["--mask", "{small_mask}"], "the mask is 8x8 pixels but the image is 16x16"),
    ("inpaint", ["--mask", "{grey}"], "the mask is not black and white"),
    ("inpaint", ["--image", "{odd}", "--mask", "{mask}"], "not a positive multiple of 4"),
    ("inpaint", ["--mask", "{broken}"], "cannot read mask file"),
    ("inpaint", ["--mask", "{mask}", "--strength", "1.5"], "strength must be in (0, 1]"),
    ("img2img", ["--image", "{odd}"], "not a positive multiple of 4"),
    ("img2img", ["--image", "{broken}"], "cannot read image file"),
    ("img2img", ["--image", "/nonexistent/x.png"], "does not exist"),
    ("img2img", ["--strength", "0"], "strength must be in (0, 1]"),
    ("img2img", ["--strength", "nan"], "strength must be in (0, 1]"),
    ("img2img", ["--no-prompt"], "text-conditional model: give a prompt"),
    ("img2img", ["--height", "32"], "drop --height/--width"),
])
def test_bad_input_is_one_line(tmp_path, capsys, text_model, files, command, args, message):
    args = [a.format(**files) for a in args]
    prompt = [] if "--no-prompt" in args else ["--prompt", "a red circle"]
    args = [a for a in args if a != "--no-prompt"]
    if "--image" not in args:
        args = ["--image", files["image"], *args]
    code = ldm([command, "--model", str(text_model), *prompt, *args, "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_zero_shot_inpainting_follows_any_samplers_ladder_without_being_told_its_spacing(inpaint_pipe):
    """The blend reads the level from each step, so a sampler's own default spacing needs no copy here."""
    from ldmkit import samplers

    image, mask = _image(5), _half_mask()
    for name in samplers.names():
        levels = []
        inpaint_pipe(image, mask, sampler=name, callback=lambda step: levels.append(step.alpha_bar), **FAST)
        assert levels[-1] == 1.0 and levels == sorted(levels), name
