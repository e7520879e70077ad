"""The networks the GPU benchmark compares, built in matching configurations on both sides.

ldmkit's UNet / KL autoencoder configs are translated into diffusers' ``UNet2DConditionModel`` /
``AutoencoderKL`` arguments, so a config change reaches both sides. Parameter counts and forward FLOPs
(``torch.utils.flop_counter.FlopCounterMode``, FLOP = 2 × multiply-add) are counted on the ``meta``
device: the same input shapes, no memory and no compute, identical on every machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ldmkit.autoencoders import build_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.presets import autoencoder_preset
from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNetConfig

IMPLS = ("ldmkit", "diffusers")


# ----------------------------------------------------------------------------------------- configs
def text_unet_config(tiny: bool) -> UNetConfig:
    """The SD-1.x UNet (859,520,964 parameters), or a tiny cross-attention UNet of the same layout."""
    if not tiny:
        return UNetConfig.preset("sd1")
    return UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(1,), num_heads=2, context_dim=16, use_linear_in_transformer=False)


def vae_config(tiny: bool) -> AutoencoderConfig:
    """ldmkit's KL-f8 preset (the SD VAE shape: 128-256-512-512, 2 blocks, 4 latent channels), or a tiny one."""
    if not tiny:
        return autoencoder_preset("kl-f8")[0]
    return AutoencoderConfig(kind="kl", base_channels=16, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4,
                             groups=8)


def cost_unet_config(tiny: bool, channels: int) -> UNetConfig:
    """One UNet for the pixel-vs-latent cost study (paper §4.1): LDM-4's (CelebA-HQ) at every f."""
    base = UNetConfig.preset("ldm4-celebahq") if not tiny else UNetConfig(
        model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_head_channels=8)
    return dataclasses.replace(base, in_channels=channels, out_channels=channels)


def cost_first_stage(tiny: bool, f: int) -> AutoencoderConfig:
    """The first stage of factor ``f``: identity (pixel space), the paper's kl-f4 / kl-f8, or tiny ones."""
    if f == 1:
        return AutoencoderConfig(kind="identity")
    if not tiny:
        return autoencoder_preset({4: "kl-f4", 8: "kl-f8"}[f])[0]
    mult = {4: (1, 2, 4), 8: (1, 2, 4, 4)}[f]
    return AutoencoderConfig(kind="kl", base_channels=16, channel_mult=mult, num_res_blocks=1,
                             latent_channels={4: 3, 8: 4}[f], mid_attention=False)


# ------------------------------------------------------------------------------- diffusers mirrors
def diffusers_unet_kwargs(cfg: UNetConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments of the same network as ldmkit's ``UNet(cfg)``."""
    if cfg.context_dim is None or cfg.num_head_channels is not None or cfg.vector_dim or cfg.concat_channels:
        raise ValueError("only cross-attention UNets with a head count (no vector/concat route) have a mirror")
    if cfg.resblock_updown or cfg.use_scale_shift_norm or not cfg.conv_resample:
        raise ValueError("the diffusers mirror needs conv resampling and additive timestep embeddings")
    attention = [2**level in cfg.attention_resolutions for level in range(len(cfg.channel_mult))]
    return {
        "sample_size": 64, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "block_out_channels": tuple(cfg.model_channels * m for m in cfg.channel_mult),
        "layers_per_block": cfg.num_res_blocks,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "cross_attention_dim": cfg.context_dim,
        "attention_head_dim": cfg.num_heads,  # diffusers' legacy name for the number of heads
        "transformer_layers_per_block": cfg.transformer_depth,
        "use_linear_projection": cfg.use_linear_in_transformer,
        "norm_num_groups": min(32, cfg.model_channels // 4),  # group counts change no parameter or FLOP count
    }


def diffusers_vae_kwargs(cfg: AutoencoderConfig) -> dict[str, Any]:
    """``AutoencoderKL`` arguments of the same network as ldmkit's KL autoencoder ``cfg``."""
    if cfg.kind != "kl" or cfg.attention_factors or not cfg.mid_attention:
        raise ValueError("only KL autoencoders with middle attention only have a diffusers mirror")
    levels = len(cfg.channel_mult)
    return {"in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "latent_channels": cfg.latent_channels,
            "block_out_channels": tuple(cfg.base_channels * m for m in cfg.channel_mult),
            "layers_per_block": cfg.num_res_blocks, "norm_num_groups": cfg.groups,
            "down_block_types": ("DownEncoderBlock2D",) * levels, "up_block_types": ("UpDecoderBlock2D",) * levels}


def build_unet(impl: str, cfg: UNetConfig, device: torch.device | str) -> nn.Module:
    """A freshly initialised UNet of ``impl`` built directly on ``device``; ``converted``: the ldmkit UNet that
    ``ldm convert`` makes of a diffusers one (:func:`converted_unet`)."""
    if impl == "converted":
        return converted_unet(cfg, device)[1]
    with torch.device(device):
        if impl == "ldmkit":
            return UNet(cfg)
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**diffusers_unet_kwargs(cfg))


def converted_unet(cfg: UNetConfig, device: torch.device | str) -> tuple[nn.Module, nn.Module]:
    """(a diffusers ``UNet2DConditionModel`` of ``cfg`` with its random weights, the ldmkit UNet converted from it
    with the converter's own config reading and key mapping)."""
    from ldmkit.interop.diffusers_config import unet_from_diffusers
    from ldmkit.interop.keys_unet import unet_rules
    from ldmkit.interop.mapping import import_tensors

    theirs = build_unet("diffusers", cfg, device)
    config = unet_from_diffusers(dict(theirs.config))
    with torch.device(device):
        ours = UNet(config)
    ours.load_state_dict(import_tensors(unet_rules(config, "diffusers"), theirs.state_dict(), "unet"), strict=True)
    return theirs, ours


def build_vae(impl: str, cfg: AutoencoderConfig, device: torch.device | str) -> nn.Module:
    with torch.device(device):
        if impl == "ldmkit":
            return build_autoencoder(cfg)
        from diffusers import AutoencoderKL

        return AutoencoderKL(**diffusers_vae_kwargs(cfg))


def peer_fast_path(net: nn.Module, *, mode: str | None = "reduce-overhead", channels_last: bool = True,
                   bf16: bool = True, backend: str = "inductor") -> Callable:
    """diffusers' tuned inference recipe for its UNet: bf16 weights, fused QKV projections, channels-last, and
    ``torch.compile(mode=mode)`` (``None``: eager). ``backend`` other than inductor ignores ``mode``."""
    if bf16:
        net = net.to(torch.bfloat16)
    net.fuse_qkv_projections()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if mode is None:
        return net
    return torch.compile(net, backend=backend, mode=mode if backend == "inductor" else None)


def unet_call(impl: str, network: Callable) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x [B, C, h, w], t [B], context [B, T, D]) -> [B, C, h, w]`` for either side's network."""
    if impl in ("ldmkit", "converted"):
        return lambda x, t, context: network(x, t, Conditioning(context=context))
    return lambda x, t, context: network(x, t, context, return_dict=False)[0]


def vae_decode_call(impl: str, vae: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(z [B, c, h, w]) -> image [B, 3, h·f, w·f]`` for either side's autoencoder."""
    if impl == "ldmkit":
        return vae.decode
    return lambda z: vae.decode(z, return_dict=False)[0]


# ------------------------------------------------------------------------------------------ counting
def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (FLOP = 2 × multiply-add, as FlopCounterMode counts)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def unet_counts(impl: str, cfg: UNetConfig, size: int, tokens: int) -> dict[str, int]:
    """Parameters and forward FLOPs per sample of ``impl``'s UNet on a ``size``² latent (meta device)."""
    net = build_unet(impl, cfg, "meta")
    x = torch.empty(1, cfg.in_channels, size, size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    context = torch.empty(1, tokens, cfg.context_dim, device="meta")
    call = unet_call(impl, net)
    return {"params": count_params(net), "fwd_flops": forward_flops(lambda: call(x, t, context))}


def vae_decode_counts(impl: str, cfg: AutoencoderConfig, image_size: int) -> dict[str, int]:
    """Parameters (whole autoencoder) and decode FLOPs per image of ``impl``'s autoencoder (meta device)."""
    vae = build_vae(impl, cfg, "meta")
    z = torch.empty(1, cfg.latent_channels, image_size // cfg.downsample_factor, image_size // cfg.downsample_factor,
                    device="meta")
    decode = vae_decode_call(impl, vae)
    return {"params": count_params(vae), "decode_flops": forward_flops(lambda: decode(z))}


def compare(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """``{impl: {name: n}}`` → the same plus ``equal_<name>`` flags and the relative gap of each count."""
    out: dict[str, Any] = {impl: values for impl, values in counts.items()}
    a, b = (counts[i] for i in IMPLS)
    for name in a:
        out[f"equal_{name}"] = a[name] == b[name]
        out[f"ratio_{name}"] = a[name] / b[name] if b[name] else None
    return out
