"""The UNet denoiser: shapes, conditioning routes, initialisation, presets, checkpointing."""

import dataclasses

import pytest
import torch

from ldmkit.conditioning import Conditioning
from ldmkit.config import from_dict, to_dict
from ldmkit.denoisers import UNET_PRESETS, UNet, UNetConfig
from ldmkit.denoisers.unet import UNetStage
from ldmkit.errors import ConfigError

SMALL = dict(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(2,), num_heads=2)
COND = dict(SMALL, attention_resolutions=(1, 2), context_dim=6, vector_dim=5, concat_channels=2,
            transformer_depth=2)


def build(seed=0, **fields):
    torch.manual_seed(seed)
    return UNet(UNetConfig(**fields))


def perturb(unet, seed=1):
    """Give the zero-initialised output conv (and every other zero-init layer) random weights."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            if torch.all(p == 0):
                p.normal_(0, 0.1)
    return unet


def cond_for(b, h, w, tokens=4):
    return Conditioning(context=torch.randn(b, tokens, 6), vector=torch.randn(b, 5), concat=torch.randn(b, 2, h, w))


@pytest.mark.parametrize("fields,size", [
    (SMALL, (8, 8)),
    (SMALL, (6, 10)),  # odd multiples of 2
    (dict(SMALL, channel_mult=(1, 2, 2), attention_resolutions=(4,), num_head_channels=4), (12, 20)),
    (dict(SMALL, resblock_updown=True, use_scale_shift_norm=True, out_channels=5), (4, 12)),
    (dict(SMALL, conv_resample=False, attention_resolutions=()), (8, 8)),
    (dict(SMALL, channel_mult=(1,), attention_resolutions=(1,)), (5, 7)),  # one level: any size
])
def test_output_shape_and_exactly_zero_at_init(fields, size):
    unet = build(**fields)
    x = torch.randn(2, fields["in_channels"], *size)
    out = unet(x, torch.tensor([3, 700]))
    assert out.shape == (2, fields.get("out_channels", 3), *size)
    assert torch.all(out == 0)
    assert perturb(unet)(x, torch.tensor([3, 700])).abs().sum() > 0


def test_conditioned_shapes_and_scalar_or_float_timestep():
    unet = perturb(build(**COND))
    x = torch.randn(2, 3, 6, 10)
    cond = cond_for(2, 6, 10)
    out = unet(x, torch.tensor(250), cond)
    assert out.shape == (2, 3, 6, 10)
    torch.testing.assert_close(out, unet(x, torch.tensor([250.0, 250.0]), cond))
    assert (out - unet(x, torch.tensor([250.5, 250.5]), cond)).abs().max() > 1e-4
    assert (out - unet(x, torch.tensor([900, 900]), cond)).abs().max() > 1e-2


@pytest.mark.parametrize("scale_shift", [False, True])
def test_timestep_reaches_every_resnet_block(scale_shift):
    """Regression: the embedding must survive the GroupNorm that follows it, even at tiny widths."""
    unet = perturb(build(**dict(SMALL, use_scale_shift_norm=scale_shift)))
    blocks = [m for m in unet.modules() if type(m).__name__ == "ResnetBlock"]
    seen = {}
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda mod, args, out, i=i: seen.setdefault(i, []).append(out))
    unet(torch.randn(1, 3, 4, 4).expand(2, -1, -1, -1), torch.tensor([10, 900]))
    for i in range(len(blocks)):
        (out,) = seen[i]
        assert (out[0] - out[1]).abs().max() > 1e-3, f"block {i} ignores the timestep"


@pytest.mark.parametrize("route", ["context", "vector", "concat"])
def test_each_route_changes_the_output(route):
    unet = perturb(build(**COND))
    x = torch.randn(2, 3, 4, 4)
    cond = cond_for(2, 4, 4)
    other = dataclasses.replace(cond, **{route: torch.randn_like(getattr(cond, route))})
    base = unet(x, torch.tensor([10, 10]), cond)
    assert (base - unet(x, torch.tensor([10, 10]), other)).abs().max() > 1e-4


def test_context_mask_changes_output_and_masked_token_has_no_effect():
    unet = perturb(build(**COND))
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([10, 500])
    cond = cond_for(2, 4, 4)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    masked = dataclasses.replace(cond, context_mask=mask)
    out = unet(x, t, masked)
    assert (out - unet(x, t, cond)).abs().max() > 1e-4
    context = cond.context.clone()
    context[0, 3] = 50.0
    context[1, 2:] = -50.0
    torch.testing.assert_close(out, unet(x, t, dataclasses.replace(masked, context=context)))
    # Masked padding tokens appended to a sequence change nothing either.
    short = Conditioning(context=cond.context[:, :2], vector=cond.vector, concat=cond.concat)
    torch.testing.assert_close(unet(x, t, short), unet(x, t, dataclasses.replace(
        short, context=torch.cat([short.context, torch.randn(2, 3, 6)], 1),
        context_mask=torch.tensor([[True, True, False, False, False]] * 2))), atol=1e-5, rtol=1e-5)


def test_self_attention_unet_without_context():
    unet = perturb(build(**dict(SMALL, attention_resolutions=(1, 2), num_head_channels=4)))
    assert not any(type(m).__name__ == "SpatialTransformer" for m in unet.modules())
    assert sum(type(m).__name__ == "SpatialSelfAttention" for m in unet.modules()) == 7  # 2 down, 1 middle, 4 up
    assert unet(torch.randn(1, 3, 4, 4), torch.tensor([1])).shape == (1, 3, 4, 4)


def test_samples_are_independent():
    unet = perturb(build(**COND))
    x, t, cond = torch.randn(3, 3, 4, 4), torch.tensor([1, 2, 3]), cond_for(3, 4, 4)
    full = unet(x, t, cond)
    torch.testing.assert_close(full[1:2], unet(x[1:2], t[1:2], cond.index(slice(1, 2))), atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients(monkeypatch):
    fields = dict(COND, dropout=0.0)
    plain = perturb(build(**fields))
    ckpt = UNet(UNetConfig(**dict(fields, gradient_checkpointing=True)))
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond = torch.randn(2, 3, 4, 4), torch.tensor([5, 600]), cond_for(2, 4, 4)
    calls = []
    stage_forward = UNetStage.forward
    monkeypatch.setattr(UNetStage, "forward", lambda self, *a: calls.append(1) or stage_forward(self, *a))
    grads, stage_calls = [], []
    for model in (plain, ckpt):
        calls.clear()
        model.train()
        model.zero_grad()
        model(x, t, cond).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        stage_calls.append(len(calls))
    assert stage_calls[1] == 2 * stage_calls[0] > 0  # every stage is recomputed in the backward pass
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_sd1_parameter_count_on_meta_device():
    with torch.device("meta"):
        unet = UNet(UNetConfig.preset("sd1"))
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964


@pytest.mark.parametrize("name,millions", [("ldm4-celebahq", 274.1), ("ldm4-cin", 400.9), ("ldm8-churches", 295.0),
                                           ("ldm8-cin", 395.0)])
def test_paper_presets_build_with_their_sizes(name, millions):
    with torch.device("meta"):
        unet = UNet.from_preset(name)
    assert sum(p.numel() for p in unet.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


def test_presets_round_trip_through_plain_data():
    for name, config in UNET_PRESETS.items():
        assert from_dict(UNetConfig, to_dict(config)) == config, name
    assert UNetConfig.preset("tiny", model_channels=32).model_channels == 32


@pytest.mark.parametrize("data,words", [
    ({"attention_resolutions": [32, 16]}, "not a downsampling factor"),
    ({"model_channels": 12, "num_heads": 5}, "num_heads"),
    ({"num_head_channels": 7}, "num_head_channels"),
    ({"channel_mult": []}, "channel_mult"),
])
def test_bad_config_is_a_config_error(data, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(UNetConfig, data)
    with pytest.raises(ConfigError, match="sd2"):
        UNetConfig.preset("sd2")


def test_mismatched_conditioning_is_a_config_error():
    plain, cond_unet = build(**SMALL), build(**COND)
    x, t = torch.randn(1, 3, 4, 4), torch.tensor([1])
    with pytest.raises(ConfigError, match="multiple of 2"):
        plain(torch.randn(1, 3, 5, 4), t)
    with pytest.raises(ConfigError, match="no cross-attention"):
        plain(x, t, Conditioning(context=torch.randn(1, 2, 6)))
    with pytest.raises(ConfigError, match="vector"):
        plain(x, t, Conditioning(vector=torch.randn(1, 5)))
    with pytest.raises(ConfigError, match="concat"):
        plain(x, t, Conditioning(concat=torch.randn(1, 2, 4, 4)))
    good = cond_for(1, 4, 4)
    for route in ("context", "vector", "concat"):
        with pytest.raises(ConfigError):
            cond_unet(x, t, dataclasses.replace(good, **{route: None}))
    with pytest.raises(ConfigError, match="concat"):
        cond_unet(x, t, dataclasses.replace(good, concat=torch.randn(1, 2, 2, 2)))


def test_a_label_table_refuses_anything_but_one_integer_label_per_sample():
    net = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(), num_heads=2, class_embeddings=10)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    assert net(x, t, Conditioning(vector=torch.tensor([3, 9]))).shape == x.shape
    for bad in (torch.tensor([0.5, 1.0]), torch.tensor([[1, 2]]), None):
        with pytest.raises(ConfigError, match="looks up integer labels"):
            net(x, t, Conditioning(vector=bad))
