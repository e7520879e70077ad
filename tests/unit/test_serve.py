"""The web demo (``ldm serve``): which tabs a model gets, the handlers behind them, the command's errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")

from ldmkit.autoencoders.build import build_autoencoder, save_autoencoder
from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.conditioning import ConcatConfig, ConditionerConfig, build_conditioner
from ldmkit.conditioning.config import TextEncoderConfig
from ldmkit.config import to_dict
from ldmkit.data.config import DataConfig
from ldmkit.denoisers import UNet, UNetConfig
from ldmkit.diffusion.schedules import ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.pipelines.model_dir import save_ldm
from ldmkit.serve import ServedModel, build_app
from ldmkit.serve.images import editor_layers, fit_box, fit_image

FAST = {"steps": 2, "sampler": "ddim"}
SYNTHETIC_CLASSES = 16  # shapes × colours of the default synthetic data set


def _save_model(root, name, cond_cfg, captions=None, experiment=None):
    """A tiny untrained LDM directory (identity first stage, 16x16) like `ldm train diffusion` writes."""
    torch.manual_seed(0)
    conditioner = build_conditioner(cond_cfg, captions=captions)
    unet = UNet(UNetConfig(in_channels=3, out_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), num_heads=2, vector_dim=cond_cfg.vector_dim,
                           context_dim=cond_cfg.context_dim, concat_channels=conditioner.concat_channels))
    with torch.no_grad():  # a fresh UNet outputs zeros: give it something to say so seeds matter
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return save_ldm(root / name / "model", unet=unet, unet_config=unet.config, schedule_config=ScheduleConfig(),
                    conditioner=conditioner, autoencoder_dir=root / "ae", latent_size=(16, 16),
                    experiment=experiment)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    ae_cfg = AutoencoderConfig(kind="identity")
    save_autoencoder(root / "ae", build_autoencoder(ae_cfg), ae_cfg)
    text = ConditionerConfig(kind="text", embed_dim=16, text=TextEncoderConfig(width=16, depth=1, heads=2))
    synthetic = {"data": to_dict(DataConfig(source="synthetic"))}
    return {
        "text": _save_model(root, "text", text, captions=["a red circle", "a blue square"]),
        "class": _save_model(root, "class", ConditionerConfig(kind="class", num_classes=SYNTHETIC_CLASSES,
                                                              embed_dim=16), experiment=synthetic),
        "uncond": _save_model(root, "uncond", ConditionerConfig(kind="none")),
        "inpaint": _save_model(root, "inpaint", ConditionerConfig(
            kind="class", num_classes=3, embed_dim=16, drop_prob=0.0,
            concat=ConcatConfig(kind="masked_image", downsample_factor=1, latent_channels=3))),
        "upscale": _save_model(root, "upscale", ConditionerConfig(concat=ConcatConfig(
            kind="low_res", downsample_factor=1, latent_channels=3, low_res_factor=2))),
        "semantic": _save_model(root, "semantic", ConditionerConfig(concat=ConcatConfig(
            kind="semantic", downsample_factor=1, semantic_classes=5)), experiment=synthetic),
    }


@pytest.fixture(scope="module")
def models(model_dirs):
    return {name: ServedModel.load(path, device="cpu") for name, path in model_dirs.items()}


def _tabs(demo) -> list[str]:
    return [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]


def _labels(demo) -> set[str]:
    return {getattr(block, "label", None) for block in demo.blocks.values()} - {None}


def _photo(width=20, height=24, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- which tabs and widgets a model gets ------------------------------------------------------------------------------

def test_text_model_gets_generation_img2img_inpaint_and_a_prompt(models):
    demo = build_app(models["text"])
    assert _tabs(demo) == ["Generate", "Image to image", "Inpaint"]
    labels = _labels(demo)
    assert {"Prompt", "Negative prompt", "Guidance scale", "Sampler", "Steps", "Seed", "Number of images"} <= labels
    assert "Class" not in labels
    assert demo.analytics_enabled is False


def test_class_model_gets_a_dropdown_of_its_class_names(models):
    model = models["class"]
    assert model.class_names[:2] == ["red circle", "green circle"] and len(model.class_names) == SYNTHETIC_CLASSES
    demo = build_app(model)
    assert _tabs(demo) == ["Generate", "Image to image", "Inpaint"]
    [dropdown] = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Class"]
    assert dropdown.choices[1] == ("1: green circle", 1) and len(dropdown.choices) == SYNTHETIC_CLASSES
    assert "Prompt" not in _labels(demo)


def test_inpainting_model_gets_only_the_inpaint_tab_and_no_guidance_without_a_trained_null(models):
    demo = build_app(models["inpaint"])
    assert _tabs(demo) == ["Inpaint"]
    assert "Guidance scale" not in _labels(demo) and not models["inpaint"].has_guidance
    assert models["inpaint"].class_names == ["class 0", "class 1", "class 2"]  # no data config: numbered


def test_unconditional_model_has_no_condition_widgets(models):
    demo = build_app(models["uncond"])
    assert _tabs(demo) == ["Generate", "Image to image", "Inpaint"]
    assert not {"Prompt", "Class", "Guidance scale"} & _labels(demo)


def test_super_resolution_and_semantic_models_get_their_one_tab(models):
    assert _tabs(build_app(models["upscale"])) == ["Upscale"]
    semantic = build_app(models["semantic"])
    assert _tabs(semantic) == ["Semantic synthesis"]
    assert models["semantic"].map_class_names == ["background", "circle", "square", "triangle", "star"]
    with pytest.raises(ConfigError, match="does not do 'generate'"):
        models["semantic"].pipeline("generate")


# --- handlers ---------------------------------------------------------------------------------------------------------

def test_generate_gives_n_images_of_the_model_size_and_repeats_per_seed(models):
    model = models["text"]
    steps = []
    first = model.generate("a red circle", n=3, seed=5, progress=lambda f, text: steps.append(f), **FAST)
    assert len(first) == 3 and all(image.size == (16, 16) for image in first)
    assert steps == [0.5, 1.0]  # one report per sampler step, ending at 1
    again = model.generate("a red circle", n=3, seed=5, **FAST)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    other = model.generate("a red circle", n=1, seed=6, **FAST)
    assert not np.array_equal(np.asarray(other[0]), np.asarray(first[0]))
    assert model.generate("a red circle", n=1, height=24, width=32, **FAST)[0].size == (32, 24)


def test_generate_errors_are_one_line(models):
    with pytest.raises(ConfigError, match="give a prompt"):
        models["text"].generate("  ", n=1, **FAST)
    with pytest.raises(ConfigError, match="out of range"):
        models["class"].generate(class_label=99, n=1, **FAST)
    with pytest.raises(ConfigError, match="number of images"):
        models["class"].generate(class_label=1, n=0, **FAST)


def test_class_generate_and_img2img_fit_the_upload(models):
    model = models["class"]
    assert len(model.generate(class_label=2, n=2, **FAST)) == 2
    images = model.img2img(_photo(20, 24), class_label=2, strength=0.5, n=2, **FAST)
    assert len(images) == 2 and images[0].size == (16, 18)  # shorter side → 16, then 24·16/20 ≈ 19 → 18 (× 2)
    kept = model.img2img(_photo(20, 24), class_label=2, strength=0.5, n=1, resize=False, **FAST)
    assert kept[0].size == (20, 24)


def test_inpaint_from_an_editor_keeps_unpainted_pixels(models):
    model = models["uncond"]
    photo = _photo(16, 16)
    layer = np.zeros((16, 16, 4), dtype=np.uint8)
    layer[4:10, 6:12] = (255, 255, 255, 128)  # half-transparent brush strokes count as painted
    value = {"background": photo.convert("RGBA"), "layers": [Image.fromarray(layer)], "composite": None}
    images = model.inpaint(value, n=2, seed=1, **FAST)
    assert len(images) == 2
    out, original = np.asarray(images[0]), np.asarray(photo)
    keep = np.ones((16, 16), dtype=bool)
    keep[4:10, 6:12] = False
    assert np.array_equal(out[keep], original[keep]) and not np.array_equal(out[~keep], original[~keep])
    with pytest.raises(ConfigError, match="paint over the region"):
        model.inpaint({"background": photo, "layers": [], "composite": None}, n=1, **FAST)


def test_trained_inpainting_takes_an_uploaded_mask(models):
    mask = Image.new("L", (16, 16))
    mask.paste(255, (0, 0, 8, 16))
    photo = _photo(16, 16, seed=3)
    images = models["inpaint"].inpaint(photo, mask, class_label=1, n=1, **FAST)
    assert np.array_equal(np.asarray(images[0])[:, 8:], np.asarray(photo)[:, 8:])
    with pytest.raises(ConfigError, match="mask is 8x8"):
        models["inpaint"].inpaint(photo, Image.new("L", (8, 8)), class_label=1, n=1, **FAST)


def test_upscale_gives_factor_times_the_input(models):
    images = models["upscale"].upscale(_photo(8, 6), n=2, **FAST)
    assert len(images) == 2 and images[0].size == (16, 12)
    assert models["upscale"].upscale(_photo(9, 6), n=1, tiled=True, **FAST)[0].size == (18, 12)


def test_synthesize_follows_the_map_png(models, tmp_path):
    from ldmkit.pipelines.semantic import save_map_png

    ids = torch.zeros(20, 17, dtype=torch.long)
    ids[5:15, 3:10] = 2
    path = save_map_png(ids, tmp_path / "map.png")
    first = models["semantic"].synthesize(str(path), n=2, seed=4, **FAST)
    assert len(first) == 2 and first[0].size == (16, 20)  # the map's size, cropped to a multiple of 2
    again = models["semantic"].synthesize(str(path), n=2, seed=4, **FAST)
    assert np.array_equal(np.asarray(first[1]), np.asarray(again[1]))
    with pytest.raises(ConfigError, match="upload a map"):
        models["semantic"].synthesize(None, n=1, **FAST)


def test_editor_and_fitting_helpers():
    image, mask = editor_layers({"background": _photo(8, 8), "layers": [], "composite": None})
    assert image.size == (8, 8) and mask is None
    assert fit_box((20, 24), 16, 4) == ((16, 19), (0, 1, 16, 17))
    assert fit_image(_photo(20, 24), fit_box((20, 24), None, 8)).size == (16, 24)


# --- the app's event functions (as gradio calls them, without a browser) ----------------------------------------------

def test_wired_generate_event_returns_images_and_shows_mistakes_as_gradio_errors(models):
    demo = build_app(models["text"])
    [event] = [fn for fn in demo.fns.values() if fn.api_name == "generate"]
    widgets = {component.label: component for component in event.inputs}
    values = {component: component.value for component in event.inputs}
    values.update({widgets["Prompt"]: "a blue square", widgets["Steps"]: 2, widgets["Number of images"]: 2})
    images = event.fn(values)
    assert len(images) == 2 and images[0].size == (16, 16)
    values[widgets["Prompt"]] = ""
    with pytest.raises(gr.Error, match="give a prompt"):
        event.fn(values)


# --- the command ------------------------------------------------------------------------------------------------------

def test_serve_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--share" in out and "--port" in out


def test_missing_model_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: model directory {tmp_path / 'nope'} does not exist"


def test_without_gradio_the_error_names_the_extra(model_dirs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["serve", "--model", str(model_dirs["text"]), "--device", "cpu"]) == 2
    assert 'pip install "ldmkit[ui]"' in capsys.readouterr().err


def test_serve_launches_locally_without_a_share_link(model_dirs, monkeypatch, capsys):
    import functools

    calls = []

    @functools.wraps(gr.Blocks.launch)  # keeps the signature the app reads its accepted arguments from
    def record(self, **kwargs):
        calls.append(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", record)
    assert main(["serve", "--model", str(model_dirs["class"]), "--device", "cpu", "--port", "7999"]) == 0
    [kwargs] = calls
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7999 and kwargs["share"] is False
    assert "class: class-conditional (16 classes)" in capsys.readouterr().out


def test_a_taken_port_is_a_one_line_error(models):
    import socket

    from ldmkit.serve.app import launch_app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}"):
            launch_app(build_app(models["uncond"]), port=port)


def test_gradio_is_not_imported_by_the_library_or_the_command_parser():
    code = ("import sys, ldmkit, ldmkit.serve; from ldmkit.cli.main import build_parser; build_parser(); "
            "assert 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
