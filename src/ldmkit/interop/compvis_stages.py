"""The cond stages of CompVis latent-diffusion models without a text encoder → ldmkit's conditioner.

============================================  ==========================================================
original ``cond_stage_config``                ldmkit
============================================  ==========================================================
``__is_unconditional__`` (celebahq, ffhq,     ``kind: none``
lsun_churches, lsun_bedrooms)
``ClassEmbedder``, ``crossattn`` (cin256-v2)  ``kind: class``, ``class_route: context``: the label's row is
                                              one cross-attention token [B, 1, D]
``torch.nn.Identity``, concat (bsr_sr)        ``concat.kind: low_res`` (``resize``): the low-resolution
                                              image at the latent grid, as it is
``SpatialRescaler``, concat (semantic         ``concat.kind: semantic`` (``area``), its 1×1 ``channel_mapper``
synthesis)                                    folded into the UNet's ``conv_in``
============================================  ==========================================================

ldmkit's class table has a null class at row K (classifier-free guidance). cin256-v2's table has 1001 rows and
CompVis' ImageNet notebook guides against label 1000, so that row is the null class; a table without it (the
first cin256, 1000 rows) has no null class and is refused. Everything else is a one-line ConfigError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.conditioning.config import ConcatConfig, ConditionerConfig
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.interop.rules import few

COND_STAGE = "cond_stage_model."
CLASS_EMBEDDER = "ldm.modules.encoders.modules.ClassEmbedder"
SPATIAL_RESCALER = "ldm.modules.encoders.modules.SpatialRescaler"
IDENTITY = "torch.nn.Identity"
UNCONDITIONAL = "__is_unconditional__"
#: ImageNet's 1000 classes and the unconditional label 1000 that cin256-v2 is guided with.
IMAGENET_WITH_NULL = 1001


@dataclass(frozen=True)
class CompVisCondition:
    """A CompVis cond stage in ldmkit's terms: the conditioner's config and the tensors it takes."""

    conditioner: ConditionerConfig
    tensors: tuple[str, ...]  # cond_stage_model.* keys the checkpoint must hold (and no others)
    notes: tuple[str, ...] = ()


def conditioning_key(p: Mapping[str, Any], ctarget: str) -> str | None:
    """The key LatentDiffusion uses: given, else concat / crossattn by ``concat_mode`` (default true)."""
    if ctarget == UNCONDITIONAL:
        return None
    key = p.get("conditioning_key")
    if key is None:
        key = "concat" if p.get("concat_mode", True) else "crossattn"
    return key


def _concat(kind: str, autoencoder: AutoencoderConfig, **extra: Any) -> ConcatConfig:
    return ConcatConfig(kind=kind, downsample_factor=autoencoder.downsample_factor,
                        latent_channels=autoencoder.latent_channels, **extra)


def _class_embedder(cp: Mapping[str, Any], key: str | None, unet: UNetConfig) -> CompVisCondition:
    rows, width = int(cp.get("n_classes", 1000)), int(cp.get("embed_dim", 512))
    if key != "crossattn" or unet.context_dim != width:
        raise ConfigError(f"original ClassEmbedder with conditioning_key {key!r} and a UNet context of "
                          f"{unet.context_dim}: only crossattn with context_dim = embed_dim ({width}) is supported")
    if rows != IMAGENET_WITH_NULL:
        raise ConfigError(f"original ClassEmbedder with n_classes {rows}: its table has no null class (ldmkit's "
                          f"class conditioner needs one for guidance; cin256-v2's {IMAGENET_WITH_NULL} rows end with "
                          "it): not supported")
    config = ConditionerConfig(kind="class", num_classes=rows - 1, embed_dim=width, class_route="context")
    notes = (f"ClassEmbedder: labels 0..{rows - 2} reach the UNet as one cross-attention token; row {rows - 1} is "
             "the null class (the unconditional label CompVis' ImageNet notebook guides against)",)
    return CompVisCondition(config, (f"{COND_STAGE}embedding.weight",), notes)


def _spatial_rescaler(cp: Mapping[str, Any], key: str | None, unet: UNetConfig,
                      autoencoder: AutoencoderConfig) -> tuple[CompVisCondition, UNetConfig]:
    stages, mapped = int(cp.get("n_stages", 1)), cp.get("out_channels")
    f = autoencoder.downsample_factor
    exact = (cp.get("method", "bilinear") == "bilinear" and float(cp.get("multiplier", 0.5)) == 0.5
             and 2 ** stages == f and mapped is not None and not cp.get("bias", False) and key == "concat"
             and int(mapped) == unet.concat_channels)
    if not exact:
        raise ConfigError(f"original SpatialRescaler {dict(cp)} with conditioning_key {key!r}: only bilinear halving "
                          f"down to the latent grid (2^n_stages = f = {f}), a bias-free channel_mapper to the UNet's "
                          f"{unet.concat_channels} extra channels and concat is supported")
    classes = int(cp.get("in_channels", 3))
    config = ConditionerConfig(kind="none", concat=_concat("semantic", autoencoder, semantic_classes=classes,
                                                           semantic_resize="area"))
    notes = (f"SpatialRescaler: {stages} bilinear halvings of the one-hot map average {f}x{f} blocks "
             f"(semantic_resize area, exact for maps {f}x the latent grid); its 1x1 channel_mapper ({classes} → "
             f"{mapped}) is folded into conv_in",)
    return (CompVisCondition(config, (f"{COND_STAGE}channel_mapper.weight",), notes),
            replace(unet, concat_channels=classes))


def refuse_inexact(ctarget: str) -> None:
    """Refuse the cond stages ldmkit's routes cannot reproduce, before anything else of the config is read."""
    if ctarget == "__is_first_stage__":
        raise ConfigError("CompVis inpainting LDM (cond_stage_config __is_first_stage__): not supported: it reads the "
                          "mask as -1/1 and the masked image filled with -1, nearest-downsampled, where ldmkit's "
                          "masked_image route gives a 0/1 mask, a 0 fill and max-pooling")


def compvis_condition(p: Mapping[str, Any], unet: UNetConfig,
                      autoencoder: AutoencoderConfig) -> tuple[CompVisCondition, UNetConfig]:
    """``model.params`` of a LatentDiffusion without a text encoder → (its condition, the UNet config ldmkit
    builds)."""
    cond = p.get("cond_stage_config")
    ctarget = str(cond.get("target", "")) if isinstance(cond, Mapping) else str(cond or "")
    cp = dict(cond.get("params") or {}) if isinstance(cond, Mapping) else {}
    key = conditioning_key(p, ctarget)
    if ctarget == CLASS_EMBEDDER:
        return _class_embedder(cp, key, unet), unet
    if unet.context_dim is not None:
        raise ConfigError(f"original cond_stage_config {ctarget or '(none)'} with a cross-attention UNet is not "
                          "supported (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, ClassEmbedder)")
    if ctarget == UNCONDITIONAL and not unet.concat_channels:
        return CompVisCondition(ConditionerConfig(kind="none"), ()), unet
    if ctarget == IDENTITY and key == "concat" and unet.concat_channels == 3:
        f = autoencoder.downsample_factor
        config = ConditionerConfig(kind="none", concat=_concat("low_res", autoencoder, low_res_mode="resize",
                                                               low_res_factor=f))
        notes = (f"super-resolution (x{f}): the low-resolution image is concatenated as it is at the latent grid "
                 f"(1/{f} of the output); other sizes are resized to it bicubically",)
        return CompVisCondition(config, (), notes), unet
    if ctarget == SPATIAL_RESCALER:
        return _spatial_rescaler(cp, key, unet, autoencoder)
    raise ConfigError(f"original cond_stage_config {ctarget or '(none)'} with conditioning_key {key!r} and "
                      f"{unet.concat_channels} extra UNet input channels is not supported (__is_unconditional__, "
                      "ClassEmbedder, torch.nn.Identity for super-resolution, SpatialRescaler)")


def compvis_conditioner_state(state: Mapping[str, torch.Tensor],
                              condition: CompVisCondition) -> dict[str, torch.Tensor]:
    """The class table (``embedding.weight``) or nothing; the checkpoint must hold exactly the cond stage's tensors."""
    found = sorted(k for k in state if k.startswith(COND_STAGE))
    if found != sorted(condition.tensors):
        missing = [k for k in condition.tensors if k not in state]
        raise CheckpointError(f"cond stage: the checkpoint lacks {few(missing) or 'nothing'} and has "
                              f"{few([k for k in found if k not in condition.tensors]) or 'nothing else'}: the "
                              "config does not match these weights (give the right --config)")
    config = condition.conditioner
    if not config.takes_labels:
        return {}
    table = state[f"{COND_STAGE}embedding.weight"]  # [K + 1, D]
    if tuple(table.shape) != (config.num_classes + 1, config.embed_dim):
        raise CheckpointError(f"cond stage: embedding.weight is {tuple(table.shape)}, the config says "
                              f"({config.num_classes + 1}, {config.embed_dim}) (give the right --config)")
    return {"embedding.weight": table}


def fold_channel_mapper(conv_in: torch.Tensor, mapper: torch.Tensor, latent: int) -> torch.Tensor:
    """conv_in [C, c + m, 3, 3] after a bias-free 1×1 conv [m, K, 1, 1] of the map → conv_in [C, c + K, 3, 3].

    The 1×1 conv maps zero padding to zero, so the composition is the same function on the one-hot map.
    """
    mapped = torch.einsum("omhw,mk->okhw", conv_in[:, latent:].double(), mapper[:, :, 0, 0].double())
    return torch.cat([conv_in[:, :latent], mapped.to(conv_in.dtype)], dim=1).contiguous()
