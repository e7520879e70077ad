"""The published Stable Diffusion inference configs, as the dicts their YAML files load to.

Used when a checkpoint comes without its YAML: :mod:`ldmkit.interop.infer` picks one from the tensors'
names and shapes. Only the keys :mod:`ldmkit.interop.original_config` reads are kept.
"""

from __future__ import annotations

import copy
from typing import Any

_KL_F8 = {"target": "ldm.models.autoencoder.AutoencoderKL",
          "params": {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256,
                                                  "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4],
                                                  "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}}
_CLIP = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}
_OPENCLIP = {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
             "params": {"freeze": True, "layer": "penultimate"}}
_UNET_V1 = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                       "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                       "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 768,
                       "use_checkpoint": True, "legacy": False}}
_UNET_V2 = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                       "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                       "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
                       "transformer_depth": 1, "context_dim": 1024, "use_checkpoint": True, "legacy": False}}


def _ldm(target: str, unet: dict, cond: dict, image_size: int, key: str = "crossattn", **params: Any) -> dict:
    return {"model": {"target": target, "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "image_size": image_size, "channels": 4,
        "conditioning_key": key, "scale_factor": 0.18215, "unet_config": unet, "first_stage_config": _KL_F8,
        "cond_stage_config": cond, **params}}}


def _in9(unet: dict) -> dict:
    unet = copy.deepcopy(unet)
    unet["params"]["in_channels"] = 9
    return unet


_UPSCALER_UNET = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                  "params": {"num_classes": 1000, "image_size": 128, "in_channels": 7, "out_channels": 4,
                             "model_channels": 256, "attention_resolutions": [2, 4, 8], "num_res_blocks": 2,
                             "channel_mult": [1, 2, 2, 4], "disable_self_attentions": [True, True, True, False],
                             "disable_middle_self_attn": False, "num_heads": 8, "use_spatial_transformer": True,
                             "transformer_depth": 1, "context_dim": 1024, "legacy": False,
                             "use_linear_in_transformer": True}}
_KL_F4 = copy.deepcopy(_KL_F8)
_KL_F4["params"]["ddconfig"]["ch_mult"] = [1, 2, 4]

#: file name of the published YAML → its content
SD_CONFIGS: dict[str, dict[str, Any]] = {
    "v1-inference.yaml": _ldm("ldm.models.diffusion.ddpm.LatentDiffusion", _UNET_V1, _CLIP, 64),
    "v1-inpainting-inference.yaml": _ldm("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", _in9(_UNET_V1), _CLIP,
                                         64, key="hybrid"),
    "v2-inference.yaml": _ldm("ldm.models.diffusion.ddpm.LatentDiffusion", _UNET_V2, _OPENCLIP, 64),
    "v2-inference-v.yaml": _ldm("ldm.models.diffusion.ddpm.LatentDiffusion", _UNET_V2, _OPENCLIP, 96,
                                parameterization="v"),
    "v2-inpainting-inference.yaml": _ldm("ldm.models.diffusion.ddpm.LatentInpaintDiffusion", _in9(_UNET_V2),
                                         _OPENCLIP, 64, key="hybrid"),
    "x4-upscaling.yaml": {"model": {"target": "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion", "params": {
        "parameterization": "v", "linear_start": 0.0001, "linear_end": 0.02, "timesteps": 1000, "image_size": 128,
        "channels": 4, "conditioning_key": "hybrid-adm", "scale_factor": 0.08333, "unet_config": _UPSCALER_UNET,
        "first_stage_config": _KL_F4, "cond_stage_config": _OPENCLIP,
        "low_scale_config": {"target": "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation",
                             "params": {"noise_schedule_config": {"linear_start": 0.0001, "linear_end": 0.02},
                                        "max_noise_level": 350}}}}},
}


def sd_config(name: str) -> dict[str, Any]:
    """A deep copy of one published config."""
    return copy.deepcopy(SD_CONFIGS[name])
