"""ldmkit configs ↔ the ``config.json`` of diffusers' ``UNet2DConditionModel``, ``UNet2DModel``,
``AutoencoderKL`` and ``VQModel``.

Only what ldmkit's networks can be is accepted; anything else is a one-line ConfigError naming the diffusers
key. Numerics-only options (``upcast_attention``, ``force_upcast``) are ignored.
"""

from __future__ import annotations

from typing import Any, Mapping

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.errors import ConfigError
from ldmkit.nn.norm import num_groups

_UNET_EPS = 1e-5  # ldmkit's UNet norm epsilon (diffusers norm_eps)

_DOWN = {"CrossAttnDownBlock2D": True, "AttnDownBlock2D": True, "DownBlock2D": False}
_UP = {"CrossAttnUpBlock2D": True, "AttnUpBlock2D": True, "UpBlock2D": False}


def _per_level(value: Any, levels: int, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ConfigError(f"diffusers config key '{key}' has {len(value)} entries for {levels} levels")
        return list(value)
    return [value] * levels


def _heads_to_ldmkit(heads: list[int], widths: list[int], attn: list[bool]) -> dict[str, Any]:
    """Per-level head counts → num_heads (one count) or num_head_channels (one head width)."""
    used = [(h, w) for h, w, a in zip(heads, widths, attn) if a] + [(heads[-1], widths[-1])]  # + the middle
    counts = {h for h, _ in used}
    if len(counts) == 1:
        return {"num_heads": counts.pop(), "num_head_channels": None}
    dims = {w // h for h, w in used if w % h == 0}
    if len(dims) == 1 and all(w % h == 0 for h, w in used):
        return {"num_head_channels": dims.pop()}
    raise ConfigError(f"diffusers attention heads {heads} give neither one head count nor one head width; "
                      "ldmkit's UNet needs one of the two")


def unet_from_diffusers(d: Mapping[str, Any]) -> UNetConfig:
    """A diffusers UNet config (dict of its config.json) → UNetConfig."""
    # A config.json names its class; a live model's config does not: UNet2DModel has no cross_attention_dim.
    cls = d.get("_class_name") or ("UNet2DConditionModel" if "cross_attention_dim" in d else "UNet2DModel")
    if d.get("addition_embed_type") is not None or d.get("class_embed_type") is not None:
        hint = "SDXL UNet: not supported" if d.get("addition_embed_type") == "text_time" else "not supported"
        raise ConfigError(f"diffusers UNet with addition_embed_type={d.get('addition_embed_type')!r} / "
                          f"class_embed_type={d.get('class_embed_type')!r}: {hint}")
    if cls not in ("UNet2DConditionModel", "UNet2DModel"):
        raise ConfigError(f"diffusers class {cls} is not a UNet ldmkit can hold (UNet2DConditionModel, UNet2DModel)")
    checks = {"act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "time_embedding_type": "positional",
              "conv_in_kernel": 3, "conv_out_kernel": 3, "center_input_sample": False, "dual_cross_attention": False,
              "encoder_hid_dim": None, "time_cond_proj_dim": None, "mid_block_scale_factor": 1,
              "downsample_padding": 1, "class_embeddings_concat": False, "attention_type": "default",
              "resnet_out_scale_factor": 1.0, "time_embedding_dim": None, "downsample_type": "conv",
              "upsample_type": "conv", "resnet_skip_time_act": False, "add_attention": True}
    for key, want in checks.items():
        if key in d and d[key] != want:
            raise ConfigError(f"diffusers UNet config {key}={d[key]!r} is not supported (ldmkit: {want!r})")
    if float(d.get("norm_eps", _UNET_EPS)) != _UNET_EPS:
        raise ConfigError(f"diffusers UNet config norm_eps={d['norm_eps']} is not supported (ldmkit: {_UNET_EPS})")
    widths = list(d["block_out_channels"])
    levels = len(widths)
    down = list(d["down_block_types"])
    up = list(d["up_block_types"])
    for name in down + up:
        if name not in _DOWN and name not in _UP:
            raise ConfigError(f"diffusers block type {name} is not supported (ldmkit holds "
                              f"{', '.join([*_DOWN, *_UP])})")
    attn = [_DOWN[n] for n in down]
    if [_UP[n] for n in reversed(up)] != attn:
        raise ConfigError(f"diffusers up_block_types {up} do not mirror down_block_types {down}")
    mid = d.get("mid_block_type", "UNetMidBlock2DCrossAttn" if cls == "UNet2DConditionModel" else "UNetMidBlock2D")
    if mid not in ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"):
        raise ConfigError(f"diffusers mid_block_type {mid!r} is not supported (ldmkit's middle has one attention)")
    mc = widths[0]
    if any(w % mc for w in widths):
        raise ConfigError(f"diffusers block_out_channels {widths} are not multiples of the first")
    layers = d.get("layers_per_block", 2)
    if isinstance(layers, (list, tuple)):
        if len(set(layers)) != 1:
            raise ConfigError(f"diffusers layers_per_block {layers} differ per level; ldmkit has one count")
        layers = layers[0]
    cross = cls == "UNet2DConditionModel" and any("CrossAttn" in n for n in down)
    context = d.get("cross_attention_dim") if cross else None
    if isinstance(context, (list, tuple)):
        if len(set(context)) != 1:
            raise ConfigError(f"diffusers cross_attention_dim {context} differs per level: not supported")
        context = context[0]
    if cross:
        raw = d.get("num_attention_heads") or d.get("attention_head_dim", 8)  # diffusers' "head dim" is a count
        heads = _heads_to_ldmkit([int(h) for h in _per_level(raw, levels, "attention_head_dim")], widths, attn)
        depth = _per_level(d.get("transformer_layers_per_block", 1), levels, "transformer_layers_per_block")
        if len(set(depth)) != 1:
            raise ConfigError(f"diffusers transformer_layers_per_block {depth} differ per level: not supported "
                              "(SDXL-style UNet)")
        depth = depth[0]
    else:
        head_dim = d.get("attention_head_dim") or widths[-1]  # UNet2DModel: a real per-head width
        heads, depth = {"num_head_channels": int(head_dim)}, 1
    only_cross = [bool(x) for x in _per_level(d.get("only_cross_attention", False), levels, "only_cross_attention")]
    out = int(d.get("out_channels", d.get("in_channels", 4)))
    cin = int(d.get("in_channels", 4))
    if cin < out:
        raise ConfigError(f"diffusers UNet in_channels {cin} < out_channels {out}: ldmkit reads the extra input "
                          "channels as a concat condition and cannot hold fewer")
    return UNetConfig(
        in_channels=out, out_channels=out, concat_channels=cin - out, model_channels=mc,
        channel_mult=tuple(w // mc for w in widths), num_res_blocks=int(layers),
        attention_resolutions=tuple(2**i for i, a in enumerate(attn) if a) or (2 ** (levels - 1),),
        transformer_depth=int(depth), context_dim=context,
        use_linear_in_transformer=bool(d.get("use_linear_projection", False)), dropout=float(d.get("dropout", 0.0)),
        use_scale_shift_norm=d.get("resnet_time_scale_shift", "default") == "scale_shift",
        norm_groups=int(d.get("norm_num_groups") or 32), class_embeddings=d.get("num_class_embeds"),
        cross_attention_only=tuple(only_cross) if any(only_cross) else (), **heads)


def unet_norm_groups(c: UNetConfig) -> int:
    """The one GroupNorm group count of every norm of ``UNet(c)``; a ConfigError when they differ."""
    if c.norm_groups is not None:
        return c.norm_groups
    from ldmkit.denoisers.unet import _groups  # the rule the UNet applies without norm_groups

    widths = {c.model_channels * m for m in c.channel_mult}
    found = {num_groups(w, _groups(w)) for w in widths}
    if len(found) != 1:
        raise ConfigError(f"this UNet's norms use {sorted(found)} groups at different widths; diffusers uses one "
                          "count (norm_num_groups): it cannot be exported")
    return found.pop()


def unet_to_diffusers(c: UNetConfig, sample_size: int | None = None) -> dict[str, Any]:
    """UNetConfig → the config of diffusers' UNet2DConditionModel (with context) or UNet2DModel (without)."""
    if c.resblock_updown or not c.conv_resample or c.vector_dim is not None:
        raise ConfigError("a UNet with resblock_updown, conv_resample false or a vector route has no diffusers "
                          "UNet2DConditionModel / UNet2DModel counterpart")
    levels = len(c.channel_mult)
    widths = [c.model_channels * m for m in c.channel_mult]
    attn = [2**i in c.attention_resolutions for i in range(levels)]
    common = {
        "sample_size": sample_size, "in_channels": c.in_channels + c.concat_channels, "out_channels": c.out_channels,
        "flip_sin_to_cos": True, "freq_shift": 0, "block_out_channels": widths, "layers_per_block": c.num_res_blocks,
        "downsample_padding": 1, "act_fn": "silu", "norm_num_groups": unet_norm_groups(c), "norm_eps": _UNET_EPS,
        "resnet_time_scale_shift": "scale_shift" if c.use_scale_shift_norm else "default", "dropout": c.dropout,
        "num_class_embeds": c.class_embeddings,
    }
    if c.context_dim is None:
        dims = {c.heads(w)[1] for w, a in zip(widths, attn + [True]) if a} | {c.heads(widths[-1])[1]}
        if len(dims) != 1:
            raise ConfigError(f"diffusers UNet2DModel has one head width; this UNet's attention uses {sorted(dims)}")
        return {"_class_name": "UNet2DModel", **common, "attention_head_dim": dims.pop(), "add_attention": True,
                "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]}
    return {"_class_name": "UNet2DConditionModel", **common,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
            "mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": c.context_dim,
            "attention_head_dim": [c.heads(w)[0] for w in widths], "transformer_layers_per_block": c.transformer_depth,
            "use_linear_projection": c.use_linear_in_transformer,
            "only_cross_attention": list(c.cross_attention_only) if any(c.cross_attention_only) else False}


# --- autoencoders --------------------------------------------------------------------------------------------

_ENC = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
_DEC = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}


def autoencoder_from_diffusers(d: Mapping[str, Any]) -> AutoencoderConfig:
    """A diffusers AutoencoderKL / VQModel config → AutoencoderConfig (kind kl / vq)."""
    cls = d.get("_class_name") or ("VQModel" if "num_vq_embeddings" in d else "AutoencoderKL")
    if cls not in ("AutoencoderKL", "VQModel"):
        raise ConfigError(f"diffusers class {cls} is not an autoencoder ldmkit can hold (AutoencoderKL, VQModel)")
    if d.get("act_fn", "silu") != "silu" or d.get("norm_type", "group") != "group":
        raise ConfigError("diffusers autoencoder with act_fn / norm_type other than silu / group is not supported")
    if not d.get("use_quant_conv", True) or not d.get("use_post_quant_conv", True):
        raise ConfigError("diffusers autoencoder without quant_conv / post_quant_conv is not supported")
    widths = list(d["block_out_channels"])
    down = [_ENC.get(n) for n in d["down_block_types"]]
    up = [_DEC.get(n) for n in d["up_block_types"]]
    if None in down or None in up or list(reversed(up)) != down:
        raise ConfigError(f"diffusers autoencoder blocks {d['down_block_types']} / {d['up_block_types']} are not "
                          "supported (DownEncoderBlock2D / UpDecoderBlock2D, optionally with Attn, mirrored)")
    base = widths[0]
    if any(w % base for w in widths):
        raise ConfigError(f"diffusers block_out_channels {widths} are not multiples of the first")
    latent = int(d.get("latent_channels", 4))
    kind = "kl" if cls == "AutoencoderKL" else "vq"
    extra: dict[str, Any] = {}
    if kind == "vq":
        if d.get("vq_embed_dim") not in (None, latent):
            raise ConfigError(f"diffusers VQModel vq_embed_dim {d['vq_embed_dim']} ≠ latent_channels {latent}: "
                              "not supported")
        extra["codebook_size"] = int(d.get("num_vq_embeddings", 256))
    return AutoencoderConfig(
        kind=kind, in_channels=int(d.get("in_channels", 3)), out_channels=int(d.get("out_channels", 3)),
        base_channels=base, channel_mult=tuple(w // base for w in widths),
        num_res_blocks=int(d.get("layers_per_block", 1)),
        mid_attention=bool(d.get("mid_block_add_attention", True)),
        attention_factors=tuple(2**i for i, a in enumerate(down) if a), latent_channels=latent,
        groups=int(d.get("norm_num_groups", 32)), scale_factor=float(d.get("scaling_factor", 1.0) or 1.0),
        shift_factor=float(d.get("shift_factor") or 0.0), **extra)


def autoencoder_to_diffusers(c: AutoencoderConfig, sample_size: int | None = None) -> dict[str, Any]:
    """AutoencoderConfig → the config of diffusers' AutoencoderKL (kl) or VQModel (vq)."""
    if c.kind == "identity":
        raise ConfigError("the identity first stage has no diffusers counterpart")
    widths = [c.base_channels * m for m in c.channel_mult]
    for w in widths:
        if w % c.groups:
            raise ConfigError(f"{w} channels are not divisible into {c.groups} groups; diffusers needs that")
    attn = [f in c.attention_factors for f in c.level_factors]
    d: dict[str, Any] = {
        "in_channels": c.in_channels, "out_channels": c.out_channels, "block_out_channels": widths,
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)],
        "layers_per_block": c.num_res_blocks, "act_fn": "silu", "latent_channels": c.latent_channels,
        "norm_num_groups": c.groups, "sample_size": sample_size or 256, "scaling_factor": c.scale_factor,
        "mid_block_add_attention": c.mid_attention,
    }
    if c.kind == "kl":
        return {"_class_name": "AutoencoderKL", **d, "shift_factor": c.shift_factor or None}
    if c.shift_factor:
        raise ConfigError("diffusers VQModel has no shift_factor; this autoencoder's shift cannot be exported")
    return {"_class_name": "VQModel", **d, "num_vq_embeddings": c.codebook_size, "vq_embed_dim": c.latent_channels,
            "norm_type": "group"}
