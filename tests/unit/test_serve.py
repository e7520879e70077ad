"""The web demo (``ldm serve``): which tabs a model gets, the handlers behind them, the command's errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")

from ldmkit.cli.main import main
from ldmkit.errors import ConfigError
from ldmkit.serve import ServedModel, build_app
from ldmkit.serve.images import editor_layers, fit_box, fit_image
from tests.serve_models import SYNTHETIC_CLASSES, save_models

FAST = {"steps": 2, "sampler": "ddim"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return save_models(tmp_path_factory.mktemp("serve"))


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
    # perturbed-attention guidance needs no condition: the slider stays wherever there is self-attention
    assert models["uncond"].has_self_attention and "Perturbed-attention guidance" in _labels(demo)


def test_the_pag_slider_reaches_the_sampler(models):
    model = models["text"]
    assert model.has_self_attention and "Perturbed-attention guidance" in _labels(build_app(model))
    batches = []
    hook = model.pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        model.generate("a blue square", n=1, guidance=3.0, **FAST)
        plain, batches[:] = list(batches), []
        model.generate("a blue square", n=1, guidance=3.0, pag_scale=2.0, **FAST)
    finally:
        hook.remove()
    assert plain == [2, 2] and batches == [3, 3]  # [cond, uncond] and [cond, uncond, perturbed] per step
    with pytest.raises(ConfigError, match="pag_scale must be at least 0"):
        model.generate("a blue square", n=1, pag_scale=-1.0, **FAST)


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


# --- the app's event functions and widgets (as gradio calls them, without a browser) ---------------------------------

def _event(demo, api_name):
    [event] = [fn for fn in demo.fns.values() if fn.api_name == api_name]
    return event


def _widget(demo, elem_id):
    [component] = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == elem_id]
    return component


def _refusal(component, payload) -> str:
    """The message of the page's error toast when ``component`` is sent ``payload``."""
    with pytest.raises(gr.Error) as info:
        component.preprocess(payload)
    assert info.value.print_exception is False  # no traceback in the server log
    return info.value.message


def test_wired_generate_event_takes_values_by_name_and_shows_mistakes_as_one_line_errors(models, caplog):
    demo = build_app(models["text"])
    event = _event(demo, "generate")
    values = {name: component.value for name, component in zip(event.input_keyword_names, event.inputs)}
    values.update(prompt="a blue square", steps=2, n=2)
    images, caption = event.fn(**values)
    assert len(images) == 2 and images[0].size == (16, 16)
    assert caption == "**Generate**: 2 images of 16x16 px, seeds 0–1, dpm++2m with 2 steps"
    values["prompt"] = ""
    with caplog.at_level("WARNING", logger="ldmkit.serve"), pytest.raises(gr.Error) as info:
        event.fn(**values)
    assert info.value.message == "this is a text-conditional model: give a prompt"
    assert info.value.print_exception is False
    [record] = caplog.records
    assert record.getMessage() == "error: this is a text-conditional model: give a prompt" and record.exc_info is None


def test_api_parameters_are_named_like_the_handler_arguments(models):
    endpoints = build_app(models["text"]).get_api_info()["named_endpoints"]
    assert set(endpoints) == {"/generate", "/img2img", "/inpaint"}  # the upload checks stay private
    names = [parameter["parameter_name"] for parameter in endpoints["/generate"]["parameters"]]
    assert names == ["height", "width", "prompt", "negative_prompt", "sampler", "steps", "guidance", "pag_scale",
                     "seed", "n"]
    inpaint = [parameter["parameter_name"] for parameter in endpoints["/inpaint"]["parameters"]]
    assert inpaint[:3] == ["image", "mask", "resize"]
    assert all(endpoint["description"] for endpoint in endpoints.values())
    assert [value["label"] for value in endpoints["/generate"]["returns"]] == ["Images", "Caption"]


def test_numbers_outside_a_widgets_bounds_are_refused_in_one_line_naming_it(models):
    demo = build_app(models["text"])
    steps, seed, sampler = (_widget(demo, f"ldm-{name}") for name in ("steps", "seed", "sampler"))
    assert _refusal(steps, 100000) == "Steps must be a number from 1 to 200; got 100000"
    assert _refusal(seed, 2**70) == f"Seed must be a number from 0 to {2**53 - 1}; got {2**70}"
    assert _refusal(seed, float(2**70)) == f"Seed must be a number from 0 to {2**53 - 1}; got {2**70}"
    assert _refusal(seed, float("nan")).endswith("got nan")
    assert _refusal(seed, None).endswith("got None")
    assert _refusal(_widget(demo, "ldm-guidance"), True).endswith("got True")
    assert _refusal(sampler, "nope").startswith("Sampler: Value: nope is not in the list of choices")
    assert steps.preprocess(7) == 7 and seed.preprocess(5.0) == 5


def test_an_upload_that_is_not_an_image_is_refused_in_one_line(models, tmp_path):
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData, ImageData

    demo = build_app(models["text"])
    text = tmp_path / "photo.png"
    text.write_text("a text file, renamed\n")
    truncated = tmp_path / "truncated.png"
    _photo(16, 16).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    expected = ("Image: the uploaded file is not a readable image (not an image (unknown format)); "
                "upload a PNG or JPEG image")
    assert _refusal(_widget(demo, "ldm-img2img-image"), ImageData(path=str(text), orig_name="photo.png")) == expected
    broken = _refusal(_widget(demo, "ldm-img2img-image"), ImageData(path=str(truncated)))
    assert broken.startswith("Image: the uploaded file is not a readable image (") and "\n" not in broken
    editor = EditorData(background=FileData(path=str(text)), layers=[], composite=None)
    assert _refusal(_widget(demo, "ldm-inpaint-image"), editor).startswith("Image: paint the region to fill in: the "
                                                                          "uploaded file is not a readable image")
    semantic = build_app(models["semantic"])
    assert _refusal(_widget(semantic, "ldm-synthesize-segmentation-map"), FileData(path=str(text))).startswith(
        "Map PNG: the uploaded file is not a readable image")
    [check] = [fn for fn in demo.fns.values() if fn.inputs == [_widget(demo, "ldm-img2img-image")] and not fn.outputs]
    assert check.api_visibility == "private"  # checked on upload, before the button is pressed


def test_a_failed_request_leaves_the_gallery_as_it_was(models):
    demo = build_app(models["text"])
    for task in models["text"].tasks:
        event = _event(demo, task)
        gallery, caption = event.outputs
        assert isinstance(gallery, gr.Gallery) and caption.elem_id == "ldm-caption"
        assert event.show_progress_on == [caption]  # progress and the error mark go on the caption, not the images


def test_uploads_are_previewed_tall_with_small_images_scaled_up(models):
    from ldmkit.serve.app import CSS, PREVIEW_HEIGHT

    demo = build_app(models["text"])
    for elem_id in ("ldm-img2img-image", "ldm-inpaint-mask"):
        image = _widget(demo, elem_id)
        assert image.height == PREVIEW_HEIGHT and "ldm-preview" in image.elem_classes
    assert ".ldm-preview img" in CSS and "object-fit: contain" in CSS  # aspect kept


def test_the_brush_is_a_see_through_colour_sized_to_the_image(models):
    from PIL import ImageColor

    demo = build_app(models["text"])
    editor = _widget(demo, "ldm-inpaint-image")
    [colour] = editor.brush.colors
    red, green, blue = ImageColor.getrgb(colour.replace("rgba", "rgb").rsplit(",", 1)[0] + ")")
    alpha = float(colour.rsplit(",", 1)[1].rstrip(")"))
    assert 0 < alpha < 1 and max(red, green, blue) - min(red, green, blue) == 255  # saturated, not white or grey
    [fit] = [fn for fn in demo.fns.values() if fn.inputs == [editor] and fn.outputs == [editor]]
    for size, radius in (((64, 48), 4), ((512, 768), 43)):
        update = fit.fn({"background": Image.new("RGBA", size), "layers": [], "composite": None})
        assert update.brush.default_size == radius and update.eraser.default_size == radius
        assert update.brush.colors == [colour]


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

    from ldmkit.serve.app import CSS

    calls = []

    @functools.wraps(gr.Blocks.launch)  # keeps the signature the app reads its accepted arguments from
    def record(self, **kwargs):
        calls.append(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", record)
    assert main(["serve", "--model", str(model_dirs["class"]), "--device", "cpu", "--port", "7999"]) == 0
    [kwargs] = calls
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["server_port"] == 7999 and kwargs["share"] is False
    assert kwargs["css"] == CSS
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
