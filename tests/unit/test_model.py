"""The model object: one save/load path, conditions of a request, the sizes it accepts, the ways in and out."""

import json
from dataclasses import dataclass

import pytest
import torch

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
from ldmkit.conditioning import ConditionerConfig, build_conditioner
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.denoisers.registry import BACKBONES, register_backbone
from ldmkit.errors import CheckpointError, ConfigError
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines import load_pipeline


def tiny_model(kind: str = "class") -> LatentDiffusionModel:
    """A class-conditional model on a KL f = 2 first stage held only in memory (as after conversion)."""
    torch.manual_seed(0)
    cond = ConditionerConfig(kind=kind, num_classes=3, embed_dim=16)
    conditioner = build_conditioner(cond)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2, vector_dim=cond.vector_dim,
                           context_dim=cond.context_dim))
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    autoencoder = build_autoencoder(AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2),
                                                      num_res_blocks=1, latent_channels=3, mid_attention=False))
    return LatentDiffusionModel(unet=unet.eval(), schedule=NoiseSchedule(ScheduleConfig(prediction="v")),
                                conditioner=conditioner.eval(), autoencoder=autoencoder.eval(), latent_size=(8, 8))


def _outputs(model: LatentDiffusionModel) -> torch.Tensor:
    cond, _, _ = model.condition(class_label=[0, 2])
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.denoiser()(x, torch.tensor([10, 500]), cond).x0


def test_a_model_held_in_memory_saves_and_loads_to_identical_outputs(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "model", experiment={"note": "kept"})
    loaded = LatentDiffusionModel.load(tmp_path / "model")
    assert torch.equal(_outputs(model), _outputs(loaded))
    assert loaded.schedule.config == model.schedule.config and loaded.latent_size == (8, 8)
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(model.decode(model.encode(images)), loaded.decode(loaded.encode(images)))
    record = json.loads((tmp_path / "model" / "config.json").read_text())["extra"]
    assert record["experiment"] == {"note": "kept"}
    assert record["autoencoder"]["path"] is None  # written from memory: no origin to fall back on
    assert record["autoencoder"]["sha256"] == json.loads(
        (tmp_path / "model" / "autoencoder" / "config.json").read_text())["files"]["model"]
    assert load_pipeline(tmp_path / "model").model.latent_size == (8, 8)  # the public entry point reads it too


def test_saving_a_loaded_model_onto_its_own_directory_keeps_its_autoencoder(tmp_path):
    tiny_model().save(tmp_path / "model")
    loaded = LatentDiffusionModel.load(tmp_path / "model")
    assert loaded.autoencoder_source == tmp_path / "model" / "autoencoder"
    with torch.no_grad():
        next(loaded.unet.parameters()).add_(0.5)
    loaded.save(tmp_path / "model")  # the source of the copy is inside the directory being replaced
    again = LatentDiffusionModel.load(tmp_path / "model")
    assert torch.equal(_outputs(again), _outputs(loaded))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_condition_cycles_labels_and_refuses_what_the_model_cannot_take():
    model = tiny_model()
    cond, uncond, count = model.condition(class_label=[0, 1], n=5)
    assert count == 5 and cond.batch_size == 5 and uncond.batch_size == 5
    with pytest.raises(ConfigError, match="out of range"):
        model.condition(class_label=3)
    with pytest.raises(ConfigError, match="not on text"):
        model.condition(prompt="a cat")
    with pytest.raises(ConfigError, match="give a class label"):
        model.condition()


def test_latent_shape_names_the_multiple_it_needs():
    model = tiny_model()
    assert model.size_multiple == 4  # f = 2 times one UNet downsampling
    assert model.latent_shape() == (3, 8, 8) and model.latent_shape(12, 20) == (3, 6, 10)
    with pytest.raises(ConfigError, match="multiple of 4"):
        model.latent_shape(10, 16)


# --- backbones ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyConfig:
    channels: int = 3
    downsample_factor: int = 1


class ToyBackbone(torch.nn.Module):
    """A per-pixel linear map: the smallest network with the denoiser signature."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.mix = torch.nn.Conv2d(config.channels, config.channels, 1)

    def forward(self, x, t, cond=None):  # x: [B, C, h, w]
        return self.mix(x)


def test_a_registered_backbone_is_saved_under_its_name_and_loads_back(tmp_path):
    if "toy" not in BACKBONES:
        register_backbone("toy", ToyConfig, ToyBackbone)
    model = tiny_model("none")
    model.unet = ToyBackbone(ToyConfig()).eval()
    model.save(tmp_path / "model")
    assert (tmp_path / "model" / "toy.safetensors").is_file() and not (tmp_path / "model" / "unet.safetensors").exists()
    loaded = LatentDiffusionModel.load(tmp_path / "model")
    assert isinstance(loaded.unet, ToyBackbone)
    assert torch.equal(loaded.unet.mix.weight, model.unet.mix.weight)
    model.unet = torch.nn.Conv2d(3, 3, 1)  # no config: not a backbone anyone can rebuild
    with pytest.raises(CheckpointError, match="not a registered denoiser backbone"):
        model.save(tmp_path / "other")
    assert not (tmp_path / "other").exists()
