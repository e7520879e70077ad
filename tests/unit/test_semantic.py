"""Semantic synthesis (paper §4.3.2): maps of class ids read from PNGs, the one-hot map reaching the UNet on the
latent grid, convolutional sampling of larger maps, input validation, and `ldm train diffusion` → `ldm synthesize`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder
from ldmkit.cli.main import main as ldm
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.data.synthetic import segmentation_classes
from ldmkit.denoisers.unet import UNet
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import ConfigError, DataError
from ldmkit.model import LatentDiffusionModel
from ldmkit.pipelines import LatentDiffusionPipeline, SemanticSynthesisPipeline
from ldmkit.pipelines.semantic import map_to_tensor, save_map_png
from ldmkit.training.diffusion_task import DiffusionExperiment

K = 3  # classes of the in-memory model

# --- maps ----------------------------------------------------------------------------------------------------------


def _ids(height=16, width=16, seed=0, classes=K) -> torch.Tensor:
    """Class ids constant on 2×2 blocks (so the latent grid of f = 2 sees each block exactly)."""
    small = torch.randint(0, classes, (height // 2, width // 2), generator=torch.Generator().manual_seed(seed))
    return small.repeat_interleave(2, 0).repeat_interleave(2, 1)  # [H, W]


@pytest.mark.parametrize("palette", [True, False])
def test_map_png_round_trip(tmp_path, palette):
    ids = _ids(8, 12, classes=7)
    path = save_map_png(ids, tmp_path / "map.png", palette=palette)
    assert Image.open(path).mode == ("P" if palette else "L")
    assert torch.equal(map_to_tensor(path), ids)


def test_map_readers_accept_grey_images_and_refuse_colour_and_floats():
    ids = _ids(4, 6).numpy().astype(np.uint8)
    grey_rgb = Image.fromarray(np.stack([ids] * 3, axis=-1))
    assert torch.equal(map_to_tensor(grey_rgb), torch.from_numpy(ids).long())
    colour = np.stack([ids, ids, ids + 1], axis=-1)
    with pytest.raises(DataError, match="colour image"):
        map_to_tensor(Image.fromarray(colour))
    with pytest.raises(DataError, match="integer tensor"):
        map_to_tensor(torch.zeros(4, 4))
    with pytest.raises(DataError, match="0..255"):
        save_map_png(torch.full((2, 2), 300), "unused.png")


# --- the pipeline ----------------------------------------------------------------------------------------------------


def _model(concat: ConcatConfig) -> LatentDiffusionModel:
    torch.manual_seed(0)
    autoencoder = build_autoencoder(AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2),
                                                      num_res_blocks=1, latent_channels=3, mid_attention=False))
    conditioner = build_conditioner(ConditionerConfig(concat=concat)).eval()
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(2,), num_head_channels=8,
                           concat_channels=conditioner.concat_channels)).eval()
    with torch.no_grad():  # a fresh UNet is zero-initialised (returns 0 for any input): give it something to say
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                autoencoder=autoencoder.eval(), latent_size=(8, 8))


@pytest.fixture(scope="module")
def pipe() -> SemanticSynthesisPipeline:
    concat = ConcatConfig(kind="semantic", downsample_factor=2, latent_channels=3, semantic_classes=K)
    return SemanticSynthesisPipeline.from_pipeline(LatentDiffusionPipeline(_model(concat)))


FAST = {"steps": 2, "sampler": "ddim", "output": "tensor", "progress": False}


def _record(pipe, call):
    seen: list[torch.Tensor] = []
    handle = pipe.unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        out = call()
    finally:
        handle.remove()
    return out, seen


def test_the_map_reaches_the_unet_as_one_hot_on_the_latent_grid(pipe):
    ids = _ids()
    out, seen = _record(pipe, lambda: pipe(ids, n=2, seed=1, **FAST))
    assert out.shape == (2, 3, 16, 16)
    expected = F.one_hot(ids[::2, ::2], K).permute(2, 0, 1).float()  # [K, 8, 8]
    assert len(seen) == 2
    for x in seen:
        assert x.shape == (2, 3 + K, 8, 8)
        assert torch.equal(x[:, 3:], expected.expand(2, -1, -1, -1))
    assert not torch.equal(out[0], out[1])  # image i uses seed + i
    assert torch.equal(out, pipe(ids, n=2, seed=1, **FAST))
    other, seen_other = _record(pipe, lambda: pipe(_ids(seed=5), n=2, seed=1, **FAST))
    assert not torch.equal(seen_other[0][:, 3:], seen[0][:, 3:]) and not torch.equal(other, out)


def test_a_larger_map_gives_a_larger_image(pipe):
    ids = _ids(24, 32)
    out, seen = _record(pipe, lambda: pipe(ids, **FAST))
    assert out.shape == (1, 3, 24, 32) and seen[0].shape == (1, 3 + K, 12, 16)


@pytest.mark.parametrize("ids, message", [
    (torch.zeros(18, 16, dtype=torch.long), "multiples of 4"),
    (torch.full((16, 16), K), f"class id {K}, but this model knows classes 0..{K - 1}"),
    (torch.full((16, 16), -1), "class id -1"),
])
def test_bad_maps_are_one_line_errors(pipe, ids, message):
    with pytest.raises(DataError, match=message) as info:
        pipe(ids, **FAST)
    assert "\n" not in str(info.value)


def test_a_model_without_a_semantic_condition_is_refused():
    plain = LatentDiffusionPipeline(_model(ConcatConfig()))
    with pytest.raises(ConfigError, match="not 'semantic'"):
        SemanticSynthesisPipeline.from_pipeline(plain)


def test_preset_classes_match_the_synthetic_segmentation():
    experiment = load_config(DiffusionExperiment, "synthetic-semantic", group="diffusion")
    classes = segmentation_classes(experiment.data.synthetic)
    assert experiment.conditioner.concat.kind == "semantic"
    assert experiment.conditioner.concat.semantic_classes == len(classes)


# --- training and the command ----------------------------------------------------------------------------------------

SYNTHETIC = ["data.resolution=16", "data.synthetic.count=16", "data.synthetic.supersample=1",
             "data.synthetic.shapes=[circle, square]", "conditioner.concat.semantic_classes=3"]
TRAIN = ["train.device=cpu", "train.progress=false", "train.log_every=1", "train.batch_size=4",
         "train.checkpoint_every=0", "train.steps=2", "train.warmup_steps=0"]
TINY_UNET = ["unet.model_channels=16", "unet.channel_mult=[1, 2]", "unet.attention_resolutions=[2]",
             "unet.num_head_channels=8", "unet.num_res_blocks=1"]


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, make_first_stage, recording_diffusion_losses):
    """`ldm train diffusion --config synthetic-semantic` for 2 steps at 16², tiny f = 4 first stage."""
    autoencoder = make_first_stage((1, 1, 2))
    out = tmp_path_factory.mktemp("ldm-semantic")
    with recording_diffusion_losses() as losses:
        assert ldm(["train", "diffusion", "--config", "synthetic-semantic", f"autoencoder={autoencoder}",
                    f"train.out={out}", *SYNTHETIC, *TRAIN, *TINY_UNET]) == 0
    return out / "model", losses


@pytest.fixture(scope="module")
def scene_map(tmp_path_factory):
    """The segmentation of a synthetic scene written as a palette PNG."""
    experiment = load_config(DiffusionExperiment, "synthetic-semantic", SYNTHETIC, group="diffusion")
    seg = build_dataset(experiment.data, split="train")[0]["segmentation"]  # [16, 16]
    assert int(seg.max()) >= 1  # the scene has an object
    return save_map_png(seg, tmp_path_factory.mktemp("maps") / "scene.png"), seg


def test_training_runs_with_a_finite_loss(trained_model):
    model, losses = trained_model
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert SemanticSynthesisPipeline.load(model, device="cpu").num_classes == 3


def test_synthesize_command_writes_images_of_the_maps_size(tmp_path, trained_model, scene_map):
    model, _ = trained_model
    path, seg = scene_map
    out = tmp_path / "out"
    assert ldm(["synthesize", "--model", str(model), "--map", str(path), "--n", "2", "--steps", "2",
                "--device", "cpu", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png", "settings.json"]
    assert Image.open(out / "0001.png").size == (16, 16)
    large = save_map_png(seg.repeat(2, 3), tmp_path / "large.png")  # 32 × 48: beyond the training size
    assert ldm(["synthesize", "--model", str(model), "--map", str(large), "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "large")]) == 0
    assert Image.open(tmp_path / "large" / "0000.png").size == (48, 32)


@pytest.mark.parametrize("make, message", [
    (lambda seg: seg[:12], "multiples of 8"),
    (lambda seg: seg.clamp(max=0) + 5, "class id 5, but this model knows classes 0..2"),
])
def test_synthesize_command_bad_map_is_one_line(tmp_path, capsys, trained_model, scene_map, make, message):
    model, _ = trained_model
    path = save_map_png(make(scene_map[1]), tmp_path / "bad.png")
    code = ldm(["synthesize", "--model", str(model), "--map", str(path), "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
