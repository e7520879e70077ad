"""ldmkit model directories → a diffusers folder or a Stable Diffusion single file (``.safetensors``).

A diffusers folder of an "ldm" model is a ``StableDiffusionPipeline`` (``StableDiffusionInpaintPipeline`` for
a masked-image model, ``StableDiffusionUpscalePipeline`` for the x4 upscaler, whose ``low_res_scheduler`` and
``max_noise_level`` come from the recorded noise augmentation) with a PNDM scheduler configured from the model's
schedule, the text encoder written by transformers and the tokenizer from CLIP's vocabulary; an "autoencoder"
model becomes an ``AutoencoderKL`` / ``VQModel`` folder. The single file uses the original key layout
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``). Both are written beside the target
and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.interop.concat_order import conv_in_from_ldmkit
from ldmkit.interop.diffusers_config import autoencoder_to_diffusers, unet_to_diffusers
from ldmkit.interop.keys_unet import unet_rules
from ldmkit.interop.keys_vae import VQ_TRAINING_BUFFERS, autoencoder_rules
from ldmkit.interop.mapping import add_prefix, export_tensors
from ldmkit.interop.noise_augmentation import KEY as NOISE_AUGMENTATION
from ldmkit.interop.noise_augmentation import NoiseAugmentation, for_table, from_record
from ldmkit.interop.text_state import text_to_original
from ldmkit.io import read_model_dir

DIFFUSERS_VERSION = "0.42.1"
_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_BETAS = {"scaled_linear": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _component(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True)
    _write_json(folder / "config.json", {**config, "_diffusers_version": DIFFUSERS_VERSION})
    save_file(_plain(state), str(folder / "diffusion_pytorch_model.safetensors"))


def _autoencoder_component(autoencoder, sample_size: int) -> tuple[dict, dict]:
    config = autoencoder_to_diffusers(autoencoder.config, sample_size=sample_size)
    state = export_tensors(autoencoder_rules(autoencoder.config, "diffusers"), autoencoder.state_dict(), "first stage",
                           ignore=VQ_TRAINING_BUFFERS)
    return config, state


def _noise_fields(c, scheduler: str) -> dict[str, Any]:
    """The keys of a diffusers scheduler config that fix its betas and what the network predicts."""
    if c.kind not in _BETAS or c.prediction not in _PREDICTIONS:
        raise ConfigError(f"a {c.kind} schedule predicting {c.prediction} has no diffusers {scheduler} counterpart")
    start, end = c.betas_range()
    return {"num_train_timesteps": c.num_timesteps, "beta_start": start, "beta_end": end,
            "beta_schedule": _BETAS[c.kind], "prediction_type": _PREDICTIONS[c.prediction],
            "rescale_betas_zero_snr": c.zero_terminal_snr}


def scheduler_config(schedule) -> dict[str, Any]:
    return {"_class_name": "PNDMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            **_noise_fields(schedule.config, "PNDM scheduler"), "skip_prk_steps": True, "set_alpha_to_one": False,
            "steps_offset": 1, "timestep_spacing": "leading"}


def low_res_scheduler_config(augmentation: NoiseAugmentation) -> dict[str, Any]:
    """The upscale pipeline's DDPMScheduler: only its betas matter (it noises the low-resolution image)."""
    return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            **_noise_fields(augmentation.schedule, "DDPM scheduler")}


def _unet_state(model, layout: str) -> dict[str, torch.Tensor]:
    unet = model.unet
    state = export_tensors(unet_rules(unet.config, layout), unet.state_dict(), "UNet")
    conv_in = "conv_in.weight" if layout == "diffusers" else "input_blocks.0.0.weight"
    if model.conditioning.concat.inpainting:
        state[conv_in] = conv_in_from_ldmkit(state[conv_in], unet.config.in_channels)
    return state


def _check_exportable(model, to: str) -> None:
    cond = model.conditioning
    if cond.kind != "clip_text":
        raise ConfigError(f"only models conditioned on a CLIP text encoder (clip_text) export as Stable Diffusion; "
                          f"this one is conditioned on '{cond.kind}'")
    if cond.concat.super_resolution and to != "diffusers":
        raise ConfigError("the x4 upscaler exports only as a diffusers folder (--to diffusers); its original single "
                          "file, with the noise-augmentation tables, is not written")
    if cond.concat.present and not (cond.concat.inpainting or cond.concat.super_resolution):
        raise ConfigError(f"export of a '{cond.concat.kind}' concat model is not supported")


def _upscaler_augmentation(model) -> NoiseAugmentation:
    """The recorded noise augmentation of an x4 upscaler, once the upscale pipeline is known to compute the same
    function: the low-resolution image itself concatenated at the latent grid, upscaled by the first stage's f."""
    concat, f = model.conditioning.concat, model.autoencoder.downsample_factor
    class_embeddings = model.unet.config.class_embeddings
    if class_embeddings is None:
        raise ConfigError("this x4 upscaler's UNet has no noise-level table (class_embeddings: null); diffusers' "
                          "StableDiffusionUpscalePipeline gives the UNet the noise level as a class label")
    if concat.low_res_mode != "resize":
        raise ConfigError("diffusers' StableDiffusionUpscalePipeline concatenates the low-resolution image itself; "
                          "this upscaler encodes it (low_res_mode: encode)")
    if concat.low_res_factor != f:
        raise ConfigError(f"diffusers' StableDiffusionUpscalePipeline upscales by the first stage's factor {f}; "
                          f"this model's low_res_factor is {concat.low_res_factor}")
    record = model.extra.get(NOISE_AUGMENTATION)
    if record is None:
        raise ConfigError(f"this x4 upscaler records no noise augmentation (extra.{NOISE_AUGMENTATION}: the "
                          "low_res_scheduler and max_noise_level); convert it again from its diffusers folder, or "
                          "from its single file with its YAML")
    return for_table(from_record(record), class_embeddings)


def _model_index(model, unet: dict, vae: dict, augmentation: NoiseAugmentation | None) -> dict[str, Any]:
    """model_index.json with the components (and settings) each pipeline's constructor takes."""
    parts = {"unet": ["diffusers", unet["_class_name"]], "vae": ["diffusers", vae["_class_name"]],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None]}
    if augmentation is not None:
        return {"_class_name": "StableDiffusionUpscalePipeline", "_diffusers_version": DIFFUSERS_VERSION, **parts,
                "low_res_scheduler": ["diffusers", "DDPMScheduler"], "watermarker": [None, None],
                "max_noise_level": augmentation.max_noise_level}
    pipeline = "StableDiffusionInpaintPipeline" if model.conditioning.concat.inpainting else "StableDiffusionPipeline"
    return {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION, **parts, "image_encoder": [None, None],
            "requires_safety_checker": False}


def _diffusers_ldm(model, out: Path) -> None:
    from ldmkit.conditioning.clip_text import BOS, EOS

    _check_exportable(model, "diffusers")
    augmentation = _upscaler_augmentation(model) if model.conditioning.concat.super_resolution else None
    side = model.latent_size[0]
    f = model.autoencoder.downsample_factor
    unet_config = unet_to_diffusers(model.unet.config, sample_size=side)
    _component(out / "unet", unet_config, _unet_state(model, "diffusers"))
    vae_config, vae_state = _autoencoder_component(model.autoencoder, side * f)
    _component(out / "vae", vae_config, vae_state)
    encoder = model.conditioner.encoder
    encoder.save_pretrained(str(out / "text_encoder"))
    tokenizer = model.conditioner._load_tokenizer()
    tokenizer.save_pretrained(str(out / "tokenizer"))
    _write_json(out / "tokenizer" / "special_tokens_map.json",
                {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": model.conditioning.clip.pad_token})
    _write_json(out / "scheduler" / "scheduler_config.json", scheduler_config(model.schedule))
    if augmentation is not None:
        _write_json(out / "low_res_scheduler" / "scheduler_config.json", low_res_scheduler_config(augmentation))
    _write_json(out / "model_index.json", _model_index(model, unet_config, vae_config, augmentation))


def single_file_state(model) -> dict[str, torch.Tensor]:
    """The whole model in the original single-file layout."""
    _check_exportable(model, "sd-safetensors")
    ae = model.autoencoder
    state = add_prefix(_unet_state(model, "original"), "model.diffusion_model.")
    state.update(add_prefix(export_tensors(autoencoder_rules(ae.config, "original"), ae.state_dict(), "first stage",
                                           ignore=VQ_TRAINING_BUFFERS), "first_stage_model."))
    state.update(text_to_original(model.conditioner.state_dict(), model.conditioning.clip))
    state["alphas_cumprod"] = model.schedule.alphas_cumprod.to(torch.float32)
    return state


def _staged(out: Path, write) -> Path:
    if out.exists():
        raise CheckpointError(f"{out} exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = staging / out.name
        write(target)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export(model_dir: str | Path, to: str, out: str | Path) -> Path:
    """Write the model directory ``model_dir`` as ``to`` ("diffusers" or "sd-safetensors") at ``out``."""
    if to not in ("diffusers", "sd-safetensors"):
        raise ConfigError(f"--to {to!r}: choose diffusers or sd-safetensors")
    info = read_model_dir(model_dir, kind=("ldm", "autoencoder"))
    out = Path(out)
    if info.kind == "autoencoder":
        from ldmkit.autoencoders import load_autoencoder

        ae = load_autoencoder(model_dir)
        if to == "diffusers":
            config, state = _autoencoder_component(ae, 256)
            return _staged(out, lambda target: _component(target, config, state))
        state = export_tensors(autoencoder_rules(ae.config, "original"), ae.state_dict(), "first stage",
                               ignore=VQ_TRAINING_BUFFERS)
        return _staged(out, lambda target: save_file(_plain(state), str(target)))
    from ldmkit.model import LatentDiffusionModel

    model = LatentDiffusionModel.load(model_dir)
    if to == "diffusers":
        return _staged(out, lambda target: _diffusers_ldm(model, target))
    state = single_file_state(model)
    return _staged(out, lambda target: save_file(_plain(state), str(target), metadata={"format": "pt"}))
