"""DDIM inversion: on Gaussian data against the exact flow (the posterior of tests/unit/test_samplers.py), and
through a pipeline on a tiny seeded model, where inverting an image and sampling it back must give it back."""

import math

import pytest
import torch

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.conditioning.config import TextEncoderConfig
from ldmkit.conditioning.types import Conditioning
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.evaluation.reconstruction import psnr
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines import LatentDiffusionPipeline
from ldmkit.pipelines.inversion import interpolate, invert, regenerate
from ldmkit.samplers import SamplerOptions, sample
from ldmkit.samplers.inversion import invert as invert_latents
from tests.unit.test_pinned_outputs import jittered_unet
from tests.unit.test_samplers import MU, STD, make

PROMPT = "a red circle"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add contention


def gaussian_data(n=64, seed=0):
    return MU + STD * torch.randn(n, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def ddim(steps, guidance=1.0):
    return SamplerOptions(sampler="ddim", steps=steps, guidance=guidance)


def round_trip(denoiser, x0, steps, iterations=0, cond=None, uncond=None, guidance=1.0):
    """Largest |x0 - DDIM(invert(x0))| over the batch."""
    options = ddim(steps, guidance)
    noise = invert_latents(options, denoiser, x0, cond, uncond, iterations=iterations)
    return (sample(options, denoiser, noise, cond, uncond) - x0).abs().max().item()


# --- on the exact Gaussian flow --------------------------------------------------------------------------------------

def test_inversion_approaches_the_exact_ode_encoding():
    """The flow maps x0 to z = sqrt(ᾱ_T) μ + sqrt(ᾱ_T s² + 1 - ᾱ_T) (x0 - μ)/s; max error 0.37, 0.074, 0.037
    at 20, 100, 200 trailing steps (first order)."""
    denoiser = make()
    x0 = gaussian_data()
    ab = denoiser.schedule.alpha_bar(torch.tensor(999), dtype=torch.float64).item()
    exact = math.sqrt(ab) * MU + (ab * STD**2 + 1 - ab).sqrt() * (x0 - MU) / STD
    errs = [(invert_latents(ddim(n), denoiser, x0) - exact).abs().max().item() for n in (20, 100, 200)]
    assert errs[2] < 0.05 and errs[0] / errs[1] > 4 and errs[1] / errs[2] > 1.8


def test_round_trip_error_falls_with_steps_and_with_fixed_point_iterations():
    """Max round-trip error: 0.67 / 0.39 / 0.085 at 10 / 20 / 100 steps; 3 fixed-point iterations: 3.3e-3 at 20,
    9e-6 at 100 steps."""
    denoiser = make()
    x0 = gaussian_data()
    plain = [round_trip(denoiser, x0, n) for n in (10, 20, 100)]
    assert plain[0] > plain[1] > plain[2] and plain[2] < 0.1 and plain[0] / plain[2] > 6
    refined = [round_trip(denoiser, x0, n, iterations=3) for n in (20, 100)]
    assert refined[0] < plain[1] / 50 and refined[1] < 1e-4


def test_guided_inversion_round_trips_and_drifts_more_with_the_scale():
    """With a condition far from the data: max error 0.18, 0.34, 0.66 at guidance 1, 2, 4 (100 steps); the guided
    prediction is one batched forward per evaluation, as in sampling."""
    denoiser = make()
    x0 = gaussian_data()
    cond = Conditioning(vector=torch.tensor([[3.0, -2.0]]))
    uncond = Conditioning(vector=torch.tensor([[0.0, 0.0]]))
    errs = [round_trip(denoiser, x0, 100, cond=cond, uncond=uncond, guidance=g) for g in (1.0, 2.0, 4.0)]
    assert errs[0] < 0.25 and errs[0] < errs[1] < errs[2]
    denoiser.network.calls.clear()
    invert_latents(ddim(5, 2.0), denoiser, x0, cond, uncond)
    assert [t.shape for t in denoiser.network.calls] == [(128,)] * 5
    assert round_trip(denoiser, x0, 100, iterations=3, cond=cond, uncond=uncond, guidance=2.0) < 1e-3


def test_the_callback_follows_the_ladder_upwards():
    denoiser = make()
    options = ddim(6)
    ladder = options.ladder(denoiser.schedule)
    seen = []
    invert_latents(options, denoiser, gaussian_data(4),
                   callback=lambda step: seen.append((step.index, step.total, step.alpha_bar)) or None)
    assert seen == [(k, 6, ladder.alpha_bars[5 - k]) for k in range(6)]
    assert [t[0].item() for t in denoiser.network.calls] == list(reversed(ladder.timesteps))


def test_inversion_refuses_what_it_cannot_reverse():
    denoiser = make()
    x0 = gaussian_data(2)
    for options, match in [(SamplerOptions(sampler="dpm++2m", guidance=1.0), "reverses DDIM"),
                           (SamplerOptions(sampler="ddim", eta=1.0, guidance=1.0), "eta 0"),
                           (SamplerOptions(sampler="ddim", strength=0.5, guidance=1.0), "strength"),
                           (SamplerOptions(sampler="ddim", guidance=3.0), "uncond")]:
        with pytest.raises(ConfigError, match=match):
            invert_latents(options, denoiser, x0)
    with pytest.raises(ConfigError, match="iterations"):
        invert_latents(ddim(3), denoiser, x0, iterations=-1)


# --- through a pipeline, on a tiny seeded model ----------------------------------------------------------------------

def tiny_pipeline(cond: ConditionerConfig, captions=None) -> LatentDiffusionPipeline:
    """An untrained LDM (KL f = 2 first stage, 16 px images, 8x8x3 latents), weights jittered as in
    tests/unit/test_pinned_outputs.py."""
    torch.manual_seed(0)
    autoencoder = build_autoencoder(AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2),
                                                      num_res_blocks=1, latent_channels=3, mid_attention=False))
    torch.manual_seed(1)
    conditioner = build_conditioner(cond, captions=captions)
    unet = jittered_unet(conditioner)
    model = LatentDiffusionModel(unet=unet.eval(), schedule=NoiseSchedule(ScheduleConfig()),
                                 conditioner=conditioner.eval(), autoencoder=autoencoder.eval(), latent_size=(8, 8))
    return LatentDiffusionPipeline(model, precision="fp32")


@pytest.fixture(scope="module")
def text_pipe():
    text = ConditionerConfig(kind="text", embed_dim=16, text=TextEncoderConfig(width=16, depth=1, heads=2))
    return tiny_pipeline(text, captions=[PROMPT, "a blue square"])


def image(seed=0):
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [3, H, W] in [-1, 1]


def reconstruction_psnr(pipe, picture, steps, **kwargs):
    """PSNR (dB) of the round trip against the first stage's own reconstruction D(E(x)), so only the inversion's
    error counts."""
    target = pipe.decode(pipe.model.encode(picture[None]))
    noise = invert(pipe, picture, prompt=PROMPT, steps=steps, **kwargs)
    assert noise.shape == (1, 3, 8, 8) and noise.dtype == torch.float32
    guidance = kwargs.get("guidance", 1.0)
    back = regenerate(pipe, noise, prompt=PROMPT, steps=steps, guidance=guidance, output="tensor")
    return psnr(back, target).item()


def test_pipeline_round_trip_reconstructs_the_image(text_pipe):
    """Measured on this model: 54.1 dB at 40 steps with 4 fixed-point iterations, 14.0 dB at 5 steps; plain DDIM
    inversion 13.8 dB at 25 steps and 16.0 dB at 100 (the untrained network's noise estimate changes fast with
    its input, so each step's mismatch between ε̂(x_i) and ε̂(x_{i+1}) is large)."""
    picture = image()
    assert reconstruction_psnr(text_pipe, picture, 40, iterations=4) > 50
    assert reconstruction_psnr(text_pipe, picture, 5, iterations=4) < 20
    plain_25, plain_100 = (reconstruction_psnr(text_pipe, picture, n) for n in (25, 100))
    assert 12 < plain_25 < plain_100 - 1.5


def test_pipeline_round_trip_with_guidance_and_a_new_prompt(text_pipe):
    """At 50 steps with 2 iterations: 49.3 dB at guidance 1, 35.2 dB at guidance 3 (the guided flow inverts worse;
    4 iterations bring it to 69.2 dB). Regenerating the inverted noise with another prompt changes the image."""
    picture = image(1)
    unguided = reconstruction_psnr(text_pipe, picture, 50, iterations=2)
    guided = reconstruction_psnr(text_pipe, picture, 50, iterations=2, guidance=3.0)
    assert 30 < guided < unguided - 5
    noise = invert(text_pipe, picture, prompt=PROMPT, steps=20)
    same = regenerate(text_pipe, noise, prompt=PROMPT, steps=20, output="tensor")
    edited = regenerate(text_pipe, noise, prompt="a blue square", steps=20, output="tensor")
    assert (same - edited).abs().max() > 1e-3
    assert len(regenerate(text_pipe, noise.repeat(2, 1, 1, 1), prompt=PROMPT, steps=3)) == 2  # PIL images


def test_interpolating_two_real_images_ends_on_their_round_trips(text_pipe):
    a, b = image(2), image(3)
    strip = interpolate(text_pipe, a, b, PROMPT, frames=3, steps=20, iterations=2, output="tensor")
    assert strip.shape == (3, 3, 16, 16)
    for end, picture in ((strip[:1], a), (strip[2:], b)):
        back = regenerate(text_pipe, invert(text_pipe, picture, PROMPT, steps=20, iterations=2), PROMPT, steps=20,
                          output="tensor")
        assert torch.allclose(end, back, atol=1e-4)  # batch 3 against batch 1: float rounding only
    assert min((strip[1] - strip[0]).abs().max(), (strip[1] - strip[2]).abs().max()) > 1e-2
    with pytest.raises(ConfigError, match="one size"):
        interpolate(text_pipe, a, torch.zeros(3, 16, 32), PROMPT, frames=2, steps=2)


def test_pipeline_inversion_refuses_models_with_an_image_condition():
    inpaint = tiny_pipeline(ConditionerConfig(kind="class", num_classes=3, embed_dim=16, concat=ConcatConfig(
        kind="masked_image", downsample_factor=2, latent_channels=3)))
    with pytest.raises(ConfigError, match="inversion works with unconditional, class or text models"):
        invert(inpaint, image(), class_label=0, steps=3)


# --- on the command line ---------------------------------------------------------------------------------------------

def test_ldm_img2img_invert_reconstructs_and_refuses_what_does_not_apply(text_pipe, tmp_path, capsys):
    """`ldm img2img --invert` with the same prompt gives the image back: 52.7 dB against D(E(x)) at 40 steps with
    4 iterations (after 8-bit PNG rounding of input and output)."""
    import json

    from PIL import Image

    from ldmkit.cli.main import main as ldm
    from ldmkit.io.images import to_pil, to_unit
    from ldmkit.pipelines.img2img import image_to_tensor

    model_dir = text_pipe.model.save(tmp_path / "model")
    picture = tmp_path / "in.png"
    to_pil(to_unit(image())).save(picture)
    args = ["img2img", "--model", str(model_dir), "--image", str(picture), "--prompt", PROMPT, "--device", "cpu",
            "--precision", "fp32", "--steps", "40", "--guidance", "1"]
    assert ldm([*args, "--invert", "--invert-iterations", "4", "--out", str(tmp_path / "o")]) == 0
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert settings["invert"] and settings["sampler"] == "ddim" and settings["source_prompt"] == PROMPT
    out = image_to_tensor(Image.open(tmp_path / "o" / "0000.png"))
    target = text_pipe.decode(text_pipe.model.encode(image_to_tensor(Image.open(picture))))
    assert psnr(out, target).item() > 40
    capsys.readouterr()
    for extra, message in [(["--invert", "--eta", "0.5"], "eta 0"), (["--invert", "--n", "2"], "one image"),
                           (["--invert", "--sampler", "euler"], "samples with ddim"),
                           (["--source-prompt", "a blue square"], "with --invert only")]:
        assert ldm([*args, *extra, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
