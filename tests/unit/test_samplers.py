"""Samplers against an analytic denoiser: Gaussian data x0 ~ N(μ, diag(s²)) has the exact posterior mean
E[x0 | x_t] = μ + sqrt(ᾱ) s² / (ᾱ s² + 1 - ᾱ) · (x_t - sqrt(ᾱ) μ), and its probability-flow ODE maps
x_T = z to x0 = μ + s (z - sqrt(ᾱ_T) μ) / sqrt(ᾱ_T s² + 1 - ᾱ_T)."""

import inspect

import pytest
import torch

from ldmkit import samplers
from ldmkit.conditioning.types import Conditioning
from ldmkit.diffusion.parameterisation import target
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.samplers import SamplerOptions
from ldmkit.samplers.common import SamplingCancelled

MU = torch.tensor([1.0, -0.5], dtype=torch.float64).view(1, 2, 1, 1)
STD = torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, 2, 1, 1)
DETERMINISTIC = ["ddim", "dpm++2m", "dpm++3m", "euler", "heun", "plms", "unipc"]
STOCHASTIC = ["ddpm", "dpm++2m-sde", "euler-a"]  # fresh noise at every step, whatever η


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add contention


class GaussianPosterior(torch.nn.Module):
    """The exact E[x0 | x_t] for Gaussian data, output in the schedule's parameterisation.

    With a condition, ``cond.vector`` [B, 2] replaces the mean. Records the timesteps it is called with.
    """

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.calls = []

    def forward(self, x, t, cond):
        self.calls.append(t.clone())
        ab = self.schedule.alpha_bar(t, dtype=torch.float64).view(-1, 1, 1, 1)
        mu = MU if cond is None else cond.vector.double().view(-1, 2, 1, 1)
        a, xd = ab.sqrt(), x.double()
        x0 = mu + a * STD**2 / (ab * STD**2 + 1 - ab) * (xd - a * mu)
        eps = (xd - a * x0) / (1 - ab).sqrt()
        return target(self.schedule.prediction, x0, eps, ab).to(x.dtype)


def make(prediction="eps", **kw):
    sched = NoiseSchedule(ScheduleConfig(kind=kw.pop("kind", "linear"), prediction=prediction, **kw))
    return Denoiser(GaussianPosterior(sched), sched)


def run(name, denoiser, noise, cond=None, *, uncond=None, start=None, callback=None, generator=None, **options):
    """One sampling call through the public entry point; guidance defaults to 1 (most tests check the solver)."""
    options.setdefault("guidance", 1.0)
    return samplers.sample(SamplerOptions(sampler=name, **options), denoiser, noise, cond, uncond, start=start,
                           callback=callback, generator=generator)


def probes():
    """Noise values -1, 0, 1 in each channel: the (affine) map of a deterministic sampler on them."""
    return torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 2, 1, 1).contiguous()


def affine_map(out):
    """(offset B, slope A) of out = A z + B, checking that it is affine."""
    offset, slope = out[1], out[2] - out[1]
    assert torch.allclose(out[0], offset - slope, atol=1e-9)
    return offset, slope


def w2(out, mean, std):
    """W2 distance between the Gaussian a deterministic sampler produces and N(mean, std²)."""
    offset, slope = affine_map(out)
    return ((offset - mean) ** 2 + (slope.abs() - std) ** 2).sum().sqrt().item()


def exact_ode_map(denoiser, t0=999):
    ab = denoiser.schedule.alpha_bar(torch.tensor(t0, dtype=torch.float64))
    slope = STD[0] / (ab * STD[0] ** 2 + 1 - ab).sqrt()
    return MU[0] - slope * ab.sqrt() * MU[0], slope


def test_registry_and_one_signature():
    assert samplers.names() == sorted(["ddim", "ddpm", "dpm++2m", "dpm++2m-sde", "dpm++3m", "euler", "euler-a",
                                       "flow-heun", "heun", "lcm", "plms", "unipc"])
    from ldmkit.cli.common import SAMPLER_NAMES

    assert list(SAMPLER_NAMES) == samplers.names()  # what `--help` lists
    shared = ["model", "x", "ladder", "callback", "generator"]
    for name in samplers.names():
        spec = samplers.get(name)
        parameters = list(inspect.signature(spec.function).parameters)
        assert parameters == shared[:3] + (["eta"] if spec.eta else []) + shared[3:], name
        assert spec.default_spacing in ("trailing", "karras")
    with pytest.raises(ConfigError, match="did you mean 'dpm\\+\\+2m'"):
        samplers.get("dmp++2m")


@pytest.mark.parametrize("name,steps,tolerance", [("ddim", 200, 0.04), ("euler", 200, 0.04), ("heun", 100, 0.01),
                                                   ("dpm++2m", 100, 0.01), ("plms", 100, 0.01),
                                                   ("dpm++3m", 100, 0.01), ("unipc", 100, 0.01)])
def test_deterministic_samplers_reproduce_the_data_distribution(name, steps, tolerance):
    denoiser = make()
    out = run(name, denoiser, probes(), steps=steps)  # the sampler's default spacing
    assert w2(out, MU[0], STD[0]) < tolerance + 0.01  # ᾱ_T > 0 leaves a small bias
    assert w2(out, *exact_ode_map(denoiser)) < tolerance


@pytest.mark.parametrize("name,kwargs", [("ddpm", {}), ("ddim", {"eta": 1.0}), ("euler-a", {}), ("dpm++2m-sde", {})])
def test_stochastic_samplers_reproduce_mean_and_variance(name, kwargs):
    denoiser = make()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 2, 1, 1, generator=g, dtype=torch.float64)
    out = run(name, denoiser, noise, steps=250, generator=g, **kwargs)
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    assert torch.allclose(mean, MU.flatten(), atol=0.1)
    assert torch.allclose(std, STD.flatten(), rtol=0.05)


def test_dpm_solver_beats_ddim_at_20_steps():
    denoiser = make()
    for spacing in ("trailing", "karras"):
        err_dpm = w2(run("dpm++2m", denoiser, probes(), steps=20, spacing=spacing), *exact_ode_map(denoiser))
        err_ddim = w2(run("ddim", denoiser, probes(), steps=20, spacing=spacing), *exact_ode_map(denoiser))
        assert err_dpm < 0.5 * err_ddim


def test_higher_order_samplers_converge_faster():
    denoiser = make()
    target_map = exact_ode_map(denoiser)
    for name in ("heun", "dpm++2m", "plms", "dpm++3m", "unipc"):
        coarse = w2(run(name, denoiser, probes(), steps=10, spacing="karras"), *target_map)
        fine = w2(run(name, denoiser, probes(), steps=40, spacing="karras"), *target_map)
        assert fine < coarse / 10, name  # 2nd order or more: ~16x for 4x the steps
    coarse = w2(run("ddim", denoiser, probes(), steps=10, spacing="karras"), *target_map)
    fine = w2(run("ddim", denoiser, probes(), steps=40, spacing="karras"), *target_map)
    assert coarse / 5 < fine < coarse / 3  # 1st order: ~4x


def test_third_order_samplers_converge_at_third_order():
    """Error per doubling of karras steps (20 → 40 → 80): dpm++3m 12x, 8x and unipc 9x, 9x against dpm++2m's
    4.7x, 4.4x (k-diffusion's 3M curvature weight, half of ours, measures 2.4x, 3.0x here)."""
    denoiser = make()
    target_map = exact_ode_map(denoiser)

    def ratios(name):
        errs = [w2(run(name, denoiser, probes(), steps=n, spacing="karras"), *target_map) for n in (20, 40, 80)]
        return errs[0] / errs[1], errs[1] / errs[2]

    assert all(5 > r > 3 for r in ratios("dpm++2m"))
    for name in ("dpm++3m", "unipc"):
        assert all(r > 6 for r in ratios(name)), name


@pytest.mark.parametrize("kind,steps", [("scaled_linear", 12), ("scaled_linear", 15), ("scaled_linear", 20),
                                        ("linear", 20), ("linear", 25)])
def test_dpm_3m_and_unipc_beat_dpm_2m_at_few_steps(kind, steps):
    """W2 to the exact flow on karras ladders, e.g. scaled_linear at 15 steps: 2M 0.040, 3M 0.016, UniPC 0.020.
    (At 10 steps or fewer on the linear schedule neither wins: the Karras ladder's last steps are long in λ and
    the extrapolation overshoots; dpm++3m then errs most.)"""
    denoiser = make(kind=kind)
    target_map = exact_ode_map(denoiser)
    err_2m = w2(run("dpm++2m", denoiser, probes(), steps=steps, spacing="karras"), *target_map)
    for name in ("dpm++3m", "unipc"):
        assert w2(run(name, denoiser, probes(), steps=steps, spacing="karras"), *target_map) < 0.75 * err_2m, name


def test_unipc_costs_one_evaluation_per_step_and_reevaluates_after_a_replaced_x():
    denoiser = make()
    noise = torch.randn(2, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = run("unipc", denoiser, noise, steps=10)
    assert len(denoiser.network.calls) == 10  # the corrector reuses the evaluation at the predicted point
    denoiser.network.calls.clear()
    # a replaced x (here: an equal copy) gets a fresh evaluation, at the corrected point instead of the predicted one
    again = run("unipc", denoiser, noise, steps=10, callback=lambda step: step.x.clone() if step.index == 3 else None)
    assert len(denoiser.network.calls) == 11 and torch.allclose(again, plain, atol=1e-3)


def test_euler_ancestral_is_ddpm_and_the_sde_solver_starts_with_ddpms_step():
    denoiser = make()
    noise = torch.randn(16, 2, 1, 1, dtype=torch.float64)
    for spacing in ("trailing", "karras"):
        a = run("euler-a", denoiser, noise, steps=12, spacing=spacing, generator=torch.Generator().manual_seed(1))
        b = run("ddpm", denoiser, noise, steps=12, spacing=spacing, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(a, b, atol=1e-10), spacing
    first = {}
    for name in ("ddpm", "dpm++2m-sde"):  # without history the SDE solver's step is the DDPM posterior draw
        run(name, denoiser, noise, steps=12, spacing="karras", generator=torch.Generator().manual_seed(1),
            callback=lambda step: (first.setdefault(name, step.x.clone()), None)[1])
    assert torch.allclose(first["ddpm"], first["dpm++2m-sde"], atol=1e-10)


def test_the_second_order_sde_solver_matches_the_variance_in_few_steps():
    """std / target at 40 karras steps, 10 000 samples: dpm++2m-sde 1.02, 1.02; euler-a (first order) 0.85, 0.88."""
    denoiser = make()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(10_000, 2, 1, 1, generator=g, dtype=torch.float64)
    for name, low, high in [("dpm++2m-sde", 0.96, 1.05), ("euler-a", 0.8, 0.9)]:
        out = run(name, denoiser, noise, steps=40, generator=torch.Generator().manual_seed(1))
        ratio = out.std(dim=(0, 2, 3)) / STD.flatten()
        assert torch.allclose(out.mean(dim=(0, 2, 3)), MU.flatten(), atol=0.05), name
        assert ((low < ratio) & (ratio < high)).all(), (name, ratio)


def test_new_samplers_reach_the_options_and_the_command_line():
    from ldmkit.cli.main import build_parser

    for name in ("unipc", "dpm++3m", "dpm++2m-sde", "euler-a"):
        options = SamplerOptions(sampler=name)
        assert options.resolved_spacing(NoiseSchedule()) == "karras" and not options.spec.eta
        with pytest.raises(ConfigError, match="has no eta"):
            SamplerOptions(sampler=name, eta=1.0)
        assert build_parser().parse_args(["sample", "--model", "m", "--sampler", name]).sampler == name
    with pytest.raises(ConfigError, match="did you mean 'unipc'"):
        SamplerOptions(sampler="unipcc")


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_every_parameterisation_gives_the_same_samples(name):
    outs = [run(name, make(p), probes(), steps=8) for p in ("eps", "x0", "v")]
    assert torch.allclose(outs[0], outs[1], atol=1e-9) and torch.allclose(outs[0], outs[2], atol=1e-9)


def test_euler_is_ddim_and_ddpm_is_ddim_eta_one():
    denoiser = make()
    for spacing in ("trailing", "karras"):
        a = run("euler", denoiser, probes(), steps=12, spacing=spacing)
        b = run("ddim", denoiser, probes(), steps=12, spacing=spacing)
        assert torch.allclose(a, b, atol=1e-10)
    noise = torch.randn(16, 2, 1, 1, dtype=torch.float64)
    a = run("ddpm", denoiser, noise, steps=12, generator=torch.Generator().manual_seed(1))
    b = run("ddim", denoiser, noise, steps=12, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, atol=1e-10)


# lcm samples consistency models (its estimate is the trajectory's start, not the posterior mean this denoiser
# gives); tests/unit/test_distill.py checks it against the exact consistency function instead.
@pytest.mark.parametrize("name", [n for n in samplers.names() if n != "lcm"])
def test_zero_terminal_snr_with_v_prediction(name):
    denoiser = make("v", kind="scaled_linear", zero_terminal_snr=True)
    if name in STOCHASTIC:
        noise = torch.randn(4000, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out = run(name, denoiser, noise, steps=250, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(out.mean(dim=(0, 2, 3)), MU.flatten(), atol=0.1)
        assert torch.allclose(out.std(dim=(0, 2, 3)), STD.flatten(), rtol=0.05)
        return
    out = run(name, denoiser, probes(), steps=60, spacing="trailing")
    assert torch.isfinite(out).all()
    assert w2(out, MU[0], STD[0]) < 0.06  # ᾱ_T = 0: pure noise maps exactly onto the data


@pytest.mark.parametrize("name", samplers.names())
def test_same_seed_same_samples(name):
    denoiser = make()
    noise = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    a = run(name, denoiser, noise, steps=5, generator=torch.Generator().manual_seed(7))
    b = run(name, denoiser, noise, steps=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == noise.dtype and a.shape == noise.shape
    if name in STOCHASTIC:
        c = run(name, denoiser, noise, steps=5, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", samplers.names())
def test_img2img_starts_at_the_right_timestep(name):
    denoiser = make()
    net = denoiser.network
    start = torch.full((2, 2, 1, 1), 3.0, dtype=torch.float64)
    noise = torch.randn(2, 2, 1, 1, dtype=torch.float64)
    seen = []
    run(name, denoiser, noise, steps=10, spacing="trailing", start=start, strength=0.5,
                       callback=lambda step: seen.append((step.index, step.total)) or None)
    first_t = net.calls[0]
    assert first_t.tolist() == [499, 499]  # trailing ladder 999, 899, …, 99; the last 5 steps begin at 499
    assert seen == [(i, 5) for i in range(5)]
    net.calls.clear()
    # the first denoiser input is the start latents noised to t = 499
    inputs = []
    net_forward = net.forward
    net.forward = lambda x, t, c: (inputs.append(x.clone()), net_forward(x, t, c))[1]
    run(name, denoiser, noise, steps=10, spacing="trailing", start=start, strength=0.5)
    assert torch.allclose(inputs[0], denoiser.schedule.add_noise(start, noise, torch.tensor([499, 499])))


def test_strength_one_and_small_strength():
    denoiser = make()
    start = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    noise = torch.randn(1, 2, 1, 1, dtype=torch.float64)
    run("ddim", denoiser, noise, steps=10, start=start, strength=1.0)
    assert denoiser.network.calls[0].item() == 999 and len(denoiser.network.calls) == 10
    denoiser.network.calls.clear()
    run("ddim", denoiser, noise, steps=10, start=start, strength=0.01)  # at least one step
    assert [t.item() for t in denoiser.network.calls] == [99]
    with pytest.raises(ConfigError, match="strength"):
        run("ddim", denoiser, noise, steps=10, start=start, strength=0.0)
    with pytest.raises(ConfigError, match="img2img"):
        run("ddim", denoiser, noise, steps=10, strength=0.5)


@pytest.mark.parametrize("name", samplers.names())
def test_callback_can_replace_x_and_cancel(name):
    denoiser = make()
    noise = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    known = torch.full_like(noise, 7.0)

    def pin_last(step):
        assert step.x.shape == step.x0.shape == noise.shape
        return known if step.index == step.total - 1 else None

    out = run(name, denoiser, noise, steps=4, callback=pin_last)
    assert torch.equal(out, known)

    def cancel(step):
        if step.index == 1:
            raise SamplingCancelled("stopped")

    with pytest.raises(SamplingCancelled):
        run(name, denoiser, noise, steps=4, callback=cancel)


def test_callback_replacement_feeds_the_next_step():
    denoiser = make()
    noise = torch.randn(1, 2, 1, 1, dtype=torch.float64)
    inputs = []
    net_forward = denoiser.network.forward
    denoiser.network.forward = lambda x, t, c: (inputs.append(x.clone()), net_forward(x, t, c))[1]
    marker = torch.full_like(noise, 0.123)
    run("ddim", denoiser, noise, steps=3, callback=lambda step: marker if step.index == 0 else None)
    assert torch.equal(inputs[1], marker)


@pytest.mark.parametrize("name", samplers.names())
def test_the_callback_is_told_the_level_x_is_at(name):
    denoiser = make()
    options = SamplerOptions(sampler=name, steps=6, guidance=1.0, strength=0.5)
    ladder = options.ladder(denoiser.schedule)
    levels = []
    samplers.sample(options, denoiser, probes(), start=torch.zeros_like(probes()),
                    callback=lambda step: levels.append((step.index, step.total, step.alpha_bar)) or None)
    assert levels == [(i, len(ladder), ladder.alpha_bars[i + 1]) for i in range(len(ladder))]
    assert levels[-1][2] == 1.0  # the last step lands on clean data


def test_options_are_checked_once_where_they_are_made():
    for bad, match in [({"sampler": "dmp"}, "did you mean"), ({"steps": 0}, "steps"), ({"steps": 10**6}, "at most"),
                       ({"guidance": float("nan")}, "finite"), ({"guidance_rescale": 1.5}, r"\[0, 1\]"),
                       ({"sampler": "heun", "eta": 0.3}, "has no eta"), ({"eta": -1.0, "sampler": "ddim"}, "at least 0"),
                       ({"spacing": "cosine"}, "spacing"), ({"strength": 0.0}, "strength"), ({"seed": -1}, "seed")]:
        with pytest.raises(ConfigError, match=match):
            SamplerOptions(**bad)
    options = SamplerOptions(sampler="euler")
    plain = NoiseSchedule()
    assert options.resolved_spacing(plain) == "karras"
    assert options.replace(spacing="trailing").resolved_spacing(plain) == "trailing"


def test_karras_ladder_passes_fractional_timesteps():
    denoiser = make()
    run("euler", denoiser, probes(), steps=6)
    ts = [t[0].item() for t in denoiser.network.calls]
    assert ts[0] == 999 and ts[-1] == 0 and any(t != int(t) for t in ts)
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_conditioning_and_guidance_reach_the_network():
    denoiser = make()
    cond = Conditioning(vector=torch.tensor([[3.0, -2.0]]))
    uncond = Conditioning(vector=torch.tensor([[0.0, 0.0]]))
    noise = probes()
    out = run("dpm++2m", denoiser, noise, cond, steps=40)
    offset, _ = affine_map(out)
    assert torch.allclose(offset.flatten(), torch.tensor([3.0, -2.0], dtype=torch.float64), atol=0.05)
    denoiser.network.calls.clear()
    guided = run("dpm++2m", denoiser, noise, cond, uncond=uncond, guidance=2.0, steps=40)
    assert all(t.shape == (6,) for t in denoiser.network.calls)  # one batched forward per evaluation
    g_offset, _ = affine_map(guided)
    assert (g_offset.flatten() - offset.flatten()).abs().min() > 1.0  # pushed further from the null condition


def test_guidance_interval_guides_only_the_levels_inside_it():
    denoiser = make()
    schedule = denoiser.schedule
    cond = Conditioning(vector=torch.tensor([[3.0, -2.0]]))
    uncond = Conditioning(vector=torch.tensor([[0.0, 0.0]]))
    noise = probes()
    batch = noise.shape[0]
    guided = run("ddim", denoiser, noise, cond, uncond=uncond, guidance=2.0, steps=20)
    plain = run("ddim", denoiser, noise, cond, steps=20)
    # an interval holding every level is plain guidance; one holding none is one conditional pass per level
    everywhere = run("ddim", denoiser, noise, cond, uncond=uncond, guidance=2.0, steps=20,
                     guidance_interval=(0.0, 1e6))
    assert torch.equal(everywhere, guided)
    denoiser.network.calls.clear()
    nowhere = run("ddim", denoiser, noise, cond, uncond=uncond, guidance=2.0, steps=20, guidance_interval=(1e6, 1e7))
    assert torch.equal(nowhere, plain) and all(t.shape == (batch,) for t in denoiser.network.calls)
    # in between: a batched pair exactly where lo < σ <= hi (σ = sqrt((1 - ᾱ)/ᾱ) of the evaluated level)
    lo, hi = 0.5, 5.0
    denoiser.network.calls.clear()
    middle = run("ddim", denoiser, noise, cond, uncond=uncond, guidance=2.0, steps=20, guidance_interval=(lo, hi))
    inside = []
    for t in denoiser.network.calls:
        ab = schedule.alpha_bar(t[:1], dtype=torch.float64).item()
        inside.append(lo < ((1 - ab) / ab) ** 0.5 <= hi)
        assert t.shape == ((2 * batch,) if inside[-1] else (batch,))
    assert 0 < sum(inside) < len(inside)
    assert not torch.allclose(middle, guided) and not torch.allclose(middle, plain)
    for bad in [(2.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (0.0, float("inf")), (1.0,)]:
        with pytest.raises(ConfigError, match="guidance"):
            SamplerOptions(guidance_interval=bad)


def test_argument_errors():
    denoiser = make()
    noise = torch.randn(1, 2, 1, 1)
    with pytest.raises(ConfigError, match="eta"):
        run("euler", denoiser, noise, steps=3, eta=0.5)
    with pytest.raises(ConfigError, match="eta"):
        run("ddim", denoiser, noise, steps=3, eta=-1.0)
    with pytest.raises(ConfigError, match="uncond"):
        run("ddim", denoiser, noise, Conditioning(vector=torch.zeros(1, 2)), steps=3, guidance=3.0)
    with pytest.raises(ConfigError, match="shape"):
        run("ddim", denoiser, noise, steps=3, start=torch.zeros(2, 2, 1, 1))
    with pytest.raises(ConfigError, match="spacing"):
        run("ddim", denoiser, noise, steps=3, spacing="cosine")
