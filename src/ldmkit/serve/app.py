"""The gradio app of one model: a tab per task the model supports, shared condition and sampler controls.

Only the widgets the model can use are built: a prompt (and negative prompt) for text models, a class
dropdown with the class names for class models, nothing for unconditional ones; the guidance slider only
where the condition was dropped in training (classifier-free guidance, paper §3.3 / Ho & Salimans 2022).
The handlers are :class:`~ldmkit.serve.model.ServedModel`'s methods; this file only wires them.

gradio is imported here and only here, when the app is built, with its analytics off: the app contacts
nothing on the internet (no telemetry, no version check, no share link unless asked for).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from ldmkit.errors import ConfigError, LdmkitError
from ldmkit.serve.model import MAX_IMAGES, TASK_LABELS, ServedModel


def import_gradio() -> Any:
    """The gradio module, imported with telemetry off; a one-line error naming the extra when missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no usage reports, no version check on launch
    try:
        import gradio
    except ImportError:
        raise ConfigError('the web demo needs gradio: pip install "ldmkit[ui]"') from None
    return gradio


def _supported(target: Any, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``target`` (a class or a function) accepts in the installed gradio (they changed
    between versions 4 and 6)."""
    accepted = inspect.signature(target.__init__ if isinstance(target, type) else target).parameters
    return {key: value for key, value in kwargs.items() if key in accepted}


def _runner(gr: Any, handler: Callable[..., list], names: dict[Any, str]) -> Callable[..., list]:
    """An event function: widget values (a dict keyed by component) → the handler's images.

    User mistakes (:class:`~ldmkit.errors.LdmkitError`) show as a one-line message in the page.
    """
    def run(values: dict, progress=gr.Progress()) -> list:  # noqa: B008 (gradio's way to ask for progress)
        kwargs = {names[component]: value for component, value in values.items()}
        try:
            return handler(**kwargs, progress=lambda fraction, text: progress(fraction, desc=text))
        except LdmkitError as exc:
            raise gr.Error(str(exc), **_supported(gr.Error, print_exception=False)) from None

    return run


def _condition_widgets(gr: Any, model: ServedModel) -> dict[Any, str]:
    """Prompt / class widgets of the model's condition (none for an unconditional model)."""
    widgets: dict[Any, str] = {}
    if model.condition == "text":
        widgets[gr.Textbox(label="Prompt", lines=2, placeholder="a red circle")] = "prompt"
        widgets[gr.Textbox(label="Negative prompt", placeholder="optional: steer away from this")] = "negative_prompt"
    elif model.condition == "class":
        choices = [(f"{i}: {name}", i) for i, name in enumerate(model.class_names)]
        widgets[gr.Dropdown(choices=choices, value=0, label="Class")] = "class_label"
    return widgets


def _sampling_widgets(gr: Any, model: ServedModel) -> dict[Any, str]:
    """Sampler, steps, guidance (where it applies), seed and number of images."""
    from ldmkit import samplers

    widgets: dict[Any, str] = {
        gr.Dropdown(choices=samplers.names(), value="dpm++2m", label="Sampler"): "sampler",
        gr.Slider(1, 200, value=25, step=1, label="Steps"): "steps",
    }
    if model.has_guidance:
        widgets[gr.Slider(1.0, 15.0, value=3.0, step=0.5, label="Guidance scale",
                          info="classifier-free guidance; 1 = off")] = "guidance"
    widgets[gr.Number(value=0, precision=0, minimum=0, label="Seed", info="image i uses seed + i")] = "seed"
    widgets[gr.Slider(1, MAX_IMAGES, value=1 if model.tasks == ("upscale",) else 4, step=1,
                      label="Number of images")] = "n"
    return widgets


def _task_widgets(gr: Any, model: ServedModel, task: str) -> dict[Any, str]:
    """The inputs of one task's tab."""
    multiple, (height, width) = model.multiple, model.image_size
    if task == "generate":
        return {gr.Slider(multiple, 4 * height, value=height, step=multiple, label="Height"): "height",
                gr.Slider(multiple, 4 * width, value=width, step=multiple, label="Width",
                          info="larger than trained: sampled convolutionally (paper §4.3.2)"): "width"}
    resize = f"Resize to the model's size (shorter side), then crop to a multiple of {multiple} px"
    if task == "img2img":
        return {gr.Image(type="pil", image_mode="RGB", label="Image", sources=["upload", "clipboard"]): "image",
                gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength",
                          info="small keeps the input, 1 starts from noise"): "strength",
                gr.Checkbox(value=True, label=resize): "resize"}
    if task == "inpaint":
        editor = gr.ImageEditor(**_supported(
            gr.ImageEditor, type="pil", image_mode="RGBA", label="Image: paint the region to fill in",
            sources=["upload", "clipboard"], brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
            layers=False, transforms=()))
        return {editor: "image",
                gr.Image(type="pil", image_mode="L", label="Mask (optional: white = fill in; replaces the painting)",
                         sources=["upload"]): "mask",
                gr.Checkbox(value=True, label=resize): "resize"}
    if task == "upscale":
        factor = model.upscale_factor
        return {gr.Image(type="pil", image_mode="RGB", label=f"Low-resolution image (output: {factor}x its size)",
                         sources=["upload", "clipboard"]): "image",
                gr.Checkbox(value=False, label="Tiled: sample and decode in overlapping tiles (large images)"):
                    "tiled"}
    if task == "synthesize":
        legend = ", ".join(f"{i} = {name}" for i, name in enumerate(model.map_class_names))
        gr.Markdown(f"A PNG whose grey levels or palette indices are class ids: {legend}. "
                    "Its size is the output size.")
        return {gr.File(file_types=[".png"], type="filepath", label="Map PNG"): "segmentation_map"}
    raise ConfigError(f"unknown task '{task}'")


def build_app(model: ServedModel) -> Any:
    """The ``gradio.Blocks`` app of ``model`` (not launched); one tab per entry of ``model.tasks``."""
    gr = import_gradio()
    with gr.Blocks(**_supported(gr.Blocks, title=f"ldmkit — {model.name}", analytics_enabled=False,
                                delete_cache=(3600, 86400))) as demo:
        gr.Markdown(f"## ldmkit — latent diffusion\n{model.describe()}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                shared = _condition_widgets(gr, model)
                shared.update(_sampling_widgets(gr, model))
            with gr.Column(scale=2):
                tabs: list[tuple[str, dict[Any, str], Any]] = []
                with gr.Tabs():
                    for task in model.tasks:
                        with gr.Tab(TASK_LABELS[task], id=task):
                            inputs = _task_widgets(gr, model, task)
                            button = gr.Button(TASK_LABELS[task] if task != "generate" else "Generate",
                                               variant="primary")
                        tabs.append((task, inputs, button))
                gallery = gr.Gallery(**_supported(gr.Gallery, label="Images", format="png", columns=4,
                                                  object_fit="contain", show_download_button=True,
                                                  buttons=["download", "fullscreen"]))
        for task, inputs, button in tabs:
            names = {**inputs, **shared}
            button.click(_runner(gr, getattr(model, task), names), inputs=set(names), outputs=gallery,
                         api_name=task)
    demo.queue(default_concurrency_limit=1)  # one request at a time on the one loaded model
    return demo


def launch_app(demo: Any, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve ``demo`` until interrupted; a public share link only when ``share`` (it goes through gradio's servers).

    A taken port or an address that is not this machine's is a one-line ConfigError.
    """
    gr = import_gradio()
    kwargs = _supported(gr.Blocks.launch, server_name=host, server_port=port, share=share, inbrowser=False,
                        show_error=True, ssr_mode=False)  # no Node server-side rendering either
    try:
        demo.launch(**kwargs)
    except OSError as exc:
        reason = str(exc).split(". ")[0]
        raise ConfigError(f"cannot serve on {host}:{port} ({reason}); pass a free --port or another --host") from None


__all__ = ["build_app", "import_gradio", "launch_app"]
