"""Autoencoder training losses: adaptive weight, generator/discriminator losses and the PatchGAN."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.autoencoders import (
    AutoencoderLoss,
    AutoencoderLossConfig,
    NLayerDiscriminator,
    adaptive_weight,
    build_autoencoder_loss,
    hinge_d_loss,
    vanilla_d_loss,
)


class MeanSquarePerceptual(nn.Module):
    """A stand-in for LPIPS: per-sample mean squared difference of a fixed 1×1 projection."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 2, 1)

    def forward(self, x, y):
        return (self.proj(x) - self.proj(y)).pow(2).flatten(1).mean(1)  # [B]


class CountingDiscriminator(nn.Module):
    """Constant-plus-mean logits with a call counter, to check when the discriminator runs."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.3))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=1, keepdim=True) * 2.0 + self.bias  # [B, 1, H, W]


class ToyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Conv2d(2, 4, 1)
        self.conv_out = nn.Conv2d(4, 3, 1)

    def forward(self, z):
        return self.conv_out(torch.tanh(self.hidden(z)))


def _cfg(**kw) -> AutoencoderLossConfig:
    base = dict(perceptual_weight=0.0, disc_start=10, disc_weight=0.5, kl_weight=1e-3, reduction="sum")
    base.update(kw)
    return AutoencoderLossConfig(**base)


def test_adaptive_weight_equals_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    last = nn.Linear(3, 2, bias=False)
    h = torch.randn(5, 3)
    y = last(h)  # [5, 2]
    a = torch.randn(5, 2)
    rec, adv = y.pow(2).sum(), (a * y).sum()
    # analytic gradients w.r.t. W (y = h Wᵀ): ∂rec/∂W = 2 yᵀ h, ∂adv/∂W = aᵀ h
    g_rec, g_adv = 2 * y.detach().t() @ h, a.t() @ h
    expected = g_rec.norm() / (g_adv.norm() + 1e-4)
    w = adaptive_weight(rec, adv, last.weight)
    assert w.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not w.requires_grad
    assert adaptive_weight(rec, 1e-12 * adv, last.weight, max_weight=7.0).item() == 7.0  # clamped


def test_generator_loss_before_disc_start_skips_the_discriminator():
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(_cfg())
    loss_fn.discriminator = CountingDiscriminator()
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    xr = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    kl = torch.tensor([3.0, 5.0])
    loss, logs = loss_fn.generator_loss(x, xr, {"kl": kl}, step=9, last_layer=None)
    assert loss_fn.discriminator.calls == 0
    expected = (xr - x).abs().sum() / 2 + 1e-3 * 4.0  # L1 summed per sample, mean over batch; KL weighted
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["g_adv"].item() == 0.0 and logs["d_weight"].item() == 0.0
    assert logs["kl"].item() == 4.0 and logs["rec"].item() == pytest.approx((xr - x).abs().mean().item())
    d_loss, d_logs = loss_fn.discriminator_loss(x, xr, step=9)
    assert loss_fn.discriminator.calls == 0 and d_loss.item() == 0.0
    d_loss.backward()  # connected zero: a trainer may call backward() regardless
    assert loss_fn.discriminator.bias.grad.item() == 0.0


def test_generator_loss_after_disc_start_uses_the_adaptive_weight():
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(_cfg(reduction="mean"))
    loss_fn.discriminator = CountingDiscriminator()
    decoder = ToyDecoder()
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    xr = decoder(torch.randn(2, 2, 4, 4))
    loss, logs = loss_fn.generator_loss(x, xr, {"kl": torch.zeros(2)}, step=10, last_layer=decoder.conv_out.weight)
    assert loss_fn.discriminator.calls == 1
    logits = xr.mean(dim=1, keepdim=True) * 2.0 + 0.3
    g_adv = -logits.mean()  # hinge generator loss
    nll = (xr - x).abs().mean()
    lam = adaptive_weight(nll, g_adv, decoder.conv_out.weight)
    assert logs["g_adv"].item() == pytest.approx(g_adv.item(), rel=1e-6)
    assert logs["d_weight"].item() == pytest.approx(0.5 * lam.item(), rel=1e-5)
    assert loss.item() == pytest.approx((nll + 0.5 * lam * g_adv).item(), rel=1e-5)
    loss.backward()
    assert loss_fn.discriminator.bias.grad is None  # the generator step leaves the discriminator alone
    assert loss_fn.discriminator.bias.requires_grad
    assert decoder.conv_out.weight.grad.abs().sum() > 0
    with torch.no_grad():  # validation: no adaptive weight can be taken, the adversarial term is off
        _, val_logs = loss_fn.generator_loss(x, xr.detach(), {}, step=10, last_layer=decoder.conv_out.weight)
    assert val_logs["d_weight"].item() == 0.0


def test_vanilla_generator_loss_is_non_saturating():
    loss_fn = AutoencoderLoss(_cfg(disc_loss="vanilla", disc_start=0))
    loss_fn.discriminator = CountingDiscriminator()
    x = torch.zeros(1, 3, 2, 2)
    xr = torch.full((1, 3, 2, 2), 0.1, requires_grad=True)
    _, logs = loss_fn.generator_loss(x, xr, {}, step=0, last_layer=None)
    assert logs["g_adv"].item() == pytest.approx(F.softplus(torch.tensor(-0.5)).item(), rel=1e-6)
    assert logs["d_weight"].item() == 0.5  # no last layer: the fixed disc_weight


def test_discriminator_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # ½ (mean(relu(1 − real)) + mean(relu(1 + fake))) = ½ ((0 + 0.5)/2 + (0 + 1)/2)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.375)
    sp = lambda v: math.log1p(math.exp(v))
    expected = 0.5 * ((sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.0)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_after_disc_start():
    loss_fn = AutoencoderLoss(_cfg(disc_factor=2.0))
    loss_fn.discriminator = CountingDiscriminator()
    x = torch.full((1, 3, 2, 2), 0.5)  # logits 1.3
    xr = torch.full((1, 3, 2, 2), -0.5, requires_grad=True)  # logits -0.7
    loss, logs = loss_fn.discriminator_loss(x, xr, step=10)
    assert loss_fn.discriminator.calls == 2
    assert loss.item() == pytest.approx(2.0 * 0.5 * (0.0 + 0.3))
    assert logs["logits_real"].item() == pytest.approx(1.3) and logs["logits_fake"].item() == pytest.approx(-0.7)
    loss.backward()
    assert xr.grad is None  # inputs are detached
    assert loss_fn.discriminator.bias.grad.item() == pytest.approx(2.0 * 0.5 * 1.0)


def test_perceptual_term_vq_term_and_learned_logvar():
    torch.manual_seed(0)
    perceptual = MeanSquarePerceptual()
    loss_fn = AutoencoderLoss(_cfg(perceptual_weight=2.0, codebook_weight=3.0, learn_logvar=True, logvar_init=0.5,
                                   reduction="mean"), perceptual)
    assert loss_fn.generator_parameters() == [loss_fn.logvar]
    assert not any(p.requires_grad for p in perceptual.parameters())
    loss_fn.train()
    assert not perceptual.training
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    xr = (x + 0.2 * torch.randn_like(x)).requires_grad_(True)
    aux = {"vq_loss": torch.tensor(0.7), "perplexity": torch.tensor(5.0), "usage": torch.tensor(0.5)}
    loss, logs = loss_fn.generator_loss(x, xr, aux, step=0)
    p = perceptual(x, xr).detach()
    rec = (xr - x).abs().detach() + 2.0 * p.view(-1, 1, 1, 1)
    nll = (rec / math.exp(0.5) + 0.5).mean()
    assert logs["perceptual"].item() == pytest.approx(p.mean().item(), rel=1e-6)
    assert logs["nll"].item() == pytest.approx(nll.item(), rel=1e-6)
    assert loss.item() == pytest.approx(nll.item() + 3.0 * 0.7, rel=1e-6)
    assert logs["perplexity"].item() == 5.0 and logs["codebook"].item() == pytest.approx(0.7)
    loss.backward()
    assert loss_fn.logvar.grad is not None and loss_fn.logvar.grad.item() != 0.0
    with pytest.raises(ValueError, match="perceptual module"):
        AutoencoderLoss(_cfg(perceptual_weight=1.0))
    assert build_autoencoder_loss(_cfg()).perceptual is None  # weight 0: nothing to fetch


def test_grayscale_images_reach_the_perceptual_network_as_three_channels():
    loss_fn = AutoencoderLoss(_cfg(perceptual_weight=1.0), MeanSquarePerceptual(), image_channels=1)
    x = torch.zeros(2, 1, 8, 8)
    _, logs = loss_fn.generator_loss(x, x + 0.1, {}, step=0)
    assert logs["perceptual"].item() >= 0.0


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_patchgan_shapes_and_init(norm):
    torch.manual_seed(0)
    d = NLayerDiscriminator(3, channels=64, n_layers=3, norm=norm)
    out = d(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 1, 6, 4)  # 64 → 32 → 16 → 8 → 7 → 6 (and 48 → … → 4)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5
    weights = torch.cat([c.weight.flatten() for c in convs[1:4]])
    assert weights.mean().abs() < 2e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
    norms = [m for m in d.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(norms) == 3 and all(isinstance(m, nn.GroupNorm) == (norm == "group") for m in norms)


@pytest.mark.parametrize("side,layers", [(16, 1), (16, 2), (32, 3), (70, 3), (64, 4)])
def test_discriminator_output_side_is_what_the_network_gives(side, layers):
    from ldmkit.autoencoders.discriminator import NLayerDiscriminator

    net = NLayerDiscriminator(3, 8, layers)
    assert net(torch.zeros(1, 3, side, side)).shape[-1] == NLayerDiscriminator.output_side(side, layers)


def test_a_discriminator_too_deep_for_the_images_is_a_config_error():
    from ldmkit.config import load_config
    from ldmkit.errors import ConfigError
    from ldmkit.training.autoencoder_task import AutoencoderExperiment

    with pytest.raises(ConfigError, match=r"loss.disc_layers=3 is too deep for data.resolution=16"):
        load_config(AutoencoderExperiment, "synthetic-kl-f4", ["data.resolution=16", "loss.disc_layers=3",
                                                                "loss.disc_start=5", "train.steps=10"], group="autoencoder")
    for fine in (["loss.disc_layers=2", "loss.disc_start=5"], ["loss.disc_layers=3", "loss.disc_start=10"]):
        load_config(AutoencoderExperiment, "synthetic-kl-f4", ["data.resolution=16", "train.steps=10", *fine],
                    group="autoencoder")  # shallow enough, or never reached in this run
