import math

import pytest
import torch

from ldmkit.diffusion.losses import diffusion_loss, loss_weights, min_snr_weights, sample_timesteps, snr
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError


class Oracle(torch.nn.Module):
    """Predicts the exact target for known x0 and noise (so the loss must be 0)."""

    def __init__(self, schedule, x0, noise):
        super().__init__()
        self.schedule, self.x0, self.noise = schedule, x0, noise

    def forward(self, x, t, cond):
        ab = self.schedule.alpha_bar(t).view(-1, 1, 1, 1)
        if self.schedule.prediction == "eps":
            return self.noise
        if self.schedule.prediction == "x0":
            return self.x0
        return ab.sqrt() * self.noise - (1 - ab).sqrt() * self.x0


class Zero(torch.nn.Module):
    def forward(self, x, t, cond):
        return torch.zeros_like(x)


def test_min_snr_weights_equal_their_formula():
    s = torch.tensor([0.0, 0.01, 1.0, 5.0, 20.0, 1e4])
    gamma = 5.0
    m = torch.minimum(s, torch.tensor(gamma))
    assert torch.allclose(min_snr_weights(s, "x0", gamma), m)
    assert torch.allclose(min_snr_weights(s, "v", gamma), m / (s + 1))
    expected_eps = torch.tensor([1.0, 1.0, 1.0, 1.0, 5 / 20, 5 / 1e4])
    assert torch.allclose(min_snr_weights(s, "eps", gamma), expected_eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_is_the_same_loss_in_every_parameterisation(prediction):
    # weight × (error in the network's space) = min(SNR, γ) × (error in x0 space)
    sched = NoiseSchedule(ScheduleConfig(prediction=prediction))
    t = torch.tensor([5, 200, 600, 990])
    ab = sched.alpha_bar(t, dtype=torch.float64)
    r = ab / (1 - ab)
    w = loss_weights(sched, t, "min_snr", 5.0).double()
    per_x0_error = {"eps": r, "x0": torch.ones_like(r), "v": r + 1}[prediction]
    assert torch.allclose(w * per_x0_error, torch.clamp(r, max=5.0), rtol=1e-5)


def test_snr_at_zero_terminal_snr_gives_finite_weights():
    sched = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True, prediction="v"))
    t = torch.tensor([999, 0])
    assert snr(sched, t)[0].item() == 0.0
    w = loss_weights(sched, t, "min_snr")
    assert torch.isfinite(w).all() and w[0].item() == 0.0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_the_exact_target(prediction):
    sched = NoiseSchedule(ScheduleConfig(prediction=prediction))
    x0, noise = torch.randn(4, 2, 4, 4), torch.randn(4, 2, 4, 4)
    loss, info = diffusion_loss(Oracle(sched, x0, noise), x0, None, sched, noise=noise, weighting="min_snr")
    assert loss.item() < 1e-10
    assert info["per_sample"].shape == (4,) and info["t"].dtype == torch.int64


def test_loss_matches_the_formula():
    sched = NoiseSchedule(ScheduleConfig(prediction="v"))
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([10, 500, 900])
    loss, info = diffusion_loss(Zero(), x0, None, sched, noise=noise, t=t, weighting="min_snr", min_snr_gamma=2.0)
    expected = []
    for i in range(3):
        ab = sched.alphas_cumprod[t[i]].item()
        v = math.sqrt(ab) * noise[i] - math.sqrt(1 - ab) * x0[i]
        r = ab / (1 - ab)
        expected.append(min(r, 2.0) / (r + 1) * v.pow(2).mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert torch.allclose(info["x_t"], sched.add_noise(x0, noise, t))
    simple, _ = diffusion_loss(Zero(), x0, None, sched, noise=noise, t=t)
    assert simple.item() == pytest.approx(info["per_sample"].mean().item(), rel=1e-6)


def test_loss_backpropagates_and_is_seeded():
    sched = NoiseSchedule(ScheduleConfig())
    net = torch.nn.Conv2d(2, 2, 1)
    wrapped = lambda x, t, c: net(x)  # noqa: E731
    x0 = torch.randn(4, 2, 4, 4)
    a, _ = diffusion_loss(wrapped, x0, None, sched, generator=torch.Generator().manual_seed(3))
    b, _ = diffusion_loss(wrapped, x0, None, sched, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item()
    a.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_timestep_sampling_is_uniform_and_in_range():
    sched = NoiseSchedule(ScheduleConfig(num_timesteps=10))
    t = sample_timesteps(20000, sched, device="cpu", generator=torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == 9
    counts = torch.bincount(t, minlength=10).float()
    assert (counts / 2000 - 1).abs().max() < 0.1


def test_unknown_weighting():
    sched = NoiseSchedule(ScheduleConfig())
    with pytest.raises(ConfigError, match="weighting"):
        loss_weights(sched, torch.tensor([1]), "p2")
