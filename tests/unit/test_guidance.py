import pytest
import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.samplers.guidance import guided_prediction


class Recording(torch.nn.Module):
    """eps-network whose output depends on the condition vector; records each call's batch size."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, cond):
        self.batches.append(x.shape[0])
        shift = cond.vector.view(-1, 1, 1, 1) if cond is not None else 0.0
        return 0.5 * x + shift + t.view(-1, 1, 1, 1).float() / 1000


@pytest.fixture
def setup():
    sched = NoiseSchedule(ScheduleConfig(prediction="v"))
    net = Recording()
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = Conditioning(vector=torch.tensor([[1.0], [2.0], [3.0]]))
    uncond = Conditioning(vector=torch.zeros(1, 1))
    return Denoiser(net, sched), net, x, cond, uncond


def test_scale_one_is_the_conditional_prediction_in_one_pass(setup):
    denoiser, net, x, cond, uncond = setup
    t = torch.tensor(400)
    plain = denoiser(x, t, cond)
    net.batches.clear()
    guided = guided_prediction(denoiser, x, t, cond, uncond, scale=1.0)
    assert net.batches == [3]
    assert torch.equal(guided.x0, plain.x0) and torch.equal(guided.eps, plain.eps)


def test_guidance_combines_in_one_batched_forward(setup):
    denoiser, net, x, cond, uncond = setup
    t = torch.tensor([100, 500, 900])
    c = denoiser(x, t, cond)
    u = denoiser(x, t, uncond.repeat(3))
    net.batches.clear()
    g = guided_prediction(denoiser, x, t, cond, uncond, scale=4.0)
    assert net.batches == [6]
    assert torch.allclose(g.eps, u.eps + 4.0 * (c.eps - u.eps), atol=1e-5)
    # x0 stays consistent with eps at (x_t, t)
    ab = denoiser.schedule.alpha_bar(t).view(-1, 1, 1, 1)
    assert torch.allclose(g.x0, (x - (1 - ab).sqrt() * g.eps) / ab.sqrt(), atol=1e-4)


def test_guidance_rescale(setup):
    denoiser, _, x, cond, uncond = setup
    t = torch.tensor(300)
    c = denoiser(x, t, cond)
    plain = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0)
    same = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, rescale=0.0)
    assert torch.equal(plain.x0, same.x0)
    full = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, rescale=1.0)
    dims = (1, 2, 3)
    assert torch.allclose(full.x0.std(dim=dims), c.x0.std(dim=dims), rtol=1e-5)
    half = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, rescale=0.5)
    assert torch.allclose(half.x0, 0.5 * (full.x0 + plain.x0), atol=1e-5)
    ab = denoiser.schedule.alpha_bar(t)
    assert torch.allclose(full.eps, (x - ab.sqrt() * full.x0) / (1 - ab).sqrt(), atol=1e-5)


def test_guidance_needs_an_unconditional_condition(setup):
    denoiser, _, x, cond, _ = setup
    with pytest.raises(ConfigError, match="uncond"):
        guided_prediction(denoiser, x, torch.tensor(5), cond, None, scale=3.0)
    with pytest.raises(ConfigError, match="guidance_rescale"):
        guided_prediction(denoiser, x, torch.tensor(5), cond, cond, scale=3.0, rescale=2.0)


def test_projected_guidance_weights_the_part_along_the_conditional_prediction(setup):
    denoiser, _, x, cond, uncond = setup
    t = torch.tensor([200, 500, 800])
    c, u = denoiser(x, t, cond), denoiser(x, t, uncond.repeat(3))
    plain = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0)
    same = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, parallel=1.0, norm_threshold=0.0)
    assert torch.equal(same.x0, plain.x0) and torch.equal(same.eps, plain.eps)  # the defaults are plain CFG
    dims = (1, 2, 3)

    def norm(v, keepdim=False):
        return torch.linalg.vector_norm(v, dim=dims, keepdim=keepdim)

    delta = c.x0 - u.x0
    unit = c.x0 / norm(c.x0, keepdim=True)
    along = (delta * unit).sum(dim=dims, keepdim=True) * unit
    half = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, parallel=0.5)
    assert torch.allclose(half.x0, c.x0 + 4.0 * (delta - along + 0.5 * along), atol=1e-4)
    apg = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, parallel=0.0)
    update = apg.x0 - c.x0
    assert ((update * c.x0).sum(dim=dims).abs() < 1e-3 * norm(update) * norm(c.x0)).all()  # orthogonal
    ab = denoiser.schedule.alpha_bar(t).view(-1, 1, 1, 1)
    assert torch.allclose(apg.eps, (x - ab.sqrt() * apg.x0) / (1 - ab).sqrt(), atol=1e-4)  # eps follows x0
    capped = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, norm_threshold=0.1)
    lengths = norm(capped.x0 - c.x0)
    assert norm(delta).min() > 0.1 and torch.allclose(lengths, torch.full((3,), 4.0 * 0.1), rtol=1e-4)


def test_projected_guidance_options_are_checked():
    from ldmkit.samplers import SamplerOptions

    for bad in [{"guidance_parallel": -0.5}, {"guidance_parallel": float("nan")}, {"guidance_norm_threshold": -1.0},
                {"guidance_momentum": -1.5}]:
        with pytest.raises(ConfigError, match="guidance"):
            SamplerOptions(**bad)


def test_projected_guidance_momentum_runs_over_the_calls_of_one_history(setup):
    denoiser, _, x, cond, uncond = setup
    t = torch.tensor(400)
    c, u = denoiser(x, t, cond), denoiser(x, t, uncond.repeat(3))
    history = []
    first = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, momentum=-0.5, history=history)
    assert torch.allclose(first.x0, c.x0 + 4.0 * (c.x0 - u.x0), atol=1e-4)  # nothing to run on yet
    second = guided_prediction(denoiser, x, t, cond, uncond, scale=5.0, momentum=-0.5, history=history)
    # the same inputs again: Δ + β·Δ = 0.5·Δ
    assert torch.allclose(second.x0, c.x0 + 4.0 * 0.5 * (c.x0 - u.x0), atol=1e-4)
    assert len(history) == 1
