"""Any supported checkpoint → ldmkit configs and state dicts (:class:`ConvertedParts`) → a model directory.

Sources: a single file in the original layout (``.ckpt``, ``.safetensors``: a whole latent diffusion model, Stable
Diffusion or a CompVis LDM without a text encoder, or a first stage only) or a diffusers folder (see
:mod:`ldmkit.interop.diffusers_folder`). Networks are built on the ``meta`` device and take the checkpoint's
tensors as they are (``assign=True``), so the weights are never held twice; the model directory is written beside
``--out`` and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ldmkit.autoencoders.build import build_autoencoder, save_autoencoder
from ldmkit.denoisers.unet import UNet
from ldmkit.diffusion.schedules import NoiseSchedule
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.interop.compvis_stages import COND_STAGE, compvis_conditioner_state, fold_channel_mapper
from ldmkit.interop.concat_order import concat_route, conv_in_to_ldmkit
from ldmkit.interop.infer import UNET, foreign_layout, infer_autoencoder, infer_sd_config
from ldmkit.interop.keys_unet import unet_rules
from ldmkit.interop.keys_vae import VQ_TRAINING_BUFFERS, autoencoder_rules
from ldmkit.interop.mapping import import_tensors, strip_prefix
from ldmkit.interop.noise_augmentation import KEY as NOISE_AUGMENTATION
from ldmkit.interop.noise_augmentation import from_original as noise_augmentation_from_original
from ldmkit.interop.original_config import model_from_original, read_original_yaml
from ldmkit.interop.parts import ConvertedParts
from ldmkit.interop.rules import few
from ldmkit.interop.safe_checkpoint import load_checkpoint
from ldmkit.interop.text_state import SD1_TEXT, SD2_TEXT, conditioner_config, text_from_original

FIRST_STAGE = "first_stage_model."
#: Tables of the original LatentDiffusion object: derived from the schedule, not weights.
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "scale_factor", "model_ema.decay",
                    "model_ema.num_updates")


def _meta(build, *args):
    with torch.device("meta"):
        return build(*args)


def _ema_unet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet's EMA copy: LitEma stores ``model.diffusion_model.a.b`` as ``model_ema.diffusion_modelab``."""
    flat = {k[len("model_ema."):]: v for k, v in state.items() if k.startswith("model_ema.diffusion_model")}
    if not flat:
        raise CheckpointError("--ema: the checkpoint has no EMA weights (model_ema.*); convert without --ema")
    out = {}
    for key in state:
        if key.startswith(UNET):
            ema = ("diffusion_model." + key[len(UNET):]).replace(".", "")
            if ema not in flat:
                raise CheckpointError(f"--ema: the EMA copy lacks {key}")
            out[key[len(UNET):]] = flat[ema]
    return out


def _first_stage_state(state: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    fs = strip_prefix(state, FIRST_STAGE) if any(k.startswith(FIRST_STAGE) for k in state) else dict(state)
    loss = [k for k in fs if k.startswith("loss.")]
    if loss:
        notes.append(f"left out {len(loss)} tensors of the first stage's training loss (loss.*: LPIPS, discriminator)")
    return {k: v for k, v in fs.items() if not k.startswith("loss.")}


def _autoencoder_state(config, fs: Mapping[str, torch.Tensor], ignore=()) -> dict[str, torch.Tensor]:
    expected = _meta(build_autoencoder, config).state_dict()
    ours = import_tensors(autoencoder_rules(config, "original"), fs, "first stage", expected=expected, ignore=ignore)
    for name in VQ_TRAINING_BUFFERS:  # usage statistics: fresh, as after building
        if name in expected:
            ours[name] = torch.ones(expected[name].shape) if name.endswith("cluster_size") else \
                ours["quantizer.codebook"].float().clone()
    return ours


def _check_schedule(schedule, state: Mapping[str, torch.Tensor], notes: list[str]) -> None:
    """The config's ᾱ table must be the one the checkpoint was trained with, when the checkpoint stores it."""
    stored = state.get("alphas_cumprod")
    if stored is None or schedule is None:
        return
    ours = NoiseSchedule(schedule).alphas_cumprod.to(torch.float64)
    if stored.shape != ours.shape or not torch.allclose(stored.to(torch.float64), ours, rtol=1e-4, atol=1e-7):
        raise ConfigError(f"the config's noise schedule ({schedule.kind} {schedule.betas_range()}, "
                          f"{schedule.num_timesteps} steps) is not the checkpoint's (alphas_cumprod differs): give "
                          "the YAML the model was trained with")
    notes.append("noise schedule checked against the checkpoint's alphas_cumprod")


def _stored_scale_factor(config, state: Mapping[str, torch.Tensor], params: Mapping[str, Any], notes: list[str]):
    """A ``scale_by_std`` model (lsun_churches) measured its factor when training began and stored it as a buffer:
    the stored value is the one its latents were scaled by."""
    stored = state.get("scale_factor")
    if stored is None:
        if params.get("scale_by_std"):
            raise CheckpointError("the YAML has scale_by_std: true but the checkpoint stores no scale_factor, so the "
                                  "latent scale it was trained with is unknown")
        return config
    value = float(stored)
    if abs(value - config.scale_factor) <= 1e-6 * abs(config.scale_factor):
        return config
    notes.append(f"scale_factor {value:.6g} taken from the checkpoint (the YAML says {config.scale_factor:g})")
    return dataclasses.replace(config, scale_factor=value)


def parts_from_original(state: Mapping[str, torch.Tensor], original: Mapping[str, Any] | None = None, *,
                        ema: bool = False, prediction: str | None = None) -> ConvertedParts:
    """A single file's tensors in the original layout (+ its YAML, read or inferred) → ConvertedParts."""
    notes: list[str] = []
    keys = list(state)
    foreign = foreign_layout(keys)
    if foreign:
        raise CheckpointError(foreign)
    if not any(k.startswith(UNET) for k in keys):  # a first stage alone
        fs = _first_stage_state(state, notes)
        if original is not None:
            described = model_from_original(original)
            if described.unet is not None:
                raise CheckpointError("the YAML describes a latent diffusion model but the checkpoint has no UNet "
                                      f"({UNET}*)")
            config = described.autoencoder
        else:
            config, inferred = infer_autoencoder(fs)
            notes += inferred
        return ConvertedParts(autoencoder=config, autoencoder_state=_autoencoder_state(config, fs), notes=notes)

    if original is None:
        original, inferred = infer_sd_config(state)
        notes += inferred
    described = model_from_original(original)
    notes += described.notes
    unet_config, schedule = described.unet, described.schedule
    if prediction is not None:
        schedule = dataclasses.replace(schedule, prediction=prediction)
    compvis = described.compvis
    if compvis is not None:  # checked first: the semantic map's channel_mapper is folded into conv_in
        cond, cond_state = compvis.conditioner, compvis_conditioner_state(state, compvis)
    has_ema = any(k.startswith("model_ema.diffusion_model") for k in keys)
    if ema:
        unet_original = _ema_unet(state)
        notes.append("took the EMA weights of the UNet (model_ema.*)")
    else:
        unet_original = strip_prefix(state, UNET)
        if has_ema:
            notes.append("the checkpoint also holds EMA weights (model_ema.*): --ema converts those instead")
    if compvis is not None and cond.concat.semantic_map:
        unet_original = dict(unet_original, **{"input_blocks.0.0.weight": fold_channel_mapper(
            unet_original["input_blocks.0.0.weight"], state[COND_STAGE + "channel_mapper.weight"],
            unet_config.in_channels)})
    unet_state = import_tensors(unet_rules(unet_config, "original"), unet_original, "UNet",
                                expected=_meta(UNet, unet_config).state_dict())
    if compvis is None and concat_route(described.concat).inpainting:  # SD's [z, mask, masked] order
        unet_state["conv_in.weight"] = conv_in_to_ldmkit(unet_state["conv_in.weight"], unet_config.in_channels)
        notes.append("inpainting: conv_in's input channels reordered from [z, mask, masked] to ldmkit's "
                     "[z, masked, mask]")
    autoencoder = _stored_scale_factor(described.autoencoder, state, original["model"].get("params") or {}, notes)
    ae_state = _autoencoder_state(autoencoder, _first_stage_state(state, notes))
    augmentation = None
    if compvis is None:
        clip, cond_state, text_notes = text_from_original(state, described.text_encoder)
        notes += text_notes
        if concat_route(described.concat).super_resolution:
            clip = dataclasses.replace(clip, vector_label=0)
            notes.append("x4 upscaler: the noise-level label is 0 (the low-resolution image is given clean)")
            augmentation = noise_augmentation_from_original(original["model"].get("params") or {})
        cond = conditioner_config(clip, described.concat, autoencoder.latent_channels, autoencoder.downsample_factor)
    _check_schedule(schedule, state, notes)
    known = (UNET, FIRST_STAGE, SD1_TEXT, SD2_TEXT, "model_ema.", "low_scale_model.", "cond_stage_model.")
    stray = [k for k in keys if not k.startswith(known) and k not in SCHEDULE_BUFFERS]
    if stray:
        raise CheckpointError(f"the checkpoint has {len(stray)} tensors no part of the model takes ({few(stray)}): "
                              "it is not a Stable Diffusion / LDM checkpoint ldmkit can hold")
    return ConvertedParts(autoencoder=autoencoder, autoencoder_state=ae_state, unet=unet_config, unet_state=unet_state,
                          conditioner=cond, conditioner_state=cond_state, schedule=schedule,
                          latent_size=described.latent_size or 64, notes=notes, noise_augmentation=augmentation)


def read_source(source: str | Path, *, config: str | Path | None = None, ema: bool = False,
                prediction: str | None = None) -> ConvertedParts:
    """ConvertedParts of a single-file checkpoint or a diffusers folder."""
    source = Path(source)
    if source.is_dir():
        from ldmkit.interop.diffusers_folder import parts_from_diffusers

        if config is not None:
            raise ConfigError("--config is for single-file checkpoints; a diffusers folder describes itself")
        parts = parts_from_diffusers(source)
        if prediction is not None and parts.schedule is not None:
            parts.schedule = dataclasses.replace(parts.schedule, prediction=prediction)
        return parts
    original = read_original_yaml(config) if config is not None else None
    ckpt = load_checkpoint(source)
    parts = parts_from_original(ckpt.tensors, original, ema=ema, prediction=prediction)
    if ckpt.skipped_line():
        parts.notes.insert(0, ckpt.skipped_line())
    return parts


# --- building and writing -----------------------------------------------------------------------------------------

def build_autoencoder_from(parts: ConvertedParts):
    model = _meta(build_autoencoder, parts.autoencoder)
    model.load_state_dict(parts.autoencoder_state, strict=True, assign=True)
    return model.eval()


def build_model(parts: ConvertedParts):
    """The :class:`~ldmkit.model.LatentDiffusionModel` of ``parts`` (networks hold the source's tensors)."""
    from ldmkit.conditioning import build_conditioner
    from ldmkit.model import LatentDiffusionModel

    autoencoder = build_autoencoder_from(parts)
    unet = _meta(UNet, parts.unet)
    unet.load_state_dict(parts.unet_state, strict=True, assign=True)
    conditioner = build_conditioner(parts.conditioner, pretrained_path=parts.tokenizer_dir)
    conditioner.load_state_dict(parts.conditioner_state, strict=True)
    side = int(parts.latent_size or 64)
    extra: dict[str, Any] = {"converted": {"notes": parts.notes}}
    if parts.noise_augmentation is not None:  # no ldmkit config holds it; export writes it back
        extra[NOISE_AUGMENTATION] = parts.noise_augmentation.record()
    return LatentDiffusionModel(unet=unet.eval(), schedule=NoiseSchedule(parts.schedule),
                                conditioner=conditioner.eval(), autoencoder=autoencoder, latent_size=(side, side),
                                extra=extra)


def write_parts(parts: ConvertedParts, out: str | Path) -> Path:
    """Write the model directory (kind "ldm", or "autoencoder" for a first stage) at ``out``, atomically."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = staging / "model"
        if parts.unet is None:
            save_autoencoder(target, build_autoencoder_from(parts), extra={"converted": {"notes": parts.notes}})
        else:
            build_model(parts).save(target)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def convert(source: str | Path, out: str | Path, *, config: str | Path | None = None, ema: bool = False,
            prediction: str | None = None) -> ConvertedParts:
    parts = read_source(source, config=config, ema=ema, prediction=prediction)
    write_parts(parts, out)
    return parts
