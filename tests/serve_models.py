"""Tiny untrained model directories for the web demo's tests (unit and browser): one per kind of tab."""

from pathlib import Path

import torch

from ldmkit.autoencoders.build import build_autoencoder, load_autoencoder, save_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.conditioning.config import TextEncoderConfig
from ldmkit.config import to_dict
from ldmkit.data.config import DataConfig
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.model import LatentDiffusionModel

SYNTHETIC_CLASSES = 16  # shapes × colours of the default synthetic data set


def save_model(root: Path, name: str, cond_cfg: ConditionerConfig, captions=None, experiment=None) -> Path:
    """A tiny untrained LDM directory (identity first stage in ``root / "ae"``, 16x16) like `ldm train diffusion`
    writes."""
    torch.manual_seed(0)
    conditioner = build_conditioner(cond_cfg, captions=captions)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2, vector_dim=cond_cfg.vector_dim,
                           context_dim=cond_cfg.context_dim, concat_channels=conditioner.concat_channels))
    with torch.no_grad():  # a fresh UNet outputs zeros: give it something to say so seeds matter
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model = LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                 autoencoder=load_autoencoder(root / "ae"), latent_size=(16, 16),
                                 autoencoder_source=Path(root / "ae"))
    return model.save(root / name / "model", experiment=experiment)


def save_models(root: Path, names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Model directories under ``root`` by name: text, class, uncond, inpaint (trained for it), upscale, semantic
    (``names``: only these)."""
    ae_cfg = AutoencoderConfig(kind="identity")
    save_autoencoder(root / "ae", build_autoencoder(ae_cfg), ae_cfg)
    text = ConditionerConfig(kind="text", embed_dim=16, text=TextEncoderConfig(width=16, depth=1, heads=2))
    synthetic = {"data": to_dict(DataConfig(source="synthetic"))}
    makers = {
        "text": lambda: save_model(root, "text", text, captions=["a red circle", "a blue square"]),
        "class": lambda: save_model(root, "class", ConditionerConfig(kind="class", num_classes=SYNTHETIC_CLASSES,
                                                                     embed_dim=16), experiment=synthetic),
        "uncond": lambda: save_model(root, "uncond", ConditionerConfig(kind="none")),
        "inpaint": lambda: save_model(root, "inpaint", ConditionerConfig(
            kind="class", num_classes=3, embed_dim=16, drop_prob=0.0,
            concat=ConcatConfig(kind="masked_image", downsample_factor=1, latent_channels=3))),
        "upscale": lambda: save_model(root, "upscale", ConditionerConfig(concat=ConcatConfig(
            kind="low_res", downsample_factor=1, latent_channels=3, low_res_factor=2))),
        "semantic": lambda: save_model(root, "semantic", ConditionerConfig(concat=ConcatConfig(
            kind="semantic", downsample_factor=1, semantic_classes=5)), experiment=synthetic),
    }
    return {name: make() for name, make in makers.items() if names is None or name in names}
