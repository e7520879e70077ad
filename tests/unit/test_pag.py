"""Perturbed-attention guidance: the identity attention map, the layers it applies to, and the guided prediction
ε = ε_u + s (ε_c − ε_u) + s_pag (ε_c − ε_perturbed) from one batched pass."""

import pytest
import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.denoisers.wrapper import Denoiser
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.nn.attention import attend
from ldmkit.samplers import SamplerOptions, sample
from ldmkit.samplers.guidance import guided_prediction
from ldmkit.samplers.pag import perturbed_layers, perturbed_self_attention, self_attention_layers


def _denoiser(**config) -> Denoiser:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=2, out_channels=2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(1, 2), num_head_channels=8, **config)).eval()
    with torch.no_grad():  # zero-initialised output layers would hide what attention does
        for p in unet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return Denoiser(unet, NoiseSchedule(ScheduleConfig()))


def test_the_identity_map_passes_each_token_its_own_value():
    q, k, v = torch.randn(3, 3, 2, 5, 4).unbind(0)  # [B=3, heads=2, N=5, d=4] each
    out = attend(q, k, v, identity=(1, 3))
    assert torch.equal(out[1:], v[1:])
    assert torch.allclose(out[:1], torch.nn.functional.scaled_dot_product_attention(q[:1], k[:1], v[:1]))
    # the same batch stacked twice (two tiles in one call): the same samples marked in each copy
    stacked = attend(*(torch.cat([t, t]) for t in (q, k, v)), identity=(1, 3))
    assert torch.allclose(stacked, torch.cat([out, out]), atol=1e-6)


def test_layers_default_to_the_middle_block_and_a_wrong_name_is_one_line():
    unet = _denoiser(context_dim=8).network
    names = list(self_attention_layers(unet))
    assert [m for m in perturbed_layers(unet)] == [self_attention_layers(unet)[n] for n in names if
                                                    n.startswith("middle.")]
    assert len(perturbed_layers(unet, ["up"])) == sum(n.startswith("up.") for n in names) > 1
    with pytest.raises(ConfigError, match="'uup' names no self-attention layer.*middle"):
        perturbed_layers(unet, ["uup"])
    with pytest.raises(ConfigError, match="has none"):
        perturbed_layers(torch.nn.Linear(2, 2))
    with perturbed_self_attention(unet, ["middle"], first=4, batch=6):
        assert all(m.identity == (4, 6) for m in perturbed_layers(unet))
    assert all(m.identity is None for m in self_attention_layers(unet).values())  # reset on leaving


def test_a_dit_defaults_to_its_middle_block():
    from ldmkit.denoisers.dit import DiT, DiTConfig

    dit = DiT(DiTConfig(in_channels=2, out_channels=2, hidden_size=32, depth=5, num_heads=2, context_dim=8))
    layers = self_attention_layers(dit)
    assert list(layers) == [f"blocks.{i}.attn" for i in range(5)]  # the cross-attention layers are not listed
    assert perturbed_layers(dit) == [layers["blocks.2.attn"]]
    assert perturbed_layers(dit, ["blocks.4"]) == [layers["blocks.4.attn"]]


@pytest.mark.parametrize("config", [{"context_dim": 8}, {"vector_dim": 8}])  # transformer and spatial attention
def test_pag_guides_away_from_the_perturbed_prediction_in_one_pass(config):
    denoiser = _denoiser(**config)
    x, t = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([300, 600])
    if "context_dim" in config:
        cond, uncond = Conditioning(context=torch.randn(2, 3, 8)), Conditioning(context=torch.zeros(1, 3, 8))
    else:
        cond, uncond = Conditioning(vector=torch.randn(2, 8)), Conditioning(vector=torch.zeros(1, 8))
    with torch.no_grad():
        c, u = denoiser(x, t, cond), denoiser(x, t, uncond.repeat(2))
        with perturbed_self_attention(denoiser.network, [], first=0, batch=2):  # every sample perturbed
            p = denoiser(x, t, cond)
        assert (c.eps - p.eps).abs().max() > 1e-3  # the perturbation changes the prediction
        batches = []
        hook = denoiser.network.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
        pag = guided_prediction(denoiser, x, t, cond, uncond, scale=1.0, pag_scale=2.5)
        both = guided_prediction(denoiser, x, t, cond, uncond, scale=4.0, pag_scale=2.5)
        hook.remove()
    assert batches == [4, 6]  # [cond, perturbed], [cond, uncond, perturbed]
    # batched and single passes differ by float32 rounding (~4e-6), which the scales multiply
    assert torch.allclose(pag.eps, c.eps + 2.5 * (c.eps - p.eps), atol=1e-4)
    assert torch.allclose(both.eps, u.eps + 4.0 * (c.eps - u.eps) + 2.5 * (c.eps - p.eps), atol=1e-4)
    assert torch.allclose(both.x0, u.x0 + 4.0 * (c.x0 - u.x0) + 2.5 * (c.x0 - p.x0), atol=1e-3)


def test_pag_needs_no_condition_and_is_off_at_zero():
    denoiser = _denoiser()  # unconditional
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = sample(SamplerOptions(sampler="ddim", steps=3, guidance=1.0), denoiser, noise)
    off = sample(SamplerOptions(sampler="ddim", steps=3, guidance=1.0, pag_scale=0.0), denoiser, noise)
    pag = sample(SamplerOptions(sampler="ddim", steps=3, guidance=1.0, pag_scale=3.0), denoiser, noise)
    assert torch.equal(plain, off) and not torch.allclose(plain, pag)
    assert SamplerOptions(pag_layers=["middle"]).pag_layers == ("middle",)
    for bad in [{"pag_scale": -1.0}, {"pag_scale": float("nan")}, {"pag_layers": "middle"}, {"pag_layers": 3}]:
        with pytest.raises(ConfigError, match="pag"):
            SamplerOptions(**bad)


def test_a_compiled_network_follows_the_perturbation_from_call_to_call():
    # The same batch of 2B is a CFG pass or a PAG pass: a compiled network must not replay the other one.
    denoiser = _denoiser(context_dim=8)
    compiled = Denoiser(torch.compile(denoiser.network, backend="eager"), denoiser.schedule)
    x, t = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([300, 600])
    cond, uncond = Conditioning(context=torch.randn(2, 3, 8)), Conditioning(context=torch.zeros(1, 3, 8))
    with torch.no_grad():
        for scale, pag_scale in [(3.0, 0.0), (1.0, 2.0), (3.0, 0.0)]:
            eager = guided_prediction(denoiser, x, t, cond, uncond, scale=scale, pag_scale=pag_scale)
            fast = guided_prediction(compiled, x, t, cond, uncond, scale=scale, pag_scale=pag_scale)
            assert torch.allclose(fast.eps, eager.eps, atol=1e-5)


def test_tiles_stacked_into_one_call_keep_the_perturbed_samples():
    from ldmkit.pipelines.upscale import TiledNetwork

    plain = _denoiser(context_dim=8)
    tiled = TiledNetwork(plain.network)
    tiled.grid_tile, tiled.overlap = (8, 8), 4
    denoiser = Denoiser(tiled, plain.schedule)
    x, t = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([300, 600])
    cond, uncond = Conditioning(context=torch.randn(2, 3, 8)), Conditioning(context=torch.zeros(1, 3, 8))
    results = []
    with torch.no_grad():
        for tile_batch in (1, 4):  # one tile a call, or four tiles of the 3-part batch in one call
            tiled.tile_batch = tile_batch
            results.append(guided_prediction(denoiser, x, t, cond, uncond, scale=3.0, pag_scale=2.0).eps)
    assert (results[0] - results[1]).abs().max() < 1e-3  # float32 rounding of the batched tiles only
