"""diffusers folders: reading (``StableDiffusion[Inpaint|Upscale]Pipeline`` folders, or one ``vae/``-style
component folder) into :class:`ConvertedParts`, and writing ldmkit models as folders diffusers loads.

A pipeline folder holds ``model_index.json`` and one sub-folder per component, each with ``config.json`` and
``diffusion_pytorch_model.safetensors`` (``model.safetensors`` for the text encoder); ``.bin`` weights are read
with the same code-free unpickler as ``.ckpt`` files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from ldmkit.conditioning.clip_config import ClipTextConfig, clip_family
from ldmkit.diffusion.schedules import ScheduleConfig
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.interop.concat_order import concat_route, conv_in_to_ldmkit
from ldmkit.interop.diffusers_config import autoencoder_from_diffusers, unet_from_diffusers
from ldmkit.interop.keys_text import HF_PREFIX, hf_rules
from ldmkit.interop.keys_unet import unet_rules
from ldmkit.interop.keys_vae import VQ_TRAINING_BUFFERS, autoencoder_rules
from ldmkit.interop.mapping import import_tensors
from ldmkit.interop.noise_augmentation import DIFFUSERS_MAX_NOISE_LEVEL, NoiseAugmentation
from ldmkit.interop.parts import ConvertedParts
from ldmkit.interop.safe_checkpoint import load_checkpoint
from ldmkit.interop.text_state import conditioner_config, meta_text_model

PIPELINES = {"StableDiffusionPipeline": "none", "StableDiffusionInpaintPipeline": "masked_image",
             "StableDiffusionUpscalePipeline": "low_res"}
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
            "pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors")
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETAS = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def component_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in _WEIGHTS:
        if (folder / name).is_file():
            return load_checkpoint(folder / name).tensors
    raise CheckpointError(f"{folder} has no weights ({', '.join(_WEIGHTS[:2])})")


def schedule_from_diffusers(d: dict[str, Any]) -> ScheduleConfig:
    beta = d.get("beta_schedule", "linear")
    if beta not in _BETAS or d.get("trained_betas") is not None:
        raise ConfigError(f"diffusers scheduler beta_schedule {beta!r} (or trained_betas) is not supported")
    pred = d.get("prediction_type", "epsilon")
    if pred not in _PREDICTIONS:
        raise ConfigError(f"diffusers scheduler prediction_type {pred!r} is not supported")
    kind = _BETAS[beta]
    betas = {} if kind == "cosine" else {"beta_start": float(d.get("beta_start", 1e-4)),
                                         "beta_end": float(d.get("beta_end", 0.02))}
    return ScheduleConfig(kind=kind, num_timesteps=int(d.get("num_train_timesteps", 1000)),
                          prediction=_PREDICTIONS[pred], zero_terminal_snr=bool(d.get("rescale_betas_zero_snr")),
                          **betas)


def _clip_from_diffusers(d: dict[str, Any], tokenizer: Path) -> ClipTextConfig:
    width = int(d.get("hidden_size", 768))
    family = "openclip-h" if d.get("hidden_act") == "gelu" else "clip-l"
    pad = clip_family(family).pad_token
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tokenizer / name).is_file():
            token = read_json(tokenizer / name).get("pad_token")
            pad = token.get("content", pad) if isinstance(token, dict) else (token or pad)
            break
    return dataclasses.replace(clip_family(family), width=width, layers=int(d.get("num_hidden_layers", 12)),
                               heads=int(d.get("num_attention_heads", 12)), mlp_width=int(d.get("intermediate_size")),
                               activation=d.get("hidden_act", "quick_gelu"), vocab_size=int(d.get("vocab_size", 49408)),
                               max_length=int(d.get("max_position_embeddings", 77)), pad_token=pad)


def _autoencoder(folder: Path):
    config = autoencoder_from_diffusers(read_json(folder / "config.json"))
    state = import_tensors(autoencoder_rules(config, "diffusers"), component_weights(folder), f"{folder.name}/")
    if config.kind == "vq":
        state[VQ_TRAINING_BUFFERS[0]] = torch.ones(config.codebook_size)
    return config, state


def _noise_augmentation(folder: Path, index: dict[str, Any], notes: list[str]) -> NoiseAugmentation | None:
    """The upscale pipeline's low_res_scheduler (its betas) and max_noise_level, recorded for export."""
    path = folder / "low_res_scheduler" / "scheduler_config.json"
    if not path.is_file():
        notes.append("x4 upscaler without low_res_scheduler/: its noise augmentation is unknown, so the model cannot "
                     "be exported to diffusers")
        return None
    augmentation = NoiseAugmentation(schedule_from_diffusers(read_json(path)),
                                     index.get("max_noise_level", DIFFUSERS_MAX_NOISE_LEVEL))
    notes.append(f"x4 upscaler: noise augmentation kept for export (low_res_scheduler, max_noise_level "
                 f"{augmentation.max_noise_level})")
    return augmentation


def parts_from_diffusers(folder: Path) -> ConvertedParts:
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        if (folder / "config.json").is_file():
            cls = read_json(folder / "config.json").get("_class_name")
            if cls in ("AutoencoderKL", "VQModel"):
                config, state = _autoencoder(folder)
                return ConvertedParts(autoencoder=config, autoencoder_state=state,
                                      notes=[f"diffusers {cls} folder"])
            if cls == "ldmkit" or read_json(folder / "config.json").get("format") == "ldmkit":
                raise CheckpointError(f"{folder} is already an ldmkit model directory")
        raise CheckpointError(f"{folder} is not a diffusers folder (no model_index.json, nor an AutoencoderKL / "
                              "VQModel config.json)")
    index = read_json(folder / "model_index.json")
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        what = "SDXL pipeline: not supported" if "XL" in str(pipeline) else f"{pipeline}: not supported"
        raise CheckpointError(f"{folder}: {what} (ldmkit reads {', '.join(PIPELINES)})")
    concat = PIPELINES[pipeline]
    notes = [f"diffusers {pipeline} folder"]
    autoencoder, ae_state = _autoencoder(folder / "vae")
    augmentation = None
    if pipeline == "StableDiffusionUpscalePipeline":
        # The upscaler's VAE config says 0.18215; the pipeline scales by 0.08333 (its original scale_factor).
        autoencoder = dataclasses.replace(autoencoder, scale_factor=0.08333)
        notes.append("x4 upscaler: latent scale 0.08333, noise-level label 0 (the low-resolution image given clean)")
        augmentation = _noise_augmentation(folder, index, notes)
    unet_json = read_json(folder / "unet" / "config.json")
    unet = unet_from_diffusers(unet_json)
    with torch.device("meta"):
        from ldmkit.denoisers.unet import UNet

        expected = UNet(unet).state_dict()
    unet_state = import_tensors(unet_rules(unet, "diffusers"), component_weights(folder / "unet"), "unet/",
                                expected=expected)
    if concat_route(concat).inpainting:
        unet_state["conv_in.weight"] = conv_in_to_ldmkit(unet_state["conv_in.weight"], unet.in_channels)
    clip = _clip_from_diffusers(read_json(folder / "text_encoder" / "config.json"), folder / "tokenizer")
    if concat_route(concat).super_resolution:
        clip = dataclasses.replace(clip, vector_label=0)
    cond = conditioner_config(clip, concat, autoencoder.latent_channels, autoencoder.downsample_factor)
    module = meta_text_model(cond)
    # transformers 4 wrote text_model.* keys, 5 writes them without that level: read both as text_model.*.
    weights = {k if k.startswith(HF_PREFIX) else HF_PREFIX + k: v
               for k, v in component_weights(folder / "text_encoder").items()}
    text_state = import_tensors(hf_rules(module.state_dict()), weights, "text_encoder/",
                                ignore=("text_model.embeddings.position_ids",))
    schedule = schedule_from_diffusers(read_json(folder / "scheduler" / "scheduler_config.json"))
    tokenizer = folder / "tokenizer"
    return ConvertedParts(autoencoder=autoencoder, autoencoder_state=ae_state, unet=unet, unet_state=unet_state,
                          conditioner=cond, conditioner_state=text_state, schedule=schedule,
                          latent_size=int(unet_json.get("sample_size") or 64), notes=notes,
                          tokenizer_dir=str(tokenizer) if (tokenizer / "vocab.json").is_file() else None,
                          noise_augmentation=augmentation)
