"""The web demo offers the adapters found beside a model (``<model>/adapters/``) as a checklist with a scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
gr = pytest.importorskip("gradio")

from ldmkit.adapters import write_lora  # noqa: E402
from ldmkit.adapters.peft_layers import add_layers  # noqa: E402
from ldmkit.adapters.targets import backbone_targets  # noqa: E402
from ldmkit.errors import ConfigError  # noqa: E402
from ldmkit.model import LatentDiffusionModel  # noqa: E402
from ldmkit.serve import ServedModel, build_app  # noqa: E402
from tests.serve_models import save_models  # noqa: E402


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    directory = save_models(tmp_path_factory.mktemp("serve-lora"), ("text",))["text"]
    model = LatentDiffusionModel.load(directory)
    add_layers(model.unet, {n: (2, 2.0) for n in backbone_targets(model.unet, ("attention", "convolutions"))}, "x")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    write_lora(model, "x", directory / "adapters" / "shiny.safetensors")
    return directory


def test_adapters_beside_the_model_are_offered_and_applied(text_model):
    served = ServedModel.load(text_model, device="cpu")
    assert list(served.lora_files) == ["shiny"]  # the kohya twin is not offered twice
    demo = build_app(served)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"ldm-loras", "ldm-lora-scale"} <= ids
    settings = dict(prompt="a red circle", steps=2, n=1, seed=0)
    plain = served.generate(**settings)[0]
    served.use_loras(["shiny"], 1.0)
    adapted = served.generate(**settings)[0]
    served.use_loras([], 1.0)
    again = served.generate(**settings)[0]
    assert np.array_equal(np.asarray(plain), np.asarray(again))
    assert not np.array_equal(np.asarray(plain), np.asarray(adapted))
    with pytest.raises(ConfigError, match="no adapter nope"):
        served.use_loras(["nope"])


def test_a_model_without_adapters_shows_no_checklist(tmp_path):
    served = ServedModel.load(save_models(tmp_path, ("class",))["class"], device="cpu")
    assert served.lora_files == {}
    ids = {getattr(block, "elem_id", None) for block in build_app(served).blocks.values()}
    assert "ldm-loras" not in ids
