import math

import pytest
import torch

from ldmkit.config import from_dict, to_dict
from ldmkit.diffusion.schedules import KARRAS_RHO, NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError


def test_scaled_linear_matches_published_ldm_values():
    s = NoiseSchedule(ScheduleConfig(kind="scaled_linear"))
    assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    # linear in sqrt(beta), not in beta
    roots = s.betas.sqrt()
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(999), atol=1e-14)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=5e-5)  # Stable Diffusion's ᾱ_T


def test_linear_matches_ddpm():
    s = NoiseSchedule(ScheduleConfig(kind="linear"))
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.allclose(s.betas[1:] - s.betas[:-1], (s.betas[1] - s.betas[0]).expand(999), atol=1e-15)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=0, atol=0)


def test_cosine_follows_nichol_dhariwal():
    s = NoiseSchedule(ScheduleConfig(kind="cosine"))
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999
    with pytest.raises(ConfigError, match="cosine"):
        ScheduleConfig(kind="cosine", beta_start=0.001)


def test_derived_tables_agree():
    s = NoiseSchedule(ScheduleConfig())
    ab = s.alphas_cumprod
    assert torch.allclose(s.sigmas, ((1 - ab) / ab).sqrt(), rtol=1e-14)
    assert torch.allclose(s.log_snr, -2 * s.sigmas.log(), rtol=1e-12)
    assert torch.allclose(s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2, torch.ones(1000, dtype=torch.float64))
    assert (s.log_snr[1:] < s.log_snr[:-1]).all()


def test_zero_terminal_snr_rescaling():
    plain = NoiseSchedule(ScheduleConfig(prediction="v"))
    s = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True, prediction="v"))
    assert s.alphas_cumprod[-1].item() == 0.0
    assert s.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-12)
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()
    assert torch.allclose(torch.cumprod(1 - s.betas, 0), s.alphas_cumprod, atol=1e-12)
    assert s.betas[-1].item() == pytest.approx(1.0)
    assert math.isinf(s.sigmas[-1].item()) and math.isfinite(s.sigma_max)
    # sqrt(ᾱ) is an affine map of the original sqrt(ᾱ) (Lin et al. 2023, Algorithm 1)
    a, b = plain.sqrt_alphas_cumprod, s.sqrt_alphas_cumprod
    slope = (b[0] - b[500]) / (a[0] - a[500])
    assert torch.allclose(b, (a - a[-1]) * slope, atol=1e-12)


def test_zero_terminal_snr_rejects_eps_prediction():
    with pytest.raises(ConfigError, match="prediction v or x0"):
        ScheduleConfig(zero_terminal_snr=True, prediction="eps")


def test_config_round_trip_and_validation():
    cfg = from_dict(ScheduleConfig, {"kind": "linear", "beta_start": "2e-4", "prediction": "v"})
    assert cfg.betas_range() == (2e-4, 0.02)
    assert from_dict(ScheduleConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError):
        from_dict(ScheduleConfig, {"kind": "quadratic"})
    with pytest.raises(ConfigError, match="beta_start < beta_end"):
        ScheduleConfig(kind="linear", beta_start=0.03, beta_end=0.02)


def test_add_noise_is_q_sample_with_per_sample_t():
    s = NoiseSchedule(ScheduleConfig())
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    x_t = s.add_noise(x0, noise, t)
    for i in range(3):
        ab = s.alphas_cumprod[t[i]].item()
        assert torch.allclose(x_t[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i], atol=1e-6)


def test_timestep_spacings():
    s = NoiseSchedule(ScheduleConfig())
    assert s.timesteps(10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert s.timesteps(10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert s.timesteps(10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert s.timesteps(3, "trailing").tolist() == [999, 666, 332]
    for steps in (1, 7, 1000):
        for spacing in ("leading", "trailing", "linspace"):
            t = s.timesteps(steps, spacing)
            assert len(t) == steps and (t[1:] < t[:-1]).all() and 0 <= t.min() and t.max() <= 999
    with pytest.raises(ConfigError, match="at most 1000"):
        s.timesteps(1001, "trailing")
    with pytest.raises(ConfigError, match="spacing"):
        s.timesteps(10, "uniform")
    with pytest.raises(ConfigError, match="positive"):
        s.timesteps(0, "trailing")


def test_karras_ladder_follows_eq5():
    s = NoiseSchedule(ScheduleConfig())
    t = s.timesteps(8, "karras")
    assert t[0].item() == 999 and t[-1].item() == 0 and (t[1:] < t[:-1]).all()
    sigmas = ((1 - s.alpha_bar(t)) / s.alpha_bar(t)).sqrt().double()
    lo, hi = s.sigma_min ** (1 / KARRAS_RHO), s.sigma_max ** (1 / KARRAS_RHO)
    expected = (hi + torch.linspace(0, 1, 8, dtype=torch.float64) * (lo - hi)) ** KARRAS_RHO
    assert torch.allclose(sigmas, expected, rtol=1e-9)


def test_fractional_timesteps_interpolate_in_log_sigma():
    s = NoiseSchedule(ScheduleConfig())
    t_int = torch.tensor([0, 10, 999])
    assert torch.equal(s.alpha_bar(t_int, dtype=torch.float64), s.alphas_cumprod[t_int])
    assert torch.equal(s.alpha_bar(t_int.double()), s.alphas_cumprod[t_int])
    half = s.alpha_bar(torch.tensor([10.5], dtype=torch.float64))
    log_sigma = 0.5 * (s.sigmas[10].log() + s.sigmas[11].log())
    assert half.item() == pytest.approx(1 / (1 + log_sigma.exp().item() ** 2), rel=1e-12)
    t = torch.tensor([3.25, 400.5, 998.9], dtype=torch.float64)
    sigma = ((1 - s.alpha_bar(t)) / s.alpha_bar(t)).sqrt()
    assert torch.allclose(s.sigma_to_t(sigma), t, atol=1e-9)


def test_device_tables_are_cached():
    s = NoiseSchedule(ScheduleConfig())
    a = s.table("alphas_cumprod", "cpu", torch.float32)
    assert a is s.table("alphas_cumprod", torch.device("cpu"), torch.float32)
    assert a.dtype == torch.float32
    with pytest.raises(ValueError):
        s.table("nope")
