"""`ldm convert` and `ldm export` end to end on a tiny Stable-Diffusion-shaped model: an original single file
(with a Lightning callback, EMA weights and the schedule tables) becomes an ldmkit model whose UNet, first stage
and text encoder match diffusers'/transformers' own networks; it exports to a folder diffusers' pipeline loads
and to a single file that converts back to identical tensors. Full-size SD layouts are recognised without a
YAML (meta tensors, no forward)."""

from __future__ import annotations

import collections
import fractions
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import yaml

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint  # noqa: E402

from ldmkit.assets.clip_vocab import bytes_to_unicode  # noqa: E402
from ldmkit.autoencoders import build_autoencoder  # noqa: E402
from ldmkit.conditioning.types import Conditioning  # noqa: E402
from ldmkit.denoisers import UNet  # noqa: E402
from ldmkit.errors import CheckpointError  # noqa: E402
from ldmkit.interop.convert import convert, parts_from_original, read_source, write_parts  # noqa: E402
from ldmkit.interop.diffusers_config import autoencoder_from_diffusers, unet_from_diffusers  # noqa: E402
from ldmkit.interop.export import export  # noqa: E402
from ldmkit.interop.keys_unet import unet_rules  # noqa: E402
from ldmkit.interop.keys_vae import autoencoder_rules  # noqa: E402
from ldmkit.interop.mapping import add_prefix, export_tensors, import_tensors  # noqa: E402
from ldmkit.interop.original_config import model_from_original  # noqa: E402
from ldmkit.interop.sd_configs import sd_config  # noqa: E402
from ldmkit.model import LatentDiffusionModel  # noqa: E402

WIDTH = 128  # text width = context width


def tiny_yaml() -> dict:
    data = sd_config("v1-inference.yaml")
    p = data["model"]["params"]
    p["image_size"] = 8
    p["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2], attention_resolutions=[1],
                                      num_res_blocks=1, num_heads=2, context_dim=WIDTH)
    p["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2], num_res_blocks=1)
    return data


def randomise(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
    return module.eval()


@pytest.fixture(scope="module")
def reference():
    """diffusers / transformers networks and the original single file made from them."""
    unet = randomise(UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                          layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                          cross_attention_dim=WIDTH, attention_head_dim=2))
    vae = randomise(AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1))
    text = randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=514, hidden_size=WIDTH, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu")))
    uc = unet_from_diffusers(dict(unet.config))
    ours_unet = import_tensors(unet_rules(uc, "diffusers"), unet.state_dict(), "unet")
    vc = autoencoder_from_diffusers(dict(vae.config))
    ours_vae = import_tensors(autoencoder_rules(vc, "diffusers"), vae.state_dict(), "vae")
    state = add_prefix(export_tensors(unet_rules(uc, "original"), ours_unet, "unet"), "model.diffusion_model.")
    state.update(add_prefix(export_tensors(autoencoder_rules(vc, "original"), ours_vae, "vae"), "first_stage_model."))
    state.update({"cond_stage_model.transformer.text_model." + k: v for k, v in text.state_dict().items()})
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    state["alphas_cumprod"] = schedule.alphas_cumprod.clone()
    return {"unet": unet, "vae": vae, "text": text, "state": state}


@pytest.fixture()
def files(tmp_path, reference):
    """The single file as a Lightning .ckpt (EMA copy, a callback object), its YAML and a tiny BPE vocabulary."""
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    pieces = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(pieces + [p + "</w>" for p in pieces] + ["<|startoftext|>", "<|endoftext|>"])}
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    state = dict(reference["state"])
    ema = {"model_ema." + ("diffusion_model." + k[len("model.diffusion_model."):]).replace(".", ""): v * 0.5
           for k, v in state.items() if k.startswith("model.diffusion_model.")}
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": collections.OrderedDict({**state, **ema}), "global_step": 3,
                "callbacks": {fractions.Fraction: {"x": 1}}}, ckpt)  # stands in for a callback class
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_yaml()))
    return ckpt, config, vocab_dir


def _with_vocab(parts, vocab_dir):
    parts.conditioner = dataclasses.replace(parts.conditioner,
                                            clip=dataclasses.replace(parts.conditioner.clip, tokenizer=str(vocab_dir)))
    return parts


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_converted_model_matches_the_reference_networks(tmp_path, files, reference):
    ckpt, config, vocab_dir = files
    parts = _with_vocab(read_source(ckpt, config=config), vocab_dir)
    assert any("fractions.Fraction" in n for n in parts.notes) and any("alphas_cumprod" in n for n in parts.notes)
    assert any("--ema" in n for n in parts.notes)
    out = write_parts(parts, tmp_path / "model")
    model = LatentDiffusionModel.load(out)
    gen = torch.Generator().manual_seed(0)
    x, t, ids = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([5, 999]), torch.randint(0, 514, (2, 77))
    with torch.no_grad():
        states = model.conditioner.encoder(input_ids=ids).last_hidden_state
        ref_states = reference["text"](input_ids=ids).last_hidden_state
        assert rel_err(states, ref_states) <= 1e-5
        got = model.unet(x, t, Conditioning(context=ref_states))
        assert rel_err(got, reference["unet"](x, t, ref_states).sample) <= 1e-5
        z = torch.randn(1, 4, 4, 4, generator=gen)
        assert rel_err(model.decode(z * model.autoencoder.scale_factor), reference["vae"].decode(z).sample) <= 1e-5
        cond = model.conditioner.encode_prompts(["a cat"])
        assert cond.context.shape == (1, 77, WIDTH)
    assert model.schedule.config.kind == "scaled_linear" and model.autoencoder.scale_factor == 0.18215


def test_ema_weights_are_taken_with_ema(tmp_path, files, reference):
    ckpt, config, _ = files
    parts = read_source(ckpt, config=config, ema=True)
    plain = read_source(ckpt, config=config)
    assert all(torch.equal(parts.unet_state[k], plain.unet_state[k] * 0.5) for k in plain.unet_state)


def test_export_to_diffusers_loads_in_stable_diffusion_pipeline(tmp_path, files, reference):
    ckpt, config, vocab_dir = files
    out = write_parts(_with_vocab(read_source(ckpt, config=config), vocab_dir), tmp_path / "model")
    folder = export(out, "diffusers", tmp_path / "diffusers")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        ref = reference[{"text_encoder": "text"}.get(name, name)].state_dict()
        got = getattr(pipe, name).state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), name
    assert pipe.scheduler.config.prediction_type == "epsilon" and pipe.scheduler.config.beta_end == 0.012
    images = pipe("a cat", num_inference_steps=2, height=16, width=16, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    # ... and back: the folder converts to the same ldmkit tensors.
    again = read_source(folder)
    first = read_source(ckpt, config=config)
    for a, b in ((again.unet_state, first.unet_state), (again.autoencoder_state, first.autoencoder_state),
                 (again.conditioner_state, first.conditioner_state)):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_export_to_a_single_file_round_trips_and_diffusers_reads_it(tmp_path, files, reference):
    ckpt, config, vocab_dir = files
    out = write_parts(_with_vocab(read_source(ckpt, config=config), vocab_dir), tmp_path / "model")
    single = export(out, "sd-safetensors", tmp_path / "model.safetensors")
    back = read_source(single, config=config)
    first = read_source(ckpt, config=config)
    assert all(torch.equal(back.unet_state[k], first.unet_state[k]) for k in first.unet_state)
    from safetensors.torch import load_file

    state = load_file(str(single))
    unet = convert_ldm_unet_checkpoint(state, dict(reference["unet"].config))
    assert all(torch.equal(unet[k], v) for k, v in reference["unet"].state_dict().items())
    vae = convert_ldm_vae_checkpoint(state, dict(reference["vae"].config))
    assert all(torch.equal(vae[k], v) for k, v in reference["vae"].state_dict().items())


def test_cli_convert_writes_nothing_on_failure(tmp_path, files):
    ckpt, config, _ = files
    data = ckpt.read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "ldmkit.cli.main", "convert", str(broken), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "truncated" in run.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    wrong = tmp_path / "wrong.yaml"
    data = tiny_yaml()
    data["model"]["params"]["unet_config"]["params"]["model_channels"] = 64
    wrong.write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match="does not match"):
        convert(ckpt, out, config=wrong)
    assert not out.exists()


def _full_size_state(name: str) -> dict[str, torch.Tensor]:
    """An original single file of the published architecture, in meta tensors."""
    from ldmkit.interop.text_state import meta_text_model, text_to_original

    described = model_from_original(sd_config(name))
    with torch.device("meta"):
        unet, ae = UNet(described.unet), build_autoencoder(described.autoencoder)
    from ldmkit.conditioning.clip_config import clip_family
    from ldmkit.conditioning.config import ConditionerConfig

    clip = clip_family(described.text_encoder)
    text = {"encoder." + k: v for k, v in meta_text_model(ConditionerConfig(kind="clip_text", clip=clip)).state_dict()
            .items()}
    state = add_prefix(export_tensors(unet_rules(described.unet, "original"), unet.state_dict(), "unet"),
                       "model.diffusion_model.")
    state.update(add_prefix(export_tensors(autoencoder_rules(described.autoencoder, "original"), ae.state_dict(),
                                           "vae"), "first_stage_model."))
    state.update(text_to_original(text, clip))
    if clip.family == "openclip-h":  # the published file has a 24th layer and the projection; both unused
        state.update({k.replace("resblocks.22.", "resblocks.23."): v for k, v in state.items() if "resblocks.22." in k})
        state["cond_stage_model.model.text_projection"] = torch.empty(1024, 1024, device="meta")
    return state


@pytest.mark.parametrize("name, text_width", [("v1-inference.yaml", 768), ("v2-inference-v.yaml", 1024),
                                              ("v1-inpainting-inference.yaml", 768), ("x4-upscaling.yaml", 1024)])
def test_full_size_layouts_are_recognised_without_a_yaml(name, text_width):
    parts = parts_from_original(_full_size_state(name))
    assert name in parts.notes[0]
    assert parts.conditioner.clip.width == text_width and parts.unet.context_dim == text_width
    if name.startswith("v2"):
        assert parts.schedule.prediction == "v" and any("--prediction eps" in n for n in parts.notes)
        assert parts.conditioner.clip.layers == 23 and parts.conditioner.clip.pad_token == "!"
    if name.startswith("x4"):
        assert parts.unet.class_embeddings == 1000 and parts.conditioner.clip.vector_label == 0


def test_foreign_layouts_name_what_they_look_like():
    with pytest.raises(CheckpointError, match="SDXL"):
        parts_from_original({"conditioner.embedders.0.transformer.x": torch.zeros(1),
                             "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no Stable Diffusion UNet"):
        parts_from_original({"model.diffusion_model.foo": torch.zeros(1)})


def test_a_converted_model_works_in_every_tool_and_trains_further(tmp_path, files):
    """`ldm sample`, `img2img`, `inpaint`, the Python API and the web demo's model run a converted checkpoint;
    `train.init_from` fine-tunes it (the issue's end-to-end item, on the tiny SD-1-shaped file)."""
    import numpy as np
    from PIL import Image

    from ldmkit.cli.main import main as ldm
    from ldmkit.config import to_dict
    from ldmkit.pipelines import load_pipeline
    from ldmkit.serve.model import ServedModel

    ckpt, config, vocab_dir = files
    model_dir = write_parts(_with_vocab(read_source(ckpt, config=config), vocab_dir), tmp_path / "model")
    fast = ["--steps", "2", "--sampler", "ddim", "--device", "cpu"]
    assert ldm(["sample", "--model", str(model_dir), "--prompt", "a cat", "--n", "2", *fast,
                "--out", str(tmp_path / "samples")]) == 0
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    image.save(tmp_path / "in.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert ldm(["img2img", "--model", str(model_dir), "--image", str(tmp_path / "in.png"), "--prompt", "a dog",
                *fast, "--out", str(tmp_path / "edits")]) == 0
    assert ldm(["inpaint", "--model", str(model_dir), "--image", str(tmp_path / "in.png"), "--mask",
                str(tmp_path / "mask.png"), "--prompt", "a dog", *fast, "--out", str(tmp_path / "fills")]) == 0
    filled = np.asarray(Image.open(tmp_path / "fills" / "0000.png").convert("RGB")).astype(int)
    assert np.abs(filled - np.asarray(image).astype(int))[mask == 0].max() <= 1  # the unmasked pixels are kept
    images = load_pipeline(model_dir, device="cpu")(prompt=["a cat", "a dog"], steps=2, sampler="dpm++2m",
                                                    output="tensor", progress=False)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    served = ServedModel.load(model_dir, device="cpu")
    assert {"generate", "img2img", "inpaint"} <= set(served.tasks)
    assert len(served.generate("a cat", steps=2, n=1)) == 1
    # Fine-tuning from the converted weights: its configs, its first stage, a few steps on captioned images.
    model = LatentDiffusionModel.load(model_dir)
    experiment = {"autoencoder": str(model_dir / "autoencoder"), "unet": to_dict(model.unet.config),
                  "schedule": to_dict(model.schedule.config), "conditioner": to_dict(model.conditioning),
                  "data": {"source": "synthetic", "resolution": 16, "synthetic": {"count": 8, "supersample": 1}},
                  "train": {"out": str(tmp_path / "tune"), "steps": 2, "batch_size": 2, "device": "cpu",
                            "progress": False, "image_every": 0, "init_from": str(model_dir), "trainable": "unet"}}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(experiment))
    assert ldm(["train", "diffusion", "--config", str(tmp_path / "tune.yaml")]) == 0
    tuned = LatentDiffusionModel.load(tmp_path / "tune" / "model")
    before, after = model.unet.state_dict(), tuned.unet.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
