"""`ldm distill` of a text model whose frozen MiniLM context comes from a prompt-states file, with MiniLM's weights
absent (as on a machine without network that carried only the states): the full student and the LCM-LoRA train,
save, and sample from the file without ever loading the network."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def text_teacher(tmp_path_factory):
    from ldmkit.assets import require
    from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.conditioning.config import PretrainedTextConfig
    from ldmkit.conditioning.prompt_states import write_prompt_states
    from ldmkit.config import from_dict, to_dict
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.denoisers import UNet, UNetConfig
    from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
    from ldmkit.errors import AssetMissingError
    from ldmkit.model import LatentDiffusionModel

    try:
        require("minilm")
    except AssetMissingError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("text-teacher")
    data = to_dict(DataConfig(source="synthetic", resolution=16))
    data["synthetic"] = {**data["synthetic"], "count": 12, "supersample": 1}
    dataset = build_dataset(from_dict(DataConfig, data), split="train")
    captions = [dataset[i]["caption"] for i in range(len(dataset))]
    network = build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))
    states = write_prompt_states(root / "prompts.safetensors", captions, network)
    conditioner = build_conditioner(ConditionerConfig(
        kind="pretrained_text", drop_prob=0.1, pretrained=PretrainedTextConfig(states_file=str(states)))).eval()
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(2,), num_heads=2, context_dim=384))
    model = LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                 autoencoder=build_autoencoder(AutoencoderConfig(kind="identity")),
                                 latent_size=(16, 16))
    return model.save(root / "teacher", experiment={"data": data}), captions


@pytest.mark.assets
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lcm-lora"])
def test_a_text_model_on_prompt_states_distils_without_the_text_network(text_teacher, tmp_path, monkeypatch, lora):
    from ldmkit.pipelines import load_pipeline
    from ldmkit.training.distill_task import run_distillation

    teacher, captions = text_teacher
    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path / "no-assets"))  # MiniLM's weights are not here
    run = tmp_path / "run"
    extra = ["lora.rank=2", "lora.targets=[attention,convolutions]", "lora.name=lcm"] if lora else []
    run_distillation([f"model={teacher}", f"train.out={run}", "train.steps=2", "train.batch_size=4",
                      "train.device=cpu", "train.progress=false", "train.image_every=2", "skip=100", *extra])
    assert (run / "images" / "samples-00000002.png").is_file()  # the preview sampled the batch's captions
    pipe = load_pipeline(run / "model")
    if lora:
        pipe.load_lora(run / "model" / "adapters" / "lcm.safetensors")
    assert pipe.model.takes_guidance is not lora
    images = pipe(prompt=captions[:2], sampler="lcm", steps=2, guidance=1.0 if lora else 2.0, output="tensor",
                  progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    conditioner = pipe.model.conditioner
    assert conditioner.precomputed is not None and conditioner.model is None  # looked up, never run
