"""int8 GEMMs for sampling (torchao): which layers are quantized, how close the outputs stay, and the one-line
refusals. fp8 needs an Ada/Hopper GPU and is measured by bench/gpu_vs_diffusers.py there."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("torchao")

from ldmkit.conditioning import Conditioning  # noqa: E402
from ldmkit.denoisers import UNet, UNetConfig  # noqa: E402
from ldmkit.errors import ConfigError  # noqa: E402
from ldmkit.pipelines.quantize import QUANTIZATIONS, quantize_network, transformer_linears  # noqa: E402


def _unet(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(1, 2), context_dim=16, num_head_channels=16, **kw)).eval()
    with torch.no_grad():
        for p in net.parameters():  # trained-looking weights: none left at zero
            p.add_(0.05 * torch.randn_like(p))
    return net


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]),
            Conditioning(context=torch.randn(2, 7, 16, generator=g)))


@pytest.mark.parametrize("kind, bound", [("int8", 0.02), ("int8-weight", 0.01)])
def test_int8_gemms_keep_the_unet_output_within_a_percent_or_two(kind, bound):
    net = _unet()
    x, t, cond = _inputs()
    with torch.no_grad():
        want = net(x, t, cond)
        got = quantize_network(copy.deepcopy(net), kind)(x, t, cond)
    error = float((got - want).norm() / want.norm())
    assert 0 < error < bound  # changed (quantized), but little


def test_only_the_attention_and_feed_forward_linears_are_quantized():
    net = quantize_network(_unet(), "int8-weight")
    chosen = set(transformer_linears(_unet()))
    assert chosen and all(".attn" in n or ".ff." in n for n in chosen)
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear):
            plain = type(module.weight) is torch.nn.Parameter and type(module.weight.data) is torch.Tensor
            assert plain == (name not in chosen), name  # quantized weights are torchao tensor subclasses
    assert type(net.time_embed.linear_1.weight.data) is torch.Tensor and type(net.conv_in.weight.data) is torch.Tensor


def test_a_dit_keeps_its_modulation_in_full_precision():
    from ldmkit.denoisers.dit import DiT
    from ldmkit.denoisers.dit_config import DiTConfig

    names = transformer_linears(DiT(DiTConfig(in_channels=4, out_channels=4, patch_size=2, hidden_size=32, depth=2,
                                              num_heads=2)))
    assert any(".attn." in n for n in names) and any(".mlp." in n for n in names)
    assert not any("modulation" in n for n in names)


def test_what_cannot_be_quantized_is_one_line():
    plain = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(), num_heads=2))
    with pytest.raises(ConfigError, match="no attention or feed-forward"):
        quantize_network(plain, "int8")
    with pytest.raises(ConfigError, match="unknown quantization 'int4'"):
        quantize_network(_unet(), "int4")
    with pytest.raises(ConfigError, match="fp8 quantization needs a GPU"):
        quantize_network(_unet(), "fp8")


def test_the_command_line_lists_the_library_s_kinds_and_modes():
    from ldmkit.cli import sample
    from ldmkit.pipelines.text2img import COMPILE_MODES

    assert sample.QUANTIZATIONS == QUANTIZATIONS and sample.COMPILE_MODES == COMPILE_MODES


def test_a_quantized_pipeline_samples_close_to_the_plain_one(tmp_path):
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
    from ldmkit.cli.main import main as ldm
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.conditioning.config import TextEncoderConfig
    from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines import LatentDiffusionPipeline, load_pipeline

    torch.manual_seed(0)
    text = TextEncoderConfig(width=16, depth=1, heads=2)
    conditioner = build_conditioner(ConditionerConfig(kind="text", embed_dim=16, text=text),
                                    captions=["a red circle", "a blue square"]).eval()
    model = LatentDiffusionModel(unet=_unet(), schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                 autoencoder=build_autoencoder(AutoencoderConfig(kind="identity", in_channels=4,
                                                                                 latent_channels=4)),
                                 latent_size=(16, 16))
    directory = model.save(tmp_path / "model")
    kwargs = dict(prompt=["a red circle"], sampler="ddim", steps=3, guidance=2.0, output="tensor", progress=False)
    plain = load_pipeline(directory, device="cpu")(**kwargs)
    pipe = load_pipeline(directory, device="cpu").quantize("int8")
    quantized = pipe(**kwargs)
    assert pipe.quantized == "int8"
    assert 0 < float((quantized - plain).norm() / plain.norm()) < 0.05
    with pytest.raises(ConfigError, match="quantize before optimize"):
        faked = LatentDiffusionPipeline(model)
        faked.optimizations = ("bf16_weights",)
        faked.quantize("int8")
    out = tmp_path / "s"
    assert ldm(["sample", "--model", str(directory), "--prompt", "a red circle", "--n", "1", "--steps", "2",
                "--device", "cpu", "--quantize", "int8", "--out", str(out)]) == 0
    import json

    assert json.loads((out / "settings.json").read_text())["quantized"] == "int8"
