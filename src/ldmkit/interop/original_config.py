"""The YAML configs of the original code (CompVis latent-diffusion, Stability's Stable Diffusion) → ldmkit.

``model.params`` holds ``unet_config``, ``first_stage_config``, ``cond_stage_config``, ``conditioning_key``,
``scale_factor``, ``linear_start`` / ``linear_end`` / ``timesteps`` / ``beta_schedule`` and
``parameterization``. Each ``target:`` names a class of the original code; only those ldmkit has a
counterpart for are accepted, anything else is a one-line ConfigError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ldmkit.interop.compvis_stages import CompVisCondition, compvis_condition, refuse_inexact
from ldmkit.interop.concat_order import concat_route
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.schedules import ScheduleConfig
from ldmkit.errors import ConfigError

#: The original code's beta_schedule names → ldmkit kinds ("linear" there is linear in sqrt(β)).
_BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
_PREDICTIONS = {"eps": "eps", "v": "v", "x0": "x0"}

#: cond_stage_config targets → the text encoder family (see ldmkit.conditioning.clip_text).
TEXT_ENCODERS = {
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": "clip-l",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "openclip-h",
}
_KL_TARGETS = ("ldm.models.autoencoder.AutoencoderKL",)
_VQ_TARGETS = ("ldm.models.autoencoder.VQModelInterface", "ldm.models.autoencoder.VQModel",
               "taming.models.vqgan.VQModel")
_UNET_TARGETS = ("ldm.modules.diffusionmodules.openaimodel.UNetModel",)
_LDM_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "none",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "masked_image",
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": "low_res",
}


@dataclass(frozen=True)
class OriginalModel:
    """What an original config describes, in ldmkit's terms."""

    unet: UNetConfig | None
    autoencoder: AutoencoderConfig
    schedule: ScheduleConfig | None
    text_encoder: str | None  # "clip-l", "openclip-h" or None
    concat: str  # "none", "masked_image" or "low_res"
    latent_size: int | None
    notes: list[str] = field(default_factory=list)
    compvis: CompVisCondition | None = None  # the condition of a CompVis LDM without a text encoder


def read_original_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the original config {path} ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{path} is not an original LDM / Stable Diffusion config (no model: section)")
    return data


def _params(section: Any, name: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(section, Mapping):
        raise ConfigError(f"original config: {name} is missing or not a mapping")
    return str(section.get("target", "")), dict(section.get("params") or {})


def _one(value: Any, key: str) -> int:
    """An int, or a list of equal ints (per-level values ldmkit holds as one)."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"original unet_config {key}={list(value)} differs per level: not supported "
                              "(an SDXL-style UNet)")
        return int(value[0])
    return int(value)


def unet_from_original(p: Mapping[str, Any]) -> UNetConfig:
    """``unet_config.params`` of openaimodel.UNetModel → UNetConfig."""
    if p.get("num_classes") == "sequential" or p.get("adm_in_channels") is not None:
        raise ConfigError("original UNet with num_classes: sequential / adm_in_channels (SDXL UNet): not supported")
    for key, ok in (("dims", 2), ("use_new_attention_order", False), ("disable_middle_self_attn", False),
                    ("n_embed", None), ("num_attention_blocks", None)):
        if p.get(key, ok) != ok:
            raise ConfigError(f"original unet_config {key}={p[key]!r} is not supported (ldmkit: {ok!r})")
    num_classes = p.get("num_classes")
    if num_classes is not None and not isinstance(num_classes, int):
        raise ConfigError(f"original unet_config num_classes={num_classes!r} is not supported (only a label count)")
    spatial = bool(p.get("use_spatial_transformer", False))
    context = p.get("context_dim") if spatial else None
    if isinstance(context, (list, tuple)):
        context = _one(context, "context_dim")
    if spatial and context is None:
        raise ConfigError("original unet_config with use_spatial_transformer but no context_dim is not supported")
    cin, cout = int(p["in_channels"]), int(p["out_channels"])
    if cin < cout:
        raise ConfigError(f"original unet_config in_channels {cin} < out_channels {cout} is not supported")
    heads = int(p.get("num_heads", -1))
    head_channels = int(p.get("num_head_channels", -1))
    mult = tuple(int(m) for m in p["channel_mult"])
    disable = p.get("disable_self_attentions")
    return UNetConfig(
        in_channels=cout, out_channels=cout, concat_channels=cin - cout, model_channels=int(p["model_channels"]),
        channel_mult=mult, num_res_blocks=_one(p["num_res_blocks"], "num_res_blocks"),
        attention_resolutions=tuple(int(a) for a in p["attention_resolutions"]),
        num_heads=heads if heads > 0 else 8, num_head_channels=head_channels if head_channels > 0 else None,
        transformer_depth=_one(p.get("transformer_depth", 1), "transformer_depth"), context_dim=context,
        use_linear_in_transformer=bool(p.get("use_linear_in_transformer", False)),
        dropout=float(p.get("dropout", 0.0)), resblock_updown=bool(p.get("resblock_updown", False)),
        use_scale_shift_norm=bool(p.get("use_scale_shift_norm", False)),
        conv_resample=bool(p.get("conv_resample", True)), norm_groups=32, class_embeddings=num_classes,
        cross_attention_only=tuple(bool(d) for d in disable) if disable and any(disable) else ())


def autoencoder_from_original(target: str, p: Mapping[str, Any], scale_factor: float = 1.0) -> AutoencoderConfig:
    """``first_stage_config`` (ldm.models.autoencoder.AutoencoderKL / VQModelInterface) → AutoencoderConfig."""
    if target not in _KL_TARGETS + _VQ_TARGETS:
        raise ConfigError(f"original first stage {target or '(no target)'} is not supported "
                          "(AutoencoderKL, VQModel / VQModelInterface)")
    dd = dict(p.get("ddconfig") or {})
    kind = "kl" if target in _KL_TARGETS else "vq"
    z, embed = int(dd["z_channels"]), int(p["embed_dim"])
    if z != embed:
        raise ConfigError(f"original first stage z_channels {z} ≠ embed_dim {embed}: ldmkit's autoencoder has one "
                          "latent width")
    if dd.get("attn_type", "vanilla") != "vanilla" or (kind == "kl" and not dd.get("double_z", True)):
        raise ConfigError("original first stage with attn_type other than vanilla or double_z false: not supported")
    resolution = int(dd.get("resolution", 256))
    mult = tuple(int(m) for m in dd["ch_mult"])
    # attn_resolutions are pixel sizes of the training resolution; ldmkit keeps downsampling factors.
    factors = tuple(sorted({resolution // int(r) for r in dd.get("attn_resolutions", [])}))
    extra = {"codebook_size": int(p["n_embed"])} if kind == "vq" else {}
    return AutoencoderConfig(kind=kind, in_channels=int(dd.get("in_channels", 3)), out_channels=int(dd["out_ch"]),
                             base_channels=int(dd["ch"]), channel_mult=mult, num_res_blocks=int(dd["num_res_blocks"]),
                             attention_factors=factors, latent_channels=embed, dropout=float(dd.get("dropout", 0.0)),
                             groups=32, scale_factor=float(scale_factor), **extra)


def schedule_from_original(p: Mapping[str, Any]) -> ScheduleConfig:
    """``model.params`` betas and parameterization → ScheduleConfig (LDM defaults where a key is absent)."""
    name = p.get("beta_schedule", "linear")
    if name not in _BETA_SCHEDULES:
        raise ConfigError(f"original beta_schedule {name!r} is not supported ({', '.join(_BETA_SCHEDULES)})")
    pred = p.get("parameterization", "eps")
    if pred not in _PREDICTIONS:
        raise ConfigError(f"original parameterization {pred!r} is not supported (eps, v, x0)")
    kind = _BETA_SCHEDULES[name]
    betas = {} if kind == "cosine" else {"beta_start": float(p.get("linear_start", 1e-4)),
                                         "beta_end": float(p.get("linear_end", 2e-2))}
    return ScheduleConfig(kind=kind, num_timesteps=int(p.get("timesteps", 1000)), prediction=_PREDICTIONS[pred],
                          **betas)


def model_from_original(data: Mapping[str, Any]) -> OriginalModel:
    """A whole original config (as read from YAML) → ldmkit configs.

    A first-stage-only config (``model.target`` an autoencoder) gives ``unet=None``.
    """
    target, p = _params(data.get("model"), "model")
    if target in _KL_TARGETS + _VQ_TARGETS:
        return OriginalModel(None, autoencoder_from_original(target, p), None, None, "none", None)
    if target not in _LDM_TARGETS:
        raise ConfigError(f"original model {target or '(no target)'} is not supported "
                          f"({', '.join(_LDM_TARGETS)} or a first stage)")
    notes = []
    utarget, up = _params(p.get("unet_config"), "model.params.unet_config")
    if utarget not in _UNET_TARGETS:
        raise ConfigError(f"original UNet {utarget or '(no target)'} is not supported (openaimodel.UNetModel)")
    unet = unet_from_original(up)
    key = p.get("conditioning_key")
    cond = p.get("cond_stage_config")
    ctarget = cond.get("target", "") if isinstance(cond, Mapping) else str(cond or "")
    refuse_inexact(ctarget)
    ftarget, fp = _params(p.get("first_stage_config"), "model.params.first_stage_config")
    autoencoder = autoencoder_from_original(ftarget, fp, float(p.get("scale_factor", 1.0)))
    text, compvis = None, None
    if ctarget in TEXT_ENCODERS:
        if unet.context_dim is None or key not in ("crossattn", "hybrid", "hybrid-adm"):
            raise ConfigError(f"original {ctarget} with conditioning_key {key!r} and a UNet without cross-attention "
                              "is not supported")
        text = TEXT_ENCODERS[ctarget]
        layer = (cond.get("params") or {}).get("layer", "last" if text == "clip-l" else "penultimate")
        if (text, layer) not in (("clip-l", "last"), ("openclip-h", "penultimate")):
            raise ConfigError(f"original {ctarget} with layer {layer!r} is not supported")
    elif target != "ldm.models.diffusion.ddpm.LatentDiffusion":
        raise ConfigError(f"original {target} with cond_stage_config {ctarget or '(none)'} is not supported "
                          f"({', '.join(TEXT_ENCODERS)})")
    else:
        compvis, unet = compvis_condition(p, unet, autoencoder)
        notes += compvis.notes
    concat = compvis.conditioner.concat.kind if compvis is not None else _LDM_TARGETS[target]
    if unet.concat_channels and concat == "none":
        raise ConfigError(f"original UNet takes {unet.concat_channels} extra input channels but {target} adds no "
                          "concat condition")
    if compvis is None and concat_route(concat).super_resolution:
        notes.append("x4 upscaler: the low-resolution image is concatenated as is; its noise level reaches the UNet "
                     "as an integer label in Conditioning.vector")
    image = p.get("image_size")
    return OriginalModel(unet, autoencoder, schedule_from_original(p), text, concat,
                         int(image) if image is not None else None, notes, compvis)
