"""Pinned outputs: every sampler, every pipeline task, both autoencoders and a training step of each trainer,
on tiny seeded models, must keep giving these numbers.

A change that moves one of them changes what users get from the same seed; it must be deliberate and say so
in its commit. Each case reduces its output to a fingerprint — the mean, the mean absolute value and six
evenly spaced entries — compared within 2e-4 (float32 CPU kernels differ across CPUs far below that).
To re-pin after a deliberate change, the failure message prints the new fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldmkit import samplers
from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, load_autoencoder, save_autoencoder
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.conditioning.config import TextEncoderConfig
from ldmkit.config import load_config
from ldmkit.data import build_dataset, dataset_captions
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.pipelines import (
    ImageToImagePipeline,
    InpaintPipeline,
    SemanticSynthesisPipeline,
    UpscalePipeline,
    load_pipeline,
)
from ldmkit.model import LatentDiffusionModel
from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
from ldmkit.training.diffusion_task import DiffusionExperiment, DiffusionTask
from ldmkit.training.loop import train

TOLERANCE = 2e-4
FAST = {"steps": 4, "progress": False, "output": "tensor"}

PINNED: dict[str, list[float]] = {}  # name → fingerprint, at the end of the file


def fingerprint(x: torch.Tensor) -> list[float]:
    flat = x.detach().double().flatten()
    stride = max(1, flat.numel() // 6)
    return [flat.mean().item(), flat.abs().mean().item(), *flat[::stride][:6].tolist()]


def check(name: str, x: torch.Tensor) -> None:
    got = fingerprint(x)
    want = PINNED.get(name, [])
    assert len(got) == len(want) and all(abs(a - b) <= TOLERANCE for a, b in zip(got, want)), (
        f"PIN {name!r}: {[round(v, 6) for v in got]}")


# --- tiny seeded models --------------------------------------------------------------------------------------------

def tiny_first_stage(root: Path, kind: str = "kl") -> Path:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(kind=kind, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=3,
                            mid_attention=False, **({"codebook_size": 16} if kind == "vq" else {}))
    return save_autoencoder(root / f"ae-{kind}", build_autoencoder(cfg), cfg)


def jittered_unet(conditioner) -> UNet:
    """The tiny UNet of these tests for ``conditioner``'s routes, weights jittered (drawn from the global RNG after
    the conditioner, so the pins stay put) so that seeds, conditions and samplers all change the output."""
    cond = conditioner.config
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(2,), num_heads=2, vector_dim=cond.vector_dim,
                           context_dim=cond.context_dim, concat_channels=conditioner.concat_channels))
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return unet


def tiny_ldm(root: Path, name: str, cond: ConditionerConfig, autoencoder: Path, captions=None) -> Path:
    """An untrained LDM (KL f = 2 first stage, 16 px images, 8x8x3 latents) with weights jittered so seeds,
    conditions and samplers all change the output."""
    torch.manual_seed(1)
    conditioner = build_conditioner(cond, captions=captions)
    unet = jittered_unet(conditioner)
    model = LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                 autoencoder=load_autoencoder(autoencoder), latent_size=(8, 8),
                                 autoencoder_source=Path(autoencoder))
    return model.save(root / name)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pinned")
    ae = tiny_first_stage(root)
    latent = {"downsample_factor": 2, "latent_channels": 3}
    text = ConditionerConfig(kind="text", embed_dim=16, text=TextEncoderConfig(width=16, depth=1, heads=2))
    dirs = {
        "class": tiny_ldm(root, "class", ConditionerConfig(kind="class", num_classes=4, embed_dim=16), ae),
        "text": tiny_ldm(root, "text", text, ae, captions=["a red circle", "a blue square"]),
        "uncond": tiny_ldm(root, "uncond", ConditionerConfig(kind="none"), ae),
        "inpaint": tiny_ldm(root, "inpaint", ConditionerConfig(
            kind="class", num_classes=3, embed_dim=16, concat=ConcatConfig(kind="masked_image", **latent)), ae),
        "upscale": tiny_ldm(root, "upscale", ConditionerConfig(concat=ConcatConfig(
            kind="low_res", low_res_factor=2, **latent)), ae),
        "semantic": tiny_ldm(root, "semantic", ConditionerConfig(concat=ConcatConfig(
            kind="semantic", semantic_classes=3, downsample_factor=2)), ae),
    }
    return {name: load_pipeline(path, device="cpu", precision="fp32") for name, path in dirs.items()}


def photo(size: int = 16, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())


def square_mask(size: int = 16) -> Image.Image:
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[4:12, 4:12] = 255
    return Image.fromarray(mask.numpy())


# --- samplers and generation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", samplers.names())
def test_every_sampler_through_class_generation(models, sampler):
    check(f"class/{sampler}", models["class"](class_label=[0, 3], sampler=sampler, guidance=2.0, seed=5, **FAST))


def test_text_generation_with_a_negative_prompt_and_guidance_rescale(models):
    out = models["text"](["a red circle", "a blue square"], negative_prompt="a blue square", guidance=4.0,
                         guidance_rescale=0.7, seed=3, **FAST)
    check("text/rescale", out)


def test_unconditional_generation_and_ddim_eta(models):
    check("uncond/ddim-eta", models["uncond"](n=2, sampler="ddim", eta=0.5, seed=11, **FAST))


def test_seed_interpolation(models):
    check("class/interpolate", models["class"].interpolate(seeds=(0, 1), class_label=1, frames=3, steps=4,
                                                          progress=False, output="tensor"))


# --- image-conditioned tasks ---------------------------------------------------------------------------------------

def test_img2img(models):
    pipe = ImageToImagePipeline.from_pipeline(models["class"])
    check("img2img", pipe(photo(), class_label=2, strength=0.6, seed=2, **FAST))


def test_zero_shot_inpainting(models):
    pipe = InpaintPipeline.from_pipeline(models["class"])
    check("inpaint/zero-shot", pipe(photo(), square_mask(), class_label=1, seed=4, **FAST)[..., 4:12, 4:12])


def test_trained_inpainting(models):
    pipe = InpaintPipeline.from_pipeline(models["inpaint"])
    check("inpaint/trained", pipe(photo(), square_mask(), class_label=0, seed=4, **FAST)[..., 4:12, 4:12])


@pytest.mark.parametrize("tile", [None, 4])
def test_upscale_whole_and_tiled(models, tile):
    pipe = UpscalePipeline.from_pipeline(models["upscale"])
    check(f"upscale/tile-{tile}", pipe(photo(8, seed=1), seed=6, tile=tile, **FAST))


def test_semantic_synthesis(models):
    ids = torch.zeros(16, 24, dtype=torch.long)
    ids[:, 8:16], ids[:, 16:] = 1, 2
    pipe = SemanticSynthesisPipeline.from_pipeline(models["semantic"])
    check("semantic", pipe(ids, seed=8, **FAST))


# --- first stages ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_encode_and_decode(tmp_path, kind):
    from ldmkit.autoencoders import load_autoencoder

    autoencoder = load_autoencoder(tiny_first_stage(tmp_path, kind)).eval()
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = autoencoder.encode(pixels)
        check(f"{kind}/encode", latents)
        check(f"{kind}/decode", autoencoder.decode(latents))


# --- one training run of each trainer -------------------------------------------------------------------------------

TRAIN = ["data.resolution=16", "data.synthetic.count=8", "data.synthetic.supersample=1", "train.batch_size=4",
         "train.device=cpu", "train.progress=false", "train.image_every=0", "train.lr=1e-3", "train.steps=3"]


def weights_fingerprint(model_dir: Path, name: str) -> torch.Tensor:
    state = load_file(str(model_dir / f"{name}.safetensors"))
    return torch.cat([state[k].double().flatten() for k in sorted(state)])


def test_autoencoder_training_steps(tmp_path):
    experiment = load_config(AutoencoderExperiment, "synthetic-kl-f4", [
        *TRAIN, "model.base_channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1",
        "model.latent_channels=3", "model.mid_attention=false", "loss.perceptual_weight=0",
        "loss.disc_channels=8", "loss.disc_layers=2", "loss.disc_start=2", "scale_samples=4",
        f"train.out={tmp_path / 'run'}"], group="autoencoder")
    dataset = build_dataset(experiment.data, split="train")
    model = train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)
    check("train/autoencoder", weights_fingerprint(model, "model"))


def test_diffusion_training_steps(tmp_path):
    ae = tiny_first_stage(tmp_path)
    experiment = load_config(DiffusionExperiment, "synthetic-text", [
        *TRAIN, "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1",
        "unet.attention_resolutions=[2]", "unet.num_head_channels=8", "conditioner.embed_dim=16",
        "conditioner.text.width=16", "conditioner.text.depth=1", "conditioner.text.heads=2",
        "conditioner.text.max_length=8", "conditioner.drop_prob=0.3", "ema_decay=0.5",
        f"autoencoder={ae}", f"train.out={tmp_path / 'run'}"], group="diffusion")
    dataset = build_dataset(experiment.data, split="train")
    model = train(DiffusionTask(experiment, dataset, dataset_captions(dataset)), experiment.train, dataset,
                  experiment)
    check("train/diffusion", weights_fingerprint(model, "unet"))


PINNED.update({
    "class/ddim": [-0.129933, 0.29409, -0.271945, -0.415391, 0.224095, -0.063082, 0.000635, -0.04726],
    "class/ddpm": [-0.13107, 0.293958, -0.313114, -0.420525, 0.249011, -0.00473, -0.005053, -0.095576],
    "class/dpm++2m": [-0.129971, 0.294324, -0.264058, -0.422657, 0.2058, -0.063052, 0.009662, -0.047705],
    "class/dpm++2m-sde": [-0.131807, 0.294793, -0.277262, -0.424762, 0.215387, -0.001991, 0.010265, -0.099543],
    "class/dpm++3m": [-0.12999, 0.294307, -0.263782, -0.419428, 0.208187, -0.063276, 0.008082, -0.048005],
    "class/euler": [-0.129905, 0.293959, -0.275319, -0.412254, 0.231621, -0.063336, -0.003159, -0.047116],
    "class/euler-a": [-0.130759, 0.29428, -0.284098, -0.414912, 0.235766, -0.029595, -0.001315, -0.07598],
    "class/flow-heun": [-0.129978, 0.294324, -0.26517, -0.421351, 0.209294, -0.062868, 0.007758, -0.047775],
    "class/heun": [-0.129974, 0.294553, -0.25055, -0.430251, 0.179018, -0.063178, 0.021522, -0.049106],
    "class/lcm": [-0.131091, 0.294465, -0.327092, -0.421159, 0.261769, 0.001863, 0.000383, -0.093265],
    "class/interpolate": [-0.121753, 0.29177, -0.338375, 0.286153, -0.249728, 0.254085, -0.121473, 0.098291],
    "class/plms": [-0.129903, 0.294602, -0.253587, -0.441989, 0.174603, -0.061641, 0.024923, -0.047891],
    "class/unipc": [-0.129968, 0.29434, -0.263106, -0.423594, 0.20352, -0.063029, 0.010778, -0.04775],
    "img2img": [-0.118792, 0.261625, -0.153697, 0.406839, 0.296011, -0.333222, 0.080664, 0.202673],
    "inpaint/trained": [-0.157989, 0.356399, -0.731533, -0.448495, -0.455651, 0.129604, 0.429195, -0.522057],
    "inpaint/zero-shot": [-0.201649, 0.511108, -1.0, -1.0, 0.172145, 0.627634, 0.909442, -0.824647],
    "kl/decode": [-0.122957, 0.240581, -0.049357, 0.598712, 0.123726, 0.01224, 0.443913, 0.133988],
    "kl/encode": [-0.051275, 0.178307, 0.112967, -0.098146, 0.028423, 0.030708, -0.09017, -0.057071],
    "semantic": [-0.122598, 0.285602, 0.140321, -0.132782, -0.055469, 0.038984, -0.120198, -0.077689],
    "text/rescale": [-0.126165, 0.278568, -0.311543, -0.221179, -0.064622, 0.143679, -0.124841, -0.011617],
    "train/autoencoder": [0.007522, 0.033951, 0.137393, 0.027297, -0.001396, -0.032603, -0.097795, -0.000427],
    "train/diffusion": [0.004021, 0.047148, 0.024125, -0.06529, -0.005131, -0.038241, -0.034905, 0.063011],
    "uncond/ddim-eta": [-0.124501, 0.28876, -0.137694, -0.232312, -0.115875, 0.12144, 0.068291, -0.217366],
    "upscale/tile-4": [-0.137187, 0.278246, -0.147507, -0.520332, -0.086112, 0.003411, -0.140473, -0.277945],
    "upscale/tile-None": [-0.123086, 0.280382, -0.119572, -0.518683, -0.064237, -0.0115, -0.106549, -0.144139],
    "vq/decode": [0.027192, 0.239341, 0.218559, -0.654261, -0.29901, 0.215198, -0.613549, -0.292003],
    "vq/encode": [-0.07124, 0.182095, -0.334468, 0.105567, -0.101758, -0.219365, 0.021172, -0.160915],
})
