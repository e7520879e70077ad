"""First-stage autoencoders: shapes, posterior, latent scaling, save/load and a short training run."""

import dataclasses
import math

import pytest
import torch

from ldmkit.autoencoders import (
    AUTOENCODER_PRESETS,
    AutoencoderConfig,
    AutoencoderKL,
    AutoencoderLoss,
    AutoencoderLossConfig,
    DiagonalGaussian,
    IdentityAutoencoder,
    autoencoder_preset,
    build_autoencoder,
    latent_statistics,
    load_autoencoder,
    save_autoencoder,
    set_latent_scale,
)
from ldmkit.config import from_dict, to_dict
from ldmkit.errors import CheckpointError, ConfigError, DataError


def tiny(kind="kl", levels=3, **kw):
    base = dict(kind=kind, base_channels=8, channel_mult=(1, 2, 2, 2)[:levels], num_res_blocks=1, latent_channels=3,
                groups=4, codebook_size=16)
    base.update(kw)
    return AutoencoderConfig(**base)


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Fresh blocks are partly identity (zero-initialised convolutions); make every weight matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_shapes_for_each_factor(kind, levels):
    torch.manual_seed(0)
    cfg = tiny(kind, levels, attention_factors=(2 ** (levels - 1),))
    model = build_autoencoder(cfg)
    f = 2 ** (levels - 1)
    assert model.downsample_factor == f and model.latent_channels == 3
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 3, 16 // f, 24 // f)
    moments = model.encode_distribution(x)
    assert moments.mean.shape == moments.std.shape == z.shape
    assert model.decode(z).shape == x.shape
    rec, aux = model(x)
    assert rec.shape == x.shape
    assert ("kl" in aux) == (kind == "kl") and ("vq_loss" in aux) == (kind == "vq")
    assert model.last_layer is model.decoder.conv_out.weight


def test_non_square_size_other_than_training_and_identity():
    model = build_autoencoder(tiny("kl", 3))
    x = torch.rand(1, 3, 24, 40)
    assert model.encode(x).shape == (1, 3, 6, 10)
    assert model.decode(model.encode(x)).shape == (1, 3, 24, 40)
    assert model.latent_shape(24, 40) == (3, 6, 10)
    ident = build_autoencoder(AutoencoderConfig(kind="identity"))
    assert isinstance(ident, IdentityAutoencoder) and ident.downsample_factor == 1 and ident.latent_channels == 3
    x = torch.rand(2, 3, 7, 5)
    assert torch.equal(ident.decode(ident.encode(x)), x)
    rec, aux = ident(x)
    assert torch.equal(rec, x) and aux == {}


def test_size_not_divisible_is_a_one_line_data_error():
    model = build_autoencoder(tiny("kl", 3))
    with pytest.raises(DataError, match=r"image size 30×32 is not divisible by the .* downsampling factor 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(DataError, match="not divisible"):
        model(torch.zeros(1, 3, 32, 18))
    with pytest.raises(DataError, match=r"input must be \[B, 3, H, W\]"):
        model.encode(torch.zeros(1, 1, 32, 32))


def test_kl_of_a_known_posterior_matches_closed_form():
    mean = torch.tensor([[0.5, -1.0], [2.0, 0.0]]).view(2, 2, 1, 1).expand(2, 2, 2, 3)  # [B=2, c=2, 2, 3]
    logvar = torch.tensor([[0.0, math.log(4.0)], [math.log(0.25), 100.0]]).view(2, 2, 1, 1).expand(2, 2, 2, 3)
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert post.logvar.max() == 20.0  # clamped
    var = torch.exp(post.logvar)
    # KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − ln σ²), summed over the 2·2·3 non-batch elements
    expected0 = 6 * 0.5 * ((0.25 + 1 - 1 - 0) + (1 + 4 - 1 - math.log(4.0)))
    assert post.kl()[0].item() == pytest.approx(expected0, rel=1e-6)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(post.mean, var.sqrt()), torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(post.kl(), ref, rtol=1e-5)
    assert torch.equal(post.mode(), post.mean)
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, post.mean)


def test_encode_uses_posterior_mode_and_forward_samples():
    torch.manual_seed(0)
    model = AutoencoderKL(tiny("kl", 2))
    _perturb(model)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    post = model.posterior(x)
    assert torch.allclose(model.encode(x), post.mean)
    assert torch.allclose(model.encode_distribution(x).std, post.std)
    r1, _ = model(x, sample_posterior=False)
    assert torch.allclose(r1, model.decode(model.encode(x)), atol=1e-6)
    r2, aux = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(r1, r2)
    assert torch.allclose(aux["kl"], post.kl())


@pytest.mark.parametrize("kind", ["kl", "vq", "identity"])
def test_scale_factor_scales_latents_and_cancels_in_decode(kind):
    torch.manual_seed(0)
    model = build_autoencoder(tiny(kind, 2, codebook_size=64))
    _perturb(model)
    model.eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    z1 = model.encode(x)
    d1 = model.decode(z1)
    model.set_latent_scale(0.25, shift_factor=0.3)
    z2 = model.encode(x)
    assert torch.allclose(z2, (z1 - 0.3) * 0.25, atol=1e-6)
    assert torch.allclose(model.encode_distribution(x).std, 0.25 * model.encode_distribution(x, scaled=False).std)
    assert torch.allclose(model.decode(z2), d1, atol=1e-5)


def test_latent_statistics_give_unit_variance_latents():
    torch.manual_seed(0)
    model = build_autoencoder(tiny("kl", 2))
    _perturb(model)
    model.eval()
    batches = [torch.rand(4, 3, 8, 8) * 2 - 1 for _ in range(3)]
    mean, std = latent_statistics(model, batches, generator=torch.Generator().manual_seed(0))
    assert std > 0
    set_latent_scale(model, std)
    assert model.scale_factor == pytest.approx(1 / std)
    z = torch.cat([model.encode_distribution(x).sample(torch.Generator().manual_seed(1)) for x in batches])
    assert z.std().item() == pytest.approx(1.0, abs=0.15)
    with pytest.raises(DataError, match="positive"):
        set_latent_scale(model, 0.0)


@pytest.mark.parametrize("kind", ["kl", "vq", "identity"])
def test_save_load_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    cfg = tiny(kind, 2, ema=True, codebook_size=32)
    model = build_autoencoder(cfg)
    _perturb(model)
    set_latent_scale(model, 2.0, mean=0.1)
    save_autoencoder(tmp_path / "ae", model, cfg, extra={"steps": 5})
    loaded = load_autoencoder(tmp_path / "ae", device="cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.scale_factor == 0.5 and loaded.shift_factor == 0.1
    assert loaded.config == dataclasses.replace(cfg, scale_factor=0.5, shift_factor=0.1)
    model.eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


def test_load_rejects_other_kinds_and_bad_configs(tmp_path):
    from ldmkit.io import save_model_dir

    save_model_dir(tmp_path / "u", kind="unet", config={}, weights={"model": torch.nn.Linear(1, 1)})
    with pytest.raises(CheckpointError, match="holds a 'unet' model, expected 'autoencoder'"):
        load_autoencoder(tmp_path / "u")
    save_model_dir(tmp_path / "b", kind="autoencoder", config={"kind": "gan"}, weights={"model": {}})
    with pytest.raises(CheckpointError, match="autoencoder config is not valid"):
        load_autoencoder(tmp_path / "b")


def test_config_validation_and_presets():
    with pytest.raises(ConfigError, match="codebook_dim"):
        tiny("vq", codebook_dim=5)
    with pytest.raises(ConfigError, match=r"attention_factors \[8\] name no level"):
        tiny("kl", 3, attention_factors=(8,))
    with pytest.raises(ConfigError, match="unknown config key 'z_channel'"):
        from_dict(AutoencoderConfig, {"z_channel": 3})
    kl_f8, loss = autoencoder_preset("kl-f8")
    assert (kl_f8.base_channels, kl_f8.channel_mult, kl_f8.latent_channels) == (128, (1, 2, 4, 4), 4)
    assert kl_f8.downsample_factor == 8 and loss.kl_weight == 1e-6
    kl_f4 = autoencoder_preset("kl-f4")[0]
    assert kl_f4.channel_mult == (1, 2, 4) and kl_f4.latent_channels == 3
    vq_f4, vq_f8 = autoencoder_preset("vq-f4")[0], autoencoder_preset("vq-f8")[0]
    assert (vq_f4.latent_channels, vq_f4.codebook_size, vq_f4.downsample_factor) == (3, 8192, 4)
    assert (vq_f8.latent_channels, vq_f8.codebook_size, vq_f8.downsample_factor) == (4, 16384, 8)
    for name, (cfg, loss_cfg) in AUTOENCODER_PRESETS.items():
        assert from_dict(AutoencoderConfig, to_dict(cfg)) == cfg, name
        assert from_dict(AutoencoderLossConfig, to_dict(loss_cfg)) == loss_cfg, name
    with pytest.raises(ConfigError, match="no autoencoder preset named 'kl-f9'; did you mean 'kl-f8'"):
        autoencoder_preset("kl-f9")


def _structured_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random images: sums of a few oriented sinusoids per channel, in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.rand(n, 3, 2, 2, generator=gen) * 3
    phase = torch.rand(n, 3, 2, generator=gen) * 6.28
    img = sum(torch.sin(6.28 * (freq[..., k, 0, None, None] * xx + freq[..., k, 1, None, None] * yy)
                        + phase[..., k, None, None]) for k in range(2))
    return (img / 2).clamp(-1, 1)


def test_thirty_steps_of_training_lower_the_reconstruction_loss():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_autoencoder(tiny("kl", 2, latent_channels=4, mid_attention=False))
    loss_fn = AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=0.0, disc_start=10**9, reduction="mean"))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.5, 0.9))
    data = _structured_images(32, 16, gen)
    held_out = _structured_images(8, 16, gen)

    def held_out_rec() -> float:
        with torch.no_grad():
            return (model(held_out, sample_posterior=False)[0] - held_out).abs().mean().item()

    before = held_out_rec()
    for step in range(30):
        x = data[(step * 4) % 32:(step * 4) % 32 + 4]
        rec, aux = model(x)
        loss, logs = loss_fn.generator_loss(x, rec, aux, step, model.last_layer)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_rec()
    assert after < 0.85 * before, (before, after)  # about 0.75 · before in practice
