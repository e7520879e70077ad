"""The gradio app of one model: a tab per task the model supports, shared condition and sampler controls.

Only the widgets the model can use are built: a prompt (and negative prompt) for text models, a class
dropdown with the class names for class models, nothing for unconditional ones; the guidance slider only
where the condition was dropped in training (classifier-free guidance, paper §3.3 / Ho & Salimans 2022).
The handlers are :class:`~ldmkit.serve.model.ServedModel`'s methods; this file only wires them.

Every widget refuses a bad value (a number past its bounds, an upload that is not an image, a value gradio
itself refuses) and every handler a user mistake (:class:`~ldmkit.errors.LdmkitError`) the same way: one
line in the page (an error toast) and one line in the server log, no traceback. The gallery keeps the last
results when a request fails: progress and errors show on the caption line above it.

Each tab's button is also an API endpoint (``/generate``, ``/img2img``, …) whose parameters are named like
the handler's arguments (``prompt``, ``steps``, ``seed``, …), so "Use via API" and gradio clients read them.

gradio is imported here and only here, when the app is built, with its analytics off: the app contacts
nothing on the internet (no telemetry, no version check, no share link unless asked for).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Callable
from typing import Any

from ldmkit.errors import ConfigError, LdmkitError
from ldmkit.serve.checks import MAX_SEED, number_problem, upload_problem
from ldmkit.serve.model import MAX_IMAGES, MAX_STEPS, TASK_LABELS, ServedModel

log = logging.getLogger("ldmkit.serve")

MIN_GRADIO = (6, 28)  # events that pass widget values by parameter name (inputs_kwargs)
PREVIEW_HEIGHT = 320  # px: uploads, the mask and the painting canvas are shown this tall
# Magenta at 60 % opacity: visible on white, black and photographs alike, and the image stays visible under it.
BRUSH_COLOR = "rgba(255, 0, 255, 0.6)"
BRUSH_FRACTION = 1 / 12  # brush radius as a fraction of the image's shorter side
# Small uploads (these models train at 16-64 px) are scaled up to the preview's height, pixels kept sharp.
CSS = """
.ldm-preview img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""
API_DESCRIPTIONS = {
    "generate": "Images from the model's condition (a prompt, a class or nothing) at the given size.",
    "img2img": "Redrawings of an image (SDEdit): small strength stays close to it, 1 starts from noise.",
    "inpaint": "Fillings of the painted (or masked: white = fill in) region of an image; the rest is kept.",
    "upscale": "The image at the model's upscaling factor times its size (super-resolution).",
    "synthesize": "Images laid out like a map PNG of class ids (semantic synthesis).",
}


def import_gradio() -> Any:
    """The gradio module, imported with telemetry off; a one-line error naming the extra when missing or old."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports, no version check on launch
    try:
        import gradio
    except ImportError:
        raise ConfigError('the web demo needs gradio: pip install "ldmkit[ui]"') from None
    found = tuple(int(part) for part in gradio.__version__.split(".")[:2] if part.isdigit())
    if found < MIN_GRADIO:
        raise ConfigError(f"the web demo needs gradio {'.'.join(map(str, MIN_GRADIO))} or newer (found "
                          f'{gradio.__version__}): pip install -U "ldmkit[ui]"')
    return gradio


def user_error(gr: Any, message: str) -> Exception:
    """The page's one-line error toast for ``message``, logged as one line (no traceback) in the server log."""
    log.warning("error: %s", message)
    return gr.Error(html.escape(message, quote=False), print_exception=False)  # the toast renders HTML


def _problem(gr: Any, component: Any, payload: Any) -> str | None:
    """Why ``payload`` is no value for ``component``; None leaves the judgement to gradio's own ``preprocess``."""
    if isinstance(component, (gr.Slider, gr.Number)):
        return number_problem(component.label, payload, component.minimum, component.maximum)
    if isinstance(component, (gr.Image, gr.ImageEditor, gr.File)):
        return upload_problem(component.label, payload)
    return None


def _guard(gr: Any, component: Any) -> Any:
    """``component`` refusing bad values (``preprocess`` raises :func:`user_error`) in one line naming it."""
    accept = component.preprocess

    def preprocess(payload: Any) -> Any:
        refusal = _problem(gr, component, payload)
        if refusal is None:
            try:
                return accept(payload)
            except gr.Error as exc:  # gradio's own refusals, e.g. a value not among a dropdown's choices
                refusal = f"{component.label}: {exc.message}"
        raise user_error(gr, refusal) from None

    component.preprocess = preprocess
    return component


def _named(gr: Any, widgets: dict[str, Any], prefix: str = "ldm") -> dict[str, Any]:
    """``widgets`` (handler argument → component), each guarded and with a stable element id for pages and tests.

    An image or file upload is checked as soon as it arrives, so a file that is not an image is refused then
    and not only when the tab's button is pressed.
    """
    for name, component in widgets.items():
        component.elem_id = f"{prefix}-{name}".replace("_", "-")
        _guard(gr, component)
        if isinstance(component, (gr.Image, gr.File)):
            component.upload(_accepted, inputs=component, concurrency_limit=None,
                             api_visibility="private")
    return widgets


def _accepted(value: Any) -> None:
    """An upload event's function: nothing left to do once the widget's guarded ``preprocess`` took the file."""


def _caption(task: str, values: dict[str, Any], images: list) -> str:
    """What the gallery shows: which task, how many images of what size, seeds and sampler."""
    seed, count = int(values["seed"]), len(images)
    seeds = f"seed {seed}" if count == 1 else f"seeds {seed}–{seed + count - 1}"
    width, height = images[0].size
    return (f"**{TASK_LABELS[task]}**: {count} image{'s' * (count > 1)} of {width}x{height} px, {seeds}, "
            f"{values['sampler']} with {int(values['steps'])} steps")


def _runner(gr: Any, task: str, handler: Callable[..., list],
            use_loras: Callable[..., None] | None = None) -> Callable[..., tuple[list, str]]:
    """The event function of ``task``: widget values by name → (images for the gallery, their caption)."""
    def run(progress=gr.Progress(), **values: Any) -> tuple[list, str]:  # noqa: B008 (gradio's way to ask for progress)
        try:
            if use_loras is not None:  # the checked adapters, loaded before the task runs
                use_loras(values.pop("loras", None) or [], values.pop("lora_scale", 1.0))
            images = handler(**values, progress=lambda fraction, text: progress(fraction, desc=text))
        except LdmkitError as exc:
            raise user_error(gr, str(exc)) from None
        return images, _caption(task, values, images)

    run.__name__ = task
    return run


def _condition_widgets(gr: Any, model: ServedModel) -> dict[str, Any]:
    """Prompt / class widgets of the model's condition (none for an unconditional model)."""
    if model.pipe.conditioning.takes_text:
        return {"prompt": gr.Textbox("", label="Prompt", lines=2, placeholder="a red circle"),
                "negative_prompt": gr.Textbox("", label="Negative prompt",
                                              placeholder="optional: steer away from this")}
    if model.pipe.conditioning.takes_labels:
        choices = [(f"{i}: {name}", i) for i, name in enumerate(model.class_names)]
        return {"class_label": gr.Dropdown(choices=choices, value=0, label="Class")}
    return {}


def _sampling_widgets(gr: Any, model: ServedModel) -> dict[str, Any]:
    """Sampler, steps, guidance and perturbed-attention guidance (where they apply), seed and number of images."""
    from ldmkit import samplers

    defaults = model.pipe.model.sampling_defaults  # a distilled student starts at lcm, 4 steps
    widgets = {"sampler": gr.Dropdown(choices=samplers.names(), value=defaults["sampler"], label="Sampler"),
               "steps": gr.Slider(1, MAX_STEPS, value=defaults["steps"], step=1, label="Steps",
                                  info=f"1 to {MAX_STEPS}: more steps are slower and finer")}
    if model.has_guidance:
        widgets["guidance"] = gr.Slider(1.0, 15.0, value=3.0, step=0.5, label="Guidance scale",
                                        info="classifier-free guidance; 1 = off")
    if model.has_self_attention:
        widgets["pag_scale"] = gr.Slider(0.0, 10.0, value=0.0, step=0.5, label="Perturbed-attention guidance",
                                         info="PAG scale: firmer structure, also without a prompt; 0 = off, about 3")
    widgets["seed"] = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                info=f"0 to {MAX_SEED}; image i uses seed + i")
    widgets["n"] = gr.Slider(1, MAX_IMAGES, value=1 if model.tasks == ("upscale",) else 4, step=1,
                             label="Number of images")
    return widgets


def _lora_widgets(gr: Any, model: ServedModel) -> dict[str, Any]:
    """A checklist of the adapters found beside the model and their scale (nothing when there are none)."""
    if not model.lora_files:
        return {}
    return {"loras": gr.CheckboxGroup(choices=list(model.lora_files), value=[], label="LoRA adapters"),
            "lora_scale": gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale")}


def _brush_radius(size: tuple[int, int]) -> int:
    """Brush and eraser radius in pixels for an image of ``size``: relative to its shorter side."""
    return max(1, round(min(size) * BRUSH_FRACTION))


def _brush(gr: Any, size: tuple[int, int]) -> Any:
    """The inpainting brush for an image of ``size`` (width, height)."""
    return gr.Brush(colors=[BRUSH_COLOR], color_mode="fixed", default_size=_brush_radius(size))


def _eraser(gr: Any, size: tuple[int, int]) -> Any:
    return gr.Eraser(default_size=_brush_radius(size))


def _fit_brush(gr: Any) -> Callable[[Any], Any]:
    """The editor's upload event: brush and eraser sized for the uploaded image."""
    from ldmkit.serve.images import editor_layers

    def fit(value: Any) -> Any:
        image, _ = editor_layers(value)
        if image is None:
            return gr.skip()
        return gr.ImageEditor(brush=_brush(gr, image.size), eraser=_eraser(gr, image.size))

    return fit


def _task_widgets(gr: Any, model: ServedModel, task: str) -> dict[str, Any]:
    """The inputs of one task's tab."""
    multiple, (height, width) = model.multiple, model.image_size
    preview = {"height": PREVIEW_HEIGHT, "elem_classes": ["ldm-preview"]}
    if task == "generate":
        return {"height": gr.Slider(multiple, 4 * height, value=height, step=multiple, label="Height"),
                "width": gr.Slider(multiple, 4 * width, value=width, step=multiple, label="Width",
                                   info="larger than trained: sampled convolutionally (paper §4.3.2)")}
    resize = f"Resize to the model's size (shorter side), then crop to a multiple of {multiple} px"
    if task == "img2img":
        return {"image": gr.Image(type="pil", image_mode="RGB", label="Image", sources=["upload", "clipboard"],
                                  **preview),
                "strength": gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength",
                                      info="small keeps the input, 1 starts from noise"),
                "resize": gr.Checkbox(value=True, label=resize)}
    if task == "inpaint":
        editor = gr.ImageEditor(type="pil", image_mode="RGBA", label="Image: paint the region to fill in",
                                sources=["upload", "clipboard"], brush=_brush(gr, (width, height)),
                                eraser=_eraser(gr, (width, height)), layers=False, transforms=(),
                                height=PREVIEW_HEIGHT + 120)  # room for the editor's toolbars
        editor.upload(_fit_brush(gr), inputs=editor, outputs=editor, concurrency_limit=None,
                      api_visibility="private")
        return {"image": editor,
                "mask": gr.Image(type="pil", image_mode="L", label="Mask (optional: white = fill in; replaces the "
                                 "painting)", sources=["upload"], **preview),
                "resize": gr.Checkbox(value=True, label=resize)}
    if task == "upscale":
        factor = model.upscale_factor
        return {"image": gr.Image(type="pil", image_mode="RGB", label=f"Low-resolution image (output: {factor}x its "
                                  "size)", sources=["upload", "clipboard"], **preview),
                "tiled": gr.Checkbox(value=False, label="Tiled: sample and decode in overlapping tiles (large images)")}
    if task == "synthesize":
        legend = ", ".join(f"{i} = {name}" for i, name in enumerate(model.map_class_names))
        gr.Markdown(f"A PNG whose grey levels or palette indices are class ids: {legend}. "
                    "Its size is the output size.")
        return {"segmentation_map": gr.File(file_types=[".png"], type="filepath", label="Map PNG")}
    raise ConfigError(f"unknown task '{task}'")


def build_app(model: ServedModel) -> Any:
    """The ``gradio.Blocks`` app of ``model`` (not launched); one tab per entry of ``model.tasks``."""
    gr = import_gradio()
    with gr.Blocks(title=f"ldmkit — {model.name}", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"## ldmkit — latent diffusion\n{model.describe()}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                shared = _named(gr, _condition_widgets(gr, model))
                shared.update(_named(gr, _sampling_widgets(gr, model)))
                shared.update(_named(gr, _lora_widgets(gr, model)))
            with gr.Column(scale=2):
                tabs: list[tuple[str, dict[str, Any], Any]] = []
                with gr.Tabs():
                    for task in model.tasks:
                        with gr.Tab(TASK_LABELS[task], id=task):
                            inputs = _named(gr, _task_widgets(gr, model, task), prefix=f"ldm-{task}")
                            button = gr.Button(TASK_LABELS[task] if task != "generate" else "Generate",
                                               variant="primary", elem_id=f"ldm-{task}-run")
                        tabs.append((task, inputs, button))
                caption = gr.Markdown("No images yet: fill in a tab and press its button.", label="Caption",
                                      elem_id="ldm-caption", min_height=72)  # room for the progress bar
                gallery = gr.Gallery(label="Images", format="png", columns=4, object_fit="contain",
                                     buttons=["download", "fullscreen"], elem_id="ldm-gallery")
        for task, inputs, button in tabs:
            button.click(_runner(gr, task, getattr(model, task), model.use_loras if model.lora_files else None),
                         inputs_kwargs={**inputs, **shared},
                         outputs=[gallery, caption], show_progress_on=caption, api_name=task,
                         api_description=API_DESCRIPTIONS[task])
    demo.queue(default_concurrency_limit=1)  # one request at a time on the one loaded model
    return demo


def launch_app(demo: Any, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve ``demo`` until interrupted; a public share link only when ``share`` (it goes through gradio's servers).

    A taken port or an address that is not this machine's is a one-line ConfigError.
    """
    try:
        demo.launch(server_name=host, server_port=port, share=share, inbrowser=False, show_error=True,
                    ssr_mode=False, css=CSS)  # ssr_mode: no Node server-side rendering either
    except OSError as exc:
        reason = str(exc).split(". ")[0]
        raise ConfigError(f"cannot serve on {host}:{port} ({reason}); pass a free --port or another --host") from None


__all__ = ["build_app", "import_gradio", "launch_app", "user_error"]
