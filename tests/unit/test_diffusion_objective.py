"""Options of the diffusion objective: each one must change what training computes, and be off by default."""

from __future__ import annotations

import pytest
import torch

from ldmkit.diffusion.losses import diffusion_loss, elementwise_loss, masked_mean, sample_timesteps
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.diffusion.timestep_sampling import TimestepConfig, draw_timesteps
from ldmkit.errors import ConfigError

SCHEDULE = NoiseSchedule(ScheduleConfig())


class Zero(torch.nn.Module):
    def forward(self, x, t, cond):
        return torch.zeros_like(x)


def draw(config: TimestepConfig, n: int = 100_000, seed: int = 0) -> torch.Tensor:
    return draw_timesteps(n, SCHEDULE, config, device="cpu", generator=torch.Generator().manual_seed(seed))


# --- timesteps -----------------------------------------------------------------------------------------------------

def test_the_default_draws_the_same_timesteps_as_before():
    ref = sample_timesteps(64, SCHEDULE, device="cpu", generator=torch.Generator().manual_seed(1))
    assert torch.equal(draw(TimestepConfig(), n=64, seed=1), ref)
    x0 = torch.randn(4, 3, 8, 8)
    a, _ = diffusion_loss(Zero(), x0, None, SCHEDULE, generator=torch.Generator().manual_seed(2))
    b, _ = diffusion_loss(Zero(), x0, None, SCHEDULE, generator=torch.Generator().manual_seed(2),
                          timesteps=TimestepConfig())
    assert torch.equal(a, b)


def test_uniform_with_bounds_covers_exactly_the_range():
    t = draw(TimestepConfig(min=200, max=299), n=20_000)
    assert t.min() == 200 and t.max() == 299 and len(t.unique()) == 100
    assert abs(t.double().mean().item() - 249.5) < 1.0


def test_logit_normal_timesteps_have_the_asked_moments():
    t = draw(TimestepConfig(kind="logit_normal", mean=0.5, std=0.7))
    u = torch.logit((t.double() + 0.5) / SCHEDULE.num_timesteps)  # back to the normal's scale
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.std().item() - 0.7) < 0.02
    # the middle is drawn far more often than the ends (uniform would give ~0.2 in each fifth)
    share = torch.histc(t.double(), bins=5, min=0, max=1000) / t.numel()
    assert share[3] > 0.3 and share[0] < 0.1


def test_logit_normal_within_bounds():
    t = draw(TimestepConfig(kind="logit_normal", min=100, max=199))
    assert t.min() >= 100 and t.max() <= 199
    u = torch.logit((t.double() - 100 + 0.5) / 100)
    assert abs(u.mean().item()) < 0.03 and abs(u.std().item() - 1.0) < 0.03


def test_log_normal_timesteps_have_the_asked_log_sigma_moments_and_bounds():
    t = draw(TimestepConfig(kind="log_normal", mean=0.0, std=0.5))
    log_sigma = SCHEDULE.log_sigmas[t]
    assert abs(log_sigma.mean().item()) < 0.02 and abs(log_sigma.std().item() - 0.5) < 0.02
    bounded = draw(TimestepConfig(kind="log_normal", mean=-1.2, std=1.2, min=100, max=800))
    assert bounded.min() == 100 and bounded.max() == 800  # truncated at the bounds, not clamped onto them:
    assert (bounded == 100).float().mean() < 0.01  # no pile of draws at a bound


def test_timestep_bounds_outside_the_schedule_are_one_line_errors():
    with pytest.raises(ConfigError, match="timesteps.max=1000 is beyond the schedule's last timestep 999"):
        draw(TimestepConfig(max=1000), n=1)
    with pytest.raises(ConfigError, match="below timesteps.min"):
        TimestepConfig(min=10, max=5)


# --- noise ---------------------------------------------------------------------------------------------------------

def test_offset_noise_shifts_each_sample_and_channel():
    x0 = torch.zeros(512, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    _, plain = diffusion_loss(Zero(), x0, None, SCHEDULE, generator=g)
    _, offset = diffusion_loss(Zero(), x0, None, SCHEDULE, generator=torch.Generator().manual_seed(0),
                               offset_noise=0.5)
    # the spatial mean of N(0, 1) over 64 pixels has variance 1/64; the offset adds 0.5² = 0.25
    plain_var = plain["noise"].mean(dim=(2, 3)).var().item()
    offset_var = offset["noise"].mean(dim=(2, 3)).var().item()
    assert abs(plain_var - 1 / 64) < 0.005 and abs(offset_var - (0.25 + 1 / 64)) < 0.03
    assert torch.equal(offset["target"], offset["noise"])  # eps prediction: the target carries the offset


def _multires_covariance(h: int, w: int, levels: int, discount: float) -> torch.Tensor:
    """The exact covariance [h·w, h·w] of multi-resolution noise: a coarse field's normalised interpolation weights
    W give it the covariance WᵀW per axis, and the two axes multiply (a Kronecker product)."""
    def axis(low: int, high: int) -> torch.Tensor:
        weights = torch.nn.functional.interpolate(torch.eye(low, dtype=torch.float64)[None], size=high, mode="linear",
                                                  align_corners=False)[0]  # [low, high]
        weights = weights / weights.pow(2).sum(dim=0).sqrt()
        return weights.T @ weights  # [high, high]

    cov, total = torch.eye(h * w, dtype=torch.float64), 1.0
    for i in range(1, levels + 1):
        cov += discount ** (2 * i) * torch.kron(axis(max(1, h >> i), h), axis(max(1, w >> i), w))
        total += discount ** (2 * i)
    return cov / total


def test_multires_noise_is_unit_variance_everywhere_with_the_predicted_correlations():
    from ldmkit.diffusion.multires_noise import multires_noise

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6000, 1, 8, 8, generator=g)
    assert multires_noise(noise, 0, 0.5) is noise  # off: the draw is untouched
    pyramid = multires_noise(noise, 3, 0.8, generator=g).flatten(1).double()  # [6000, 64]
    empirical = pyramid.T @ pyramid / len(pyramid)
    exact = _multires_covariance(8, 8, 3, 0.8)
    assert torch.allclose(exact.diagonal(), torch.ones(64, dtype=torch.float64))  # N(0, 1) at every position
    assert (empirical - exact).abs().max() < 0.1  # 6000 samples: a standard error of about 0.02
    assert exact[27, 28] > 0.4 and exact[0, 63] > 0.05  # neighbours, and even far corners, now move together
    assert (empirical.diagonal() - 1).abs().max() < 0.1


def test_input_perturbation_noises_the_input_but_not_the_target():
    x0 = torch.randn(64, 3, 8, 8)
    t = torch.full((64,), 500)
    _, info = diffusion_loss(Zero(), x0, None, SCHEDULE, t=t, generator=torch.Generator().manual_seed(0),
                             input_perturbation=0.1)
    ab = SCHEDULE.alpha_bar(t).view(-1, 1, 1, 1)
    noise_in_input = (info["x_t"] - ab.sqrt() * x0) / (1 - ab).sqrt()
    extra = noise_in_input - info["target"]
    assert abs(extra.std().item() - 0.1) < 0.005  # the input saw noise + 0.1·ξ
    _, plain = diffusion_loss(Zero(), x0, None, SCHEDULE, t=t, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain["target"], info["target"])  # the same ε is the target either way
    plain_in_input = (plain["x_t"] - ab.sqrt() * x0) / (1 - ab).sqrt()
    assert torch.allclose(plain_in_input, plain["target"], atol=1e-4)


# --- element losses and masks ------------------------------------------------------------------------------------

def test_huber_is_mse_for_small_errors_and_linear_for_large():
    delta = 0.1
    target = torch.zeros(3)
    small = torch.tensor([1e-4, -2e-4, 5e-4])
    ratio = elementwise_loss(small, target, "huber", delta) / elementwise_loss(small, target, "mse")
    assert torch.allclose(ratio, torch.ones(3), atol=1e-4)
    large = torch.tensor([10.0, -50.0, 200.0])
    huber = elementwise_loss(large, target, "huber", delta)
    assert torch.allclose(huber / (2 * delta * large.abs()), torch.ones(3), atol=0.011)  # slope 2δ, like l1
    assert torch.equal(elementwise_loss(large, target, "l1"), large.abs())
    assert (huber < elementwise_loss(large, target, "mse") / 10).all()  # an outlier weighs far less than in mse


def test_the_loss_option_reaches_the_objective():
    x0 = torch.randn(4, 3, 8, 8)
    losses = {kind: diffusion_loss(Zero(), x0, None, SCHEDULE, generator=torch.Generator().manual_seed(0),
                                   loss=kind)[0].item() for kind in ("mse", "l1", "huber")}
    assert losses["mse"] == pytest.approx(1.0, abs=0.1)  # E[ε²] with a zero prediction
    assert losses["l1"] == pytest.approx((2 / torch.pi) ** 0.5, abs=0.1)  # E|ε|
    assert losses["huber"] < losses["l1"] * 0.2 + 0.05  # 2δ|ε| - ..., δ = 0.1


def test_a_loss_mask_weighs_pixels_and_ignores_the_rest():
    x0 = torch.randn(2, 3, 8, 8)

    class WrongOnTheLeft(torch.nn.Module):
        """Exact on the right half of the latent, off by 1 on the left half (eps prediction)."""

        def __init__(self):
            super().__init__()
            self.noise = None

        def forward(self, x, t, cond):
            out = self.noise.clone()
            out[..., :4] += 1.0
            return out

    net = WrongOnTheLeft()
    noise = torch.randn_like(x0)
    net.noise = noise
    mask = torch.zeros(2, 1, 16, 16)  # image resolution, twice the latent's
    mask[..., 8:] = 1.0  # only the right half counts
    masked, info = diffusion_loss(net, x0, None, SCHEDULE, noise=noise, mask=mask)
    assert masked.item() == pytest.approx(0.0, abs=1e-10)
    unmasked, _ = diffusion_loss(net, x0, None, SCHEDULE, noise=noise)
    assert unmasked.item() == pytest.approx(0.5)
    mask[..., :8] = 1.0  # everything counts: the plain mean
    full, _ = diffusion_loss(net, x0, None, SCHEDULE, noise=noise, mask=mask)
    assert full.item() == pytest.approx(0.5)
    assert masked_mean(torch.ones(1, 3, 4, 4), torch.zeros(1, 1, 4, 4)).item() == 0.0  # an empty mask: no loss
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        masked_mean(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4))


# --- the experiment's options reach the trainer's loss --------------------------------------------------------------

@pytest.mark.parametrize("options", [
    {"loss": "l1"}, {"loss": "huber", "huber_delta": 0.3}, {"offset_noise": 0.1}, {"input_perturbation": 0.1},
    {"multires_noise_levels": 3, "multires_noise_discount": 0.5},
    {"timesteps": {"kind": "logit_normal", "mean": 0.3}}, {"timesteps": {"min": 10, "max": 20}},
])
def test_diffusion_experiment_options_reach_the_training_loss(options):
    from ldmkit.config import from_dict
    from ldmkit.training.diffusion_task import DiffusionExperiment, _DenoisingLoss

    class Half(torch.nn.Module):
        def forward(self, x, t, cond):
            return 0.5 * x

    def trainer_loss(experiment, batch):
        module = _DenoisingLoss(torch.nn.ModuleDict(), Half(), SCHEDULE, experiment)
        torch.manual_seed(7)
        return module(x0, batch, None)

    x0 = torch.randn(8, 3, 8, 8)
    default = from_dict(DiffusionExperiment, {"autoencoder": "ae"})
    chosen = from_dict(DiffusionExperiment, {"autoencoder": "ae", **options})
    kwargs = {k: v for k, v in options.items() if k != "timesteps"}
    if "timesteps" in options:
        kwargs["timesteps"] = chosen.timesteps
    torch.manual_seed(7)
    expected, _ = diffusion_loss(Half(), x0, None, SCHEDULE, **kwargs)
    assert torch.equal(trainer_loss(chosen, {}), expected)
    assert not torch.equal(trainer_loss(default, {}), expected)  # the option changed the loss
    mask = torch.zeros(8, 1, 16, 16)
    mask[..., :4] = 1.0
    assert not torch.equal(trainer_loss(chosen, {"loss_mask": mask}), expected)  # a supplied mask is used
