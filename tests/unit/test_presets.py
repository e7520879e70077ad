"""Every YAML preset validates against its experiment dataclass (a typo in a shipped preset fails here)."""

import pytest

from ldmkit.config import list_presets, load_config
from ldmkit.data import DataConfig
from ldmkit.training.autoencoder_task import AutoencoderExperiment
from ldmkit.training.diffusion_task import DiffusionExperiment

GROUPS = {"autoencoder": AutoencoderExperiment, "diffusion": DiffusionExperiment, "data": DataConfig}
PRESETS = [(group, name) for group in GROUPS for name in list_presets(group)]


def test_every_group_has_presets():
    assert {group for group, _ in PRESETS} == set(GROUPS)
    assert {"kl-f4", "kl-f8", "vq-f4", "vq-f8", "synthetic-kl-f4"} <= set(list_presets("autoencoder"))
    assert {"synthetic-text", "fashion-mnist-class", "ldm4-256", "ldm8-256"} <= set(list_presets("diffusion"))


@pytest.mark.parametrize("group, name", PRESETS)
def test_preset_validates(group, name):
    config = load_config(GROUPS[group], name, group=group)
    assert config is not None
