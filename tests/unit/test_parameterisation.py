import pytest
import torch

from ldmkit.diffusion import parameterisation as p


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    alpha_bar = torch.tensor([1e-4, 0.01, 0.3, 0.5, 0.9, 0.9999], dtype=torch.float64).view(6, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return x0, eps, alpha_bar, x_t


def test_conversions_recover_the_truth(batch):
    x0, eps, ab, x_t = batch
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0  # Salimans & Ho's definition
    assert torch.allclose(p.v_from_eps_x0(eps, x0, ab), v, atol=1e-12)
    assert torch.allclose(p.x0_from_eps(x_t, eps, ab), x0, atol=1e-10)
    assert torch.allclose(p.eps_from_x0(x_t, x0, ab), eps, atol=1e-10)
    assert torch.allclose(p.x0_from_v(x_t, v, ab), x0, atol=1e-12)
    assert torch.allclose(p.eps_from_v(x_t, v, ab), eps, atol=1e-12)
    assert torch.allclose(p.v_from_eps(x_t, eps, ab), v, atol=1e-10)
    assert torch.allclose(p.v_from_x0(x_t, x0, ab), v, atol=1e-10)


def test_round_trips_in_float64(batch):
    _, eps, ab, x_t = batch
    keep = (ab > 0.001).flatten()  # well conditioned both ways
    eps, ab, x_t = eps[keep], ab[keep], x_t[keep]
    assert (p.eps_from_x0(x_t, p.x0_from_eps(x_t, eps, ab), ab) - eps).abs().max() < 1e-12
    v = p.v_from_eps(x_t, eps, ab)
    assert (p.eps_from_v(x_t, v, ab) - eps).abs().max() < 1e-12
    x0 = p.x0_from_v(x_t, v, ab)
    assert (p.v_from_x0(x_t, x0, ab) - v).abs().max() < 1e-12


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_and_to_x0_eps_are_inverse(batch, prediction):
    x0, eps, ab, x_t = batch
    out = p.target(prediction, x0, eps, ab)
    got_x0, got_eps = p.to_x0_eps(prediction, out, x_t, ab)
    assert torch.allclose(got_x0, x0, atol=1e-9) and torch.allclose(got_eps, eps, atol=1e-9)


def test_unknown_prediction():
    with pytest.raises(ValueError, match="unknown prediction"):
        p.target("score", torch.zeros(1), torch.zeros(1), torch.ones(1))
