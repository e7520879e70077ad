"""Flow matching beside ε/x₀/v: the velocity parameterisation, the straight-path schedule and its shift, the
training target, and samplers on the exact flow of Gaussian data (as tests/unit/test_samplers.py does for VP)."""

import math

import pytest
import torch

from ldmkit import samplers
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.losses import diffusion_loss
from ldmkit.diffusion.parameterisation import flow_time, network_input, target, to_x0_eps
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig, flow_times, resolution_shift
from ldmkit.errors import ConfigError
from ldmkit.samplers import SamplerOptions

MU = torch.tensor([1.0, -0.5], dtype=torch.float64).view(1, 2, 1, 1)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, 2, 1, 1)
FLOW = ScheduleConfig(kind="flow", prediction="flow")


def test_the_flow_view_of_a_noise_level_is_the_straight_path_exactly():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64), torch.randn(4, 3, 2, 2, generator=g,
                                                                                      dtype=torch.float64)
    alpha_bar = torch.tensor([0.999, 0.7, 0.2, 0.0], dtype=torch.float64).view(4, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    s, _ = flow_time(alpha_bar)
    assert torch.allclose(network_input("flow", x_t, alpha_bar), (1 - s) * x0 + s * eps, atol=1e-12)
    u = target("flow", x0, eps, alpha_bar)
    assert torch.equal(u, eps - x0)
    back_x0, back_eps = to_x0_eps("flow", u, x_t, alpha_bar)
    assert torch.allclose(back_x0, x0, atol=1e-12) and torch.allclose(back_eps, eps, atol=1e-12)
    assert torch.equal(network_input("v", x_t, alpha_bar), x_t)  # other parameterisations see x_t itself


def test_the_flow_schedule_is_the_straight_path_with_sd3s_shift():
    schedule = NoiseSchedule(FLOW)
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.allclose(schedule.alphas_cumprod, (1 - s) ** 2 / ((1 - s) ** 2 + s**2), atol=1e-12)
    assert schedule.alphas_cumprod[-1] == 0  # ends in pure noise
    shifted = flow_times(ScheduleConfig(kind="flow", prediction="flow", flow_shift=3.0))
    assert math.isclose(float(shifted[499]), 3 * 0.5 / (1 + 2 * 0.5))  # s' = α s / (1 + (α - 1) s)
    assert torch.all(shifted >= s - 1e-12) and shifted[-1] == 1  # more time at high noise, same end
    assert resolution_shift(1024 * 1024, 256 * 256) == 4.0
    assert schedule.preferred_spacing == "trailing" and NoiseSchedule().preferred_spacing is None


def test_flow_configs_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="prediction eps cannot give x0"):
        ScheduleConfig(kind="flow", prediction="eps")
    with pytest.raises(ConfigError, match="flow_shift applies to the flow schedule only"):
        ScheduleConfig(kind="linear", flow_shift=2.0)
    with pytest.raises(ConfigError, match="do not apply to the flow schedule"):
        ScheduleConfig(kind="flow", prediction="flow", beta_start=0.001)


class FlowPosterior(torch.nn.Module):
    """The exact flow velocity of Gaussian data: sees y_s, returns ε̂ - x̂0 from E[x0 | x_t]."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.inputs = []

    def forward(self, y, t, cond=None):
        self.inputs.append(y)
        ab = self.schedule.alpha_bar(t, dtype=torch.float64).view(-1, 1, 1, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        x_t = y.double() * (a + b)
        x0 = MU + a * STD**2 / (ab * STD**2 + 1 - ab) * (x_t - a * MU)
        eps = (x_t - a * x0) / b
        return (eps - x0).to(y.dtype)


def _run(name, steps, noise, spacing=None):
    schedule = NoiseSchedule(FLOW)
    options = SamplerOptions(sampler=name, steps=steps, guidance=1.0, spacing=spacing)
    return samplers.sample(options, Denoiser(FlowPosterior(schedule), schedule), noise)


def _w2(out):
    """W2 between a deterministic sampler's affine map of the probes -1, 0, 1 and N(μ, s²)."""
    offset, slope = out[1], out[2] - out[1]
    return ((offset - MU[0]) ** 2 + (slope.abs() - STD[0]) ** 2).sum().sqrt().item()


PROBES = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 2, 1, 1).contiguous()


# Measured W2 at 5/10/20/40/80 steps: ddim = euler 0.54/0.29/0.15/0.075/0.038, dpm++2m 0.30/0.073/0.023/0.0075/
# 0.0023, flow-heun 0.079/0.017/0.0039/0.0009/0.0002; σ-space heun 197/22/2.4/0.28/0.032 (its first step starts
# from the σ stand-in of ᾱ = 0, 4096, which flow time does not need).
@pytest.mark.parametrize("name, steps, bound", [("ddim", 40, 0.1), ("euler", 40, 0.1), ("dpm++2m", 20, 0.03),
                                                ("flow-heun", 10, 0.02), ("heun", 80, 0.05)])
def test_samplers_follow_the_exact_flow_of_gaussian_data(name, steps, bound):
    # ᾱ_T = 0: the flow from y_1 = z ends exactly at x0 = μ + s z, so W2 measures only the solver's error.
    assert _w2(_run(name, steps, PROBES)) < bound


def test_flow_heun_is_second_order_where_ddim_is_first():
    ddim = [_w2(_run("ddim", n, PROBES)) for n in (8, 16)]
    heun = [_w2(_run("flow-heun", n, PROBES)) for n in (8, 16)]
    assert ddim[0] / ddim[1] < 2.6 < heun[0] / heun[1]  # halving the step: ~2× less error vs ~4× less
    assert heun[1] < ddim[1] / 10
    assert _w2(_run("flow-heun", 10, PROBES)) * 100 < _w2(_run("heun", 10, PROBES))


def test_ddim_on_the_flow_schedule_is_the_euler_step_in_flow_time():
    schedule = NoiseSchedule(FLOW)
    options = SamplerOptions(sampler="ddim", steps=6, guidance=1.0)
    ladder = options.ladder(schedule)
    network = FlowPosterior(schedule)
    y = PROBES.clone()  # at s = 1, y = ε = x_T
    for i, t in enumerate(ladder.timesteps):
        s = float(flow_time(torch.tensor(ladder.alpha_bars[i], dtype=torch.float64))[0])
        s_next = float(flow_time(torch.tensor(ladder.alpha_bars[i + 1], dtype=torch.float64))[0])
        y = y + (s_next - s) * network(y, torch.tensor([t] * 3, dtype=torch.float64))  # y += Δs · u
    out = samplers.sample(options, Denoiser(network, schedule), PROBES)
    assert torch.allclose(out, y, atol=1e-10)


def test_training_targets_the_velocity_at_the_flow_point_and_min_snr_weighs_it_as_x0():
    schedule = NoiseSchedule(FLOW)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 2, 4, 4, generator=g)
    recorder = FlowPosterior(schedule)
    _, info = diffusion_loss(lambda y, t, c: recorder(y, t, c).float(), x0, None, schedule, generator=g)
    ab = schedule.alpha_bar(info["t"]).view(-1, 1, 1, 1)
    s, _ = flow_time(ab)
    assert torch.allclose(recorder.inputs[0].float(), (1 - s) * x0 + s * info["noise"], atol=1e-5)
    assert torch.allclose(info["target"], info["noise"] - x0, atol=1e-6)
    # min-SNR-γ on the velocity error equals min(SNR, γ) on the x0 error it implies.
    t = torch.tensor([50, 300, 700, 950])
    error = torch.randn(4, 2, 4, 4, generator=g) * 0.1
    x0_small = torch.randn(4, 2, 4, 4, generator=g)
    ab4 = schedule.alpha_bar(t).view(-1, 1, 1, 1)
    noise = torch.randn(4, 2, 4, 4, generator=g)
    goal = target("flow", x0_small, noise, ab4)
    loss, info = diffusion_loss(lambda y, t_, c: goal + error, x0_small, None, schedule, t=t, noise=noise,
                                weighting="min_snr", min_snr_gamma=5.0)
    s4, _ = flow_time(ab4)
    x0_error = (s4 * error).pow(2).flatten(1).mean(1)  # x̂0 - x0 = -s (û - u)
    snr = (ab4 / (1 - ab4)).flatten()
    assert torch.allclose(info["weights"] * info["per_sample"], snr.clamp(max=5.0) * x0_error, rtol=1e-4)


def test_img2img_and_inpainting_run_on_a_flow_model():
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines import ImageToImagePipeline, InpaintPipeline

    schedule = NoiseSchedule(ScheduleConfig(kind="flow", prediction="flow", num_timesteps=1000))
    model = LatentDiffusionModel(unet=_ZeroVelocity(), schedule=schedule,
                                 conditioner=build_conditioner(ConditionerConfig(kind="none")),
                                 autoencoder=build_autoencoder(AutoencoderConfig(kind="identity")), latent_size=(8, 8))
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    fast = {"steps": 4, "sampler": "flow-heun", "output": "tensor", "progress": False}
    edited = ImageToImagePipeline(model)(image, strength=0.5, **fast)
    assert edited.shape == (1, 3, 8, 8) and torch.isfinite(edited).all()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    filled = InpaintPipeline(model)(image, mask, **fast)
    assert torch.allclose(filled[..., 4:], image[..., 4:], atol=1e-6)  # the known half is kept exactly


class _ZeroVelocity(torch.nn.Module):
    """u = 0: the flow stands still, so x̂0 = y (a stand-in network with a parameter for the device)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = type("C", (), {"downsample_factor": 1})()

    def forward(self, y, t, cond=None):
        return torch.zeros_like(y) + self.anchor


def test_a_flow_model_trains_with_logit_normal_times_and_samples_after_loading(tmp_path):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
    from ldmkit.config import load_config
    from ldmkit.data import build_dataset
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines import LatentDiffusionPipeline
    from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
    from ldmkit.training.loop import train

    torch.manual_seed(0)
    save_autoencoder(tmp_path / "ae", build_autoencoder(AutoencoderConfig(kind="identity")))
    experiment = load_config(DiffusionExperiment, None, [
        f"autoencoder={tmp_path / 'ae'}", "schedule.kind=flow", "schedule.prediction=flow", "schedule.flow_shift=2.0",
        "timesteps.kind=logit_normal", "unet.model_channels=8", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1",
        "unet.attention_resolutions=[]", "unet.num_heads=2", "data.source=synthetic", "data.resolution=16",
        "data.synthetic.count=8", "data.synthetic.supersample=1", "train.steps=3", "train.batch_size=4",
        "train.device=cpu", "train.progress=false", "train.image_every=0", f"train.out={tmp_path / 'run'}"],
        group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    model = LatentDiffusionModel.load(train(DiffusionTask(experiment, dataset, None), experiment.train, dataset,
                                            experiment))
    assert model.schedule.config.kind == "flow" and model.schedule.config.flow_shift == 2.0
    images = LatentDiffusionPipeline(model)(n=2, steps=3, sampler="flow-heun", output="tensor", progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
