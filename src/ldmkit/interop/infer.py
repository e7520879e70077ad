"""What a single-file checkpoint is, read from its tensor names and shapes when no YAML comes with it.

Stable Diffusion 1.x and 2.x UNets differ in the width of their cross-attention context (768: CLIP ViT-L/14,
1024: OpenCLIP ViT-H/14), inpainting UNets take 9 input channels, the x4 upscaler has a noise-level table
(``label_emb``). What the weights cannot tell — attention heads, and for SD 2.x whether the model predicts
ε (512-base) or v (768-v) — comes from the published config of that family, and is said in a note.
A first-stage-only file is read completely from its shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.errors import CheckpointError
from ldmkit.interop.rules import few
from ldmkit.interop.sd_configs import sd_config

UNET = "model.diffusion_model."

#: Key patterns of layouts ldmkit does not hold → what they look like.
_FOREIGN = (
    ("conditioner.embedders.", "SDXL checkpoint (dual text encoders)"),
    (UNET + "label_emb.0.0.", "SDXL UNet"),
    (UNET + "add_embedding.", "SDXL UNet"),
    ("control_model.", "ControlNet"),
    ("lora_", "LoRA weights"),
    ("model.diffusion_model.joint_blocks.", "SD3 MMDiT"),
    ("double_blocks.", "Flux transformer"),
    ("embedding_manager.", "textual-inversion embedding"),
)


def foreign_layout(keys: list[str]) -> str | None:
    """'<what it looks like>: not supported' when ``keys`` belong to a layout ldmkit does not hold."""
    for pattern, what in _FOREIGN:
        hits = [k for k in keys if k.startswith(pattern) or pattern in k]
        if hits:
            return f"{what}: not supported (found {few(hits, 2)})"
    return None


def infer_sd_config(state: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """(the published config dict this SD checkpoint follows, notes saying what was inferred)."""
    keys = list(state)
    foreign = foreign_layout(keys)
    if foreign:
        raise CheckpointError(foreign)
    conv_in = state.get(UNET + "input_blocks.0.0.weight")
    to_k = next((v for k, v in state.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    if conv_in is None or to_k is None:
        raise CheckpointError("the checkpoint has no Stable Diffusion UNet (model.diffusion_model.input_blocks.*, "
                              "attn2); for other latent diffusion models give the original YAML with --config")
    context, channels = int(to_k.shape[1]), int(conv_in.shape[1])
    upscaler = UNET + "label_emb.weight" in state
    if upscaler:
        name = "x4-upscaling.yaml"
    elif context == 768:
        name = "v1-inpainting-inference.yaml" if channels == 9 else "v1-inference.yaml"
    elif context == 1024:
        name = "v2-inpainting-inference.yaml" if channels == 9 else "v2-inference-v.yaml"
    else:
        raise CheckpointError(f"cross-attention context of width {context} is neither SD 1.x (768) nor SD 2.x (1024); "
                              "give the original YAML with --config")
    notes = [f"no --config: the weights look like {name} (context width {context}, {channels} input channels"
             + (", a noise-level table" if upscaler else "") + ")"]
    if name == "v2-inference-v.yaml":
        notes.append("SD 2.x: assumed the 768-v model (v prediction, 96x96 latents); for the 512-base model "
                     "(ε prediction) pass --config v2-inference.yaml or --prediction eps")
    return sd_config(name), notes


def _count(keys: list[str], prefix: str) -> int:
    found = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    return max(found) + 1 if found else 0


def infer_autoencoder(state: Mapping[str, torch.Tensor]) -> tuple[AutoencoderConfig, list[str]]:
    """The first stage of an original-layout state (``encoder.*``, ``decoder.*``, …, no prefix) from its shapes."""
    keys = list(state)
    try:
        ch = int(state["encoder.conv_in.weight"].shape[0])
        levels = _count(keys, "encoder.down.")
        blocks = _count(keys, "encoder.down.0.block.")
        mult = tuple(int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) // ch for i in range(levels))
        latent = int(state["post_quant_conv.weight"].shape[0])
        attn = tuple(2**i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state)
        vq = "quantize.embedding.weight" in state
        config = AutoencoderConfig(
            kind="vq" if vq else "kl", in_channels=int(state["encoder.conv_in.weight"].shape[1]),
            out_channels=int(state["decoder.conv_out.weight"].shape[0]), base_channels=ch, channel_mult=mult,
            num_res_blocks=blocks, mid_attention="encoder.mid.attn_1.q.weight" in state, attention_factors=attn,
            latent_channels=latent, groups=32,
            **({"codebook_size": int(state["quantize.embedding.weight"].shape[0])} if vq else {}))
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"the first stage's tensors do not read as an LDM autoencoder (no {exc}); give the "
                              "original YAML with --config") from None
    notes = [f"no --config: read a {config.kind.upper()} autoencoder from the shapes (f={config.downsample_factor}, "
             f"{latent} latent channels, base width {ch}, levels {list(mult)})"]
    if config.kind == "kl" and mult == (1, 2, 4, 4) and latent == 4 and ch == 128:
        config = dataclasses.replace(config, scale_factor=0.18215)
        notes.append("the Stable Diffusion KL-f8 shape: scale_factor 0.18215 assumed")
    else:
        notes.append("scale_factor 1.0: measure it on your data (ldm encode) or give the YAML")
    return config, notes
