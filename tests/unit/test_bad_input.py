"""Bad values are refused with one line naming the problem, wherever they come in (config overrides, command
flags, the Python API, the web demo, files on disk), and nothing the user had is damaged."""

import errno
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldmkit.autoencoders.build import build_autoencoder, load_autoencoder, save_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.cli.main import main as ldm
from ldmkit.conditioning import ConditionerConfig, build_conditioner
from ldmkit.config import MAX_SEED, apply_overrides, from_dict, option
from ldmkit.data.config import DataConfig
from ldmkit.data.folder import folder_dataset
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.errors import CheckpointError, ConfigError, DataError
from ldmkit.pipelines import ImageToImagePipeline, load_pipeline
from ldmkit.model import LatentDiffusionModel
from ldmkit.training.config import TrainConfig

FAST = {"steps": 1, "sampler": "ddim"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny untrained class-conditional LDM directory (identity first stage, 16x16)."""
    root = tmp_path_factory.mktemp("models")
    ae_cfg = AutoencoderConfig(kind="identity")
    save_autoencoder(root / "ae", build_autoencoder(ae_cfg), ae_cfg)
    torch.manual_seed(0)
    cond_cfg = ConditionerConfig(kind="class", num_classes=3, embed_dim=16)
    conditioner = build_conditioner(cond_cfg)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2, vector_dim=cond_cfg.vector_dim))
    model = LatentDiffusionModel(unet=unet, schedule=NoiseSchedule(ScheduleConfig()), conditioner=conditioner,
                                 autoencoder=load_autoencoder(root / "ae"), latent_size=(16, 16),
                                 autoencoder_source=Path(root / "ae"))
    return model.save(root / "model")


@pytest.fixture(scope="module")
def pipe(model_dir):
    return load_pipeline(model_dir, device="cpu")


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


# ----- non-finite numbers -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", "1e999"])
def test_config_floats_refuse_nan_and_inf(value):
    with pytest.raises(ConfigError, match=r"config key 'lr': got .*, expected a finite number"):
        from_dict(TrainConfig, apply_overrides({}, [f"lr={value}"]))


def test_a_float_field_may_allow_non_finite_values_explicitly():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Limits:
        ceiling: float = option(math.inf, help="no ceiling by default", allow_nonfinite=True)
        floor: float = option(0.0, help="a finite floor")

    assert from_dict(Limits, {"ceiling": "inf"}).ceiling == math.inf
    with pytest.raises(ConfigError, match="'floor'"):
        from_dict(Limits, {"floor": float("nan")})


def test_train_lr_nan_is_one_line_and_starts_no_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = ldm(["train", "autoencoder", "--config", "synthetic-kl-f4", "train.lr=nan", f"train.out={out}"])
    assert "config key 'train.lr'" in _one_line_error(capsys, code)
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--guidance", "nan"), ("--guidance", "inf"), ("--eta", "nan"),
                                         ("--guidance-rescale", "nan")])
def test_sample_float_flags_refuse_nan_and_inf(tmp_path, capsys, model_dir, flag, value):
    out = tmp_path / "o"
    code = ldm(["sample", "--model", str(model_dir), "--class", "1", "--steps", "1", "--device", "cpu",
                "--out", str(out), flag, value])
    assert "must be a finite number" in _one_line_error(capsys, code)
    assert not (out / "settings.json").exists()


def test_sample_guidance_interval_is_checked_recorded_and_reaches_the_sampler(tmp_path, capsys, model_dir, pipe):
    base = ["sample", "--model", str(model_dir), "--class", "1", "--steps", "2", "--device", "cpu", "--guidance", "2"]
    code = ldm([*base, "--out", str(tmp_path / "a"), "--guidance-interval", "0.5", "nan"])
    assert "must be a finite number" in _one_line_error(capsys, code)
    code = ldm([*base, "--out", str(tmp_path / "b"), "--guidance-interval", "2", "1"])
    assert "σ_lo < σ_hi" in _one_line_error(capsys, code)
    assert ldm([*base, "--out", str(tmp_path / "c"), "--guidance-interval", "0.5", "5"]) == 0
    assert json.loads((tmp_path / "c" / "settings.json").read_text())["guidance_interval"] == [0.5, 5.0]
    # through the pipeline: an interval above every level guides nowhere, one conditional pass per step
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        kwargs = dict(class_label=[1, 2], steps=3, sampler="ddim", guidance=2.0, output="tensor", progress=False)
        pipe(**kwargs)
        guided, batches[:] = list(batches), []
        pipe(guidance_interval=(1e6, 2e6), **kwargs)
    finally:
        hook.remove()
    assert guided == [4, 4, 4] and batches == [2, 2, 2]


def test_sample_projected_guidance_is_checked_and_recorded(tmp_path, capsys, model_dir):
    base = ["sample", "--model", str(model_dir), "--class", "1", "--steps", "1", "--device", "cpu"]
    code = ldm([*base, "--out", str(tmp_path / "a"), "--guidance-parallel", "-1"])
    assert "guidance_parallel must be at least 0" in _one_line_error(capsys, code)
    assert ldm([*base, "--out", str(tmp_path / "b"), "--guidance-parallel", "0", "--guidance-norm-threshold", "2",
                "--guidance-momentum", "-0.5"]) == 0
    settings = json.loads((tmp_path / "b" / "settings.json").read_text())
    assert settings["guidance_parallel"] == 0.0 and settings["guidance_norm_threshold"] == 2.0
    assert settings["guidance_momentum"] == -0.5


def test_sample_pag_on_layers_without_self_attention_is_one_line(tmp_path, capsys, model_dir):
    base = ["sample", "--model", str(model_dir), "--class", "1", "--steps", "1", "--device", "cpu"]
    code = ldm([*base, "--out", str(tmp_path / "a"), "--pag-scale", "2", "--pag-layers", "up"])  # attention: middle
    assert "'up' names no self-attention layer" in _one_line_error(capsys, code)
    code = ldm([*base, "--out", str(tmp_path / "b"), "--pag-scale", "-1"])
    assert "pag_scale must be at least 0" in _one_line_error(capsys, code)
    assert not (tmp_path / "a" / "settings.json").exists()


def test_img2img_strength_nan_is_refused(tmp_path, capsys, model_dir):
    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(image)
    code = ldm(["img2img", "--model", str(model_dir), "--image", str(image), "--class", "1", "--strength", "nan",
                "--device", "cpu", "--out", str(tmp_path / "o")])
    assert "strength must be in (0, 1]" in _one_line_error(capsys, code)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_scale_factor_is_refused_when_the_autoencoder_is_loaded(tmp_path, value):
    cfg = AutoencoderConfig(kind="identity")
    path = save_autoencoder(tmp_path / "ae", build_autoencoder(cfg), cfg)
    record = json.loads((path / "config.json").read_text())
    record["config"]["scale_factor"] = value
    (path / "config.json").write_text(json.dumps(record))  # json writes a bare NaN / Infinity
    with pytest.raises(CheckpointError, match=r"scale_factor.*finite number"):
        load_autoencoder(path)


# ----- counts and seeds ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "number of images (n) must be a whole number of at least 1; got 0"),
    (["--n", "-3"], "got -3"),
    (["--batch-size", "0"], "batch size must be a whole number of at least 1; got 0"),
    (["--seed", str(2**70)], f"seed must be a whole number in 0..{MAX_SEED}"),
    (["--seed", str(MAX_SEED), "--n", "2"], "and seed + 1 for the last image"),
    (["--seed", "-1"], "got -1"),
    (["--steps", "100000000"], "steps must be at most 10000"),
])
def test_sample_counts_and_seeds_are_checked(tmp_path, capsys, model_dir, args, message):
    code = ldm(["sample", "--model", str(model_dir), "--class", "1", "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "o"), *args])
    assert message in _one_line_error(capsys, code)


@pytest.mark.parametrize("args, message", [
    (["encode", "--autoencoder", "ae", "--out", "o", "--batch-size", "0"], "--batch-size must be a whole number"),
    (["encode", "--autoencoder", "ae", "--out", "o", "--num-workers", "-1"], "--num-workers must be"),
    (["eval", "stats", "--data", "synthetic", "--out", "s.npz", "--batch-size", "0"], "--batch-size must be"),
    (["eval", "images", "folder", "--limit", "0"], "--limit must be"),
    (["eval", "generation", "--model", "m", "--reference", "r", "--n", "0"], "--n must be"),
    (["eval", "reconstruction", "--autoencoder", "ae", "--data", "synthetic", "--out", "o", "--examples", "-1"],
     "--examples must be"),
    (["data", "preview", "synthetic", "--count", "-1"], "--count must be"),
    (["data", "preview", "synthetic", "--cell", "100000"], "--cell must be at most 1024"),
])
def test_count_flags_of_other_commands_are_checked_first(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert message in _one_line_error(capsys, ldm(args))
    assert list(tmp_path.iterdir()) == []


def test_interpolation_frames_must_be_at_least_one(pipe):
    with pytest.raises(ConfigError, match="frames must be"):
        pipe.interpolate(class_label=1, frames=0, **FAST)


def test_task_pipelines_check_counts_and_seeds(pipe):
    img2img = ImageToImagePipeline.from_pipeline(pipe)
    image = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="number of images"):
        img2img(image, class_label=1, n=0, **FAST)
    with pytest.raises(ConfigError, match="seed must be"):
        img2img(image, class_label=1, seed=2**70, **FAST)
    with pytest.raises(ConfigError, match="eta must be a finite number"):
        img2img(image, class_label=1, eta=float("nan"), **FAST)


def test_the_web_demo_refuses_a_huge_seed(model_dir):
    pytest.importorskip("gradio")
    from ldmkit.serve import ServedModel

    served = ServedModel.load(model_dir, device="cpu")
    with pytest.raises(ConfigError, match="seed must be a whole number"):
        served.generate(class_label=1, seed=2**70, n=1, **FAST)


# ----- manifests and caption files ------------------------------------------------------------------------
def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png"):
        _png(root / name)
    return root


def _manifest_cfg(root, name="manifest.csv"):
    return DataConfig(source="folder", path=str(root), label_source="manifest", manifest=name, val_fraction=0.0)


def test_a_manifest_with_a_byte_order_mark_reads_as_without(images):
    (images / "manifest.csv").write_bytes("\ufefffile,label,caption\na.png,cat,one\nb.png,dog,two\n".encode())
    dataset = folder_dataset(_manifest_cfg(images))
    assert dataset.class_names == ["cat", "dog"] and dataset.caption(0) == "one"
    (images / "manifest.jsonl").write_bytes('\ufeff{"file": "a.png", "label": 0}\n'.encode())
    assert len(folder_dataset(_manifest_cfg(images, "manifest.jsonl"))) == 1


@pytest.mark.parametrize("text, line", [
    ('file,label,caption\na.png,0,"a cat\nb.png,1,dog\nc.png,2,"two" words\n', 2),
    ('file,label,caption\na.png,0,one\nb.png,1,"never closed\nc.png,2,three\n', 3),
])
def test_an_unterminated_quote_names_its_line(images, text, line):
    (images / "manifest.csv").write_text(text)
    with pytest.raises(DataError, match=rf"manifest .* line {line}: .* close the quote"):
        folder_dataset(_manifest_cfg(images))


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "sub/../../outside.png"])
def test_manifest_paths_must_stay_inside_the_data_folder(images, name):
    _png(images.parent / "outside.png")
    (images / "manifest.csv").write_text(f"file,label\na.png,0\n{name},1\n")
    with pytest.raises(DataError, match=r"row 2: file .* is outside the data folder"):
        folder_dataset(_manifest_cfg(images))


def test_a_caption_file_that_is_not_utf8_is_named(images):
    (images / "a.txt").write_bytes("caf\xe9".encode("latin-1"))
    cfg = DataConfig(source="folder", path=str(images), label_source="none", val_fraction=0.0)
    with pytest.raises(DataError, match=r"caption file .*a\.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        folder_dataset(cfg)
    (images / "a.txt").write_bytes("\ufeffcafé".encode())
    assert folder_dataset(cfg).caption(0) == "café"


def test_data_check_reports_a_non_utf8_caption_in_one_line(images, capsys):
    (images / "b.txt").write_bytes(b"\xff\xfe")
    err = _one_line_error(capsys, ldm(["data", "check", str(images)]))
    assert "b.txt is not UTF-8 text" in err


# ----- paths ----------------------------------------------------------------------------------------------
def test_model_pointing_at_a_file_says_it_is_a_file(tmp_path, capsys, model_dir):
    err = _one_line_error(capsys, ldm(["sample", "--model", str(model_dir / "config.json"), "--class", "1"]))
    assert "is a file, not a model directory; give its folder" in err


def test_ldmkit_home_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("LDMKIT_HOME", str(home))
    for args in (["assets", "fetch", "fashion-mnist"], ["assets", "path", "fashion-mnist"]):
        assert "is a file, not a directory" in _one_line_error(capsys, ldm(args))
    assert home.read_text() == "not a folder"
    from ldmkit.data.loader import build_dataset

    with pytest.raises(ConfigError, match="is a file, not a directory"):
        build_dataset(DataConfig(source="fashion_mnist"))


def test_ldmkit_home_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    from ldmkit.assets import store

    monkeypatch.setenv("LDMKIT_HOME", str(tmp_path / "home"))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(store.tempfile, "TemporaryFile", read_only)
    err = _one_line_error(capsys, ldm(["assets", "fetch", "fashion-mnist"]))
    assert "cannot write to LDMKIT_HOME=" in err and "Read-only file system" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder; the monkeypatched test covers it")
def test_ldmkit_home_without_write_permission_is_one_line(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    monkeypatch.setenv("LDMKIT_HOME", str(home))
    try:
        assert "cannot write to LDMKIT_HOME=" in _one_line_error(capsys, ldm(["assets", "fetch", "fashion-mnist"]))
    finally:
        home.chmod(0o700)
        shutil.rmtree(home)
