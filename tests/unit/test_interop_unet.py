"""The UNet's weights move between ldmkit, diffusers' UNet2DConditionModel / UNet2DModel and the original
(CompVis / Stability) layout: same outputs to fp32 rounding, exact round trips, and at full SD size every key
and shape in place (on the meta device, no forward)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel, UNet2DModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

from ldmkit.conditioning.types import Conditioning  # noqa: E402
from ldmkit.denoisers import UNet, UNetConfig  # noqa: E402
from ldmkit.errors import ConfigError  # noqa: E402
from ldmkit.interop.diffusers_config import unet_from_diffusers, unet_to_diffusers  # noqa: E402
from ldmkit.interop.keys_unet import unet_rules  # noqa: E402
from ldmkit.interop.mapping import add_prefix, export_tensors, import_tensors  # noqa: E402
from ldmkit.interop.original_config import unet_from_original  # noqa: E402
from ldmkit.interop.sd_configs import sd_config  # noqa: E402

PREFIX = "model.diffusion_model."
TINY = dict(sample_size=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16)
CASES = {
    "sd1": dict(in_channels=4, attention_head_dim=2),  # a head count, conv proj_in/out
    "sd2": dict(in_channels=4, attention_head_dim=[1, 2], use_linear_projection=True),  # head width 32, linear
    "inpaint": dict(in_channels=9, attention_head_dim=2),  # 4 latent + 5 concat channels
    "upscaler": dict(in_channels=7, attention_head_dim=2, num_class_embeds=10, only_cross_attention=[True, False],
                     use_linear_projection=True),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_diffusers(case: str) -> UNet2DConditionModel:
    torch.manual_seed(0)
    model = UNet2DConditionModel(**TINY, **CASES[case]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def run_both(d: UNet2DConditionModel, ours: UNet) -> tuple[torch.Tensor, torch.Tensor]:
    c = ours.config
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, c.in_channels + c.concat_channels, 8, 8, generator=gen)
    t = torch.tensor([10, 700])
    context = torch.randn(2, 5, 16, generator=gen)
    labels = torch.tensor([1, 7]) if c.class_embeddings else None
    with torch.no_grad():
        ref = d(x, t, context, class_labels=labels).sample
        cond = Conditioning(context=context, concat=x[:, c.in_channels:] if c.concat_channels else None, vector=labels)
        got = ours(x[:, : c.in_channels], t, cond)
    return got, ref


def ldmkit_from(d: UNet2DConditionModel) -> UNet:
    config = unet_from_diffusers(dict(d.config))
    ours = UNet(config).eval()
    ours.load_state_dict(import_tensors(unet_rules(config, "diffusers"), d.state_dict(), "unet"), strict=True)
    return ours


@pytest.mark.parametrize("case", list(CASES))
def test_diffusers_unet_gives_the_same_output(case):
    d = random_diffusers(case)
    got, ref = run_both(d, ldmkit_from(d))
    assert rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_diffusers_round_trip_is_exact_and_config_survives(case):
    d = random_diffusers(case)
    ours = ldmkit_from(d)
    back = export_tensors(unet_rules(ours.config, "diffusers"), ours.state_dict(), "unet")
    state = d.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    again = unet_to_diffusers(ours.config)
    rebuilt = UNet2DConditionModel(**{k: v for k, v in again.items() if not k.startswith("_")})
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_original_layout_agrees_with_diffusers_own_converter(case):
    d = random_diffusers(case)
    ours = ldmkit_from(d)
    original = add_prefix(export_tensors(unet_rules(ours.config, "original"), ours.state_dict(), "unet"), PREFIX)
    converted = convert_ldm_unet_checkpoint(original, dict(d.config))
    state = d.state_dict()
    assert set(converted) == set(state) and all(torch.equal(converted[k], state[k]) for k in state)


def test_original_round_trip_through_diffusers_is_exact():
    d = random_diffusers("upscaler")
    ours = ldmkit_from(d)
    original = export_tensors(unet_rules(ours.config, "original"), ours.state_dict(), "unet")
    first = import_tensors(unet_rules(ours.config, "original"), original, "unet")
    diff = export_tensors(unet_rules(ours.config, "diffusers"), first, "unet")
    second = import_tensors(unet_rules(ours.config, "diffusers"), diff, "unet")
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", ["v1-inference.yaml", "v2-inference-v.yaml", "v1-inpainting-inference.yaml",
                                  "x4-upscaling.yaml"])
def test_original_yaml_gives_the_config_diffusers_derives(name):
    yaml = sd_config(name)
    ours = unet_to_diffusers(unet_from_original(yaml["model"]["params"]["unet_config"]["params"]))
    theirs = create_unet_diffusers_config_from_ldm(yaml, {})
    heads = theirs["attention_head_dim"]
    levels = len(theirs["block_out_channels"])
    theirs["attention_head_dim"] = list(heads) if isinstance(heads, list) else [heads] * levels
    for key in ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
                "layers_per_block", "cross_attention_dim", "attention_head_dim", "use_linear_projection",
                "transformer_layers_per_block"):
        assert ours[key] == theirs[key], key
    assert ours.get("num_class_embeds") == theirs.get("num_class_embeds")
    assert (ours["only_cross_attention"] or False) == (theirs.get("only_cross_attention") or False)


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", ["v1-inference.yaml", "v2-inference-v.yaml", "x4-upscaling.yaml"])
def test_full_size_keys_and_shapes_line_up_both_ways(name):
    config = unet_from_original(sd_config(name)["model"]["params"]["unet_config"]["params"])
    dconfig = unet_to_diffusers(config)
    with torch.device("meta"):
        ours = UNet(config)
        d = UNet2DConditionModel(**{k: v for k, v in dconfig.items() if not k.startswith("_")})
    if name == "v1-inference.yaml":
        assert sum(p.numel() for p in ours.parameters()) == 859_520_964
    theirs = _meta_shapes(d)
    exported = export_tensors(unet_rules(config, "diffusers"), ours.state_dict(), "unet")
    assert {k: tuple(v.shape) for k, v in exported.items()} == theirs
    imported = import_tensors(unet_rules(config, "diffusers"), d.state_dict(), "unet", expected=ours.state_dict())
    assert {k: tuple(v.shape) for k, v in imported.items()} == _meta_shapes(ours)
    original = add_prefix(export_tensors(unet_rules(config, "original"), ours.state_dict(), "unet"), PREFIX)
    converted = convert_ldm_unet_checkpoint(original, {k: v for k, v in dconfig.items() if not k.startswith("_")})
    assert {k: tuple(v.shape) for k, v in converted.items()} == theirs


def test_unconditional_unet_matches_diffusers_unet2dmodel_and_the_legacy_head_order():
    torch.manual_seed(0)
    d = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=16, norm_num_groups=8).eval()
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.2)
    config = unet_from_diffusers(dict(d.config))
    assert config.num_head_channels == 16 and config.context_dim is None
    ours = UNet(config).eval()
    ours.load_state_dict(import_tensors(unet_rules(config, "diffusers"), d.state_dict(), "unet"))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 900])
    with torch.no_grad():
        assert rel_err(ours(x, t), d(x, t).sample) <= 1e-5
    # The original AttentionBlock orders its fused qkv rows per head ([head][q, k, v][d], QKVAttentionLegacy).
    original = export_tensors(unet_rules(config, "original"), ours.state_dict(), "unet")
    w, b = original["middle_block.1.qkv.weight"], original["middle_block.1.qkv.bias"]  # [3C, C, 1], [3C]
    heads, h = 64 // 16, torch.randn(2, 64, 5)
    qkv = (torch.einsum("oc,bct->bot", w[:, :, 0], h) + b[None, :, None]).reshape(2 * heads, 3 * 16, 5)
    q, k, v = qkv.split(16, dim=1)
    legacy = torch.einsum("bts,bcs->bct", torch.softmax(torch.einsum("bct,bcs->bts", q, k) / 4.0, dim=-1), v)
    fused = ours.middle[1].qkv.weight[:, :, 0, 0] @ h + ours.middle[1].qkv.bias[None, :, None]  # [B, 3C, T]
    q2, k2, v2 = fused.reshape(2, 3, heads, 16, 5).unbind(1)
    mine = torch.softmax(torch.einsum("bhct,bhcs->bhts", q2, k2) / 4.0, dim=-1)
    mine = torch.einsum("bhts,bhcs->bhct", mine, v2)
    assert torch.allclose(mine.reshape(2 * heads, 16, 5), legacy, atol=1e-5)


def test_what_has_no_counterpart_is_a_one_line_error():
    with pytest.raises(ConfigError, match="vector route"):
        unet_rules(UNetConfig.preset("tiny-cond"), "diffusers")
    sd_like = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(2,), context_dim=8, num_head_channels=8)
    for extra, what in (("size_embed", "size embedding"), ("guidance_embed", "guidance embedding")):
        with pytest.raises(ConfigError, match=f"{what} .*no counterpart"):
            unet_rules(UNetConfig(**sd_like, **{extra: True}), "original")
    with pytest.raises(ConfigError, match="SDXL UNet: not supported"):
        unet_from_diffusers({**TINY, "addition_embed_type": "text_time"})
    with pytest.raises(ConfigError, match="SDXL"):
        unet_from_original({"num_classes": "sequential", "adm_in_channels": 2816})
