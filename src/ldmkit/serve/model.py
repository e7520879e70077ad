"""One loaded model and the plain functions behind the web app's tabs (no gradio here).

``model = ServedModel.load(DIR)`` loads the pipeline once; ``model.tasks`` says what the model can do:

==============  ====================================  =========================================
task            model                                 pipeline
==============  ====================================  =========================================
``generate``    unconditional, class or text          :class:`LatentDiffusionPipeline`
``img2img``     the same (SDEdit, paper App. D)       :class:`ImageToImagePipeline`
``inpaint``     the same (zero-shot) or masked_image  :class:`InpaintPipeline` (paper §4.5)
``upscale``     low_res concat condition              :class:`UpscalePipeline` (paper §4.4)
``synthesize``  semantic concat condition             :class:`SemanticSynthesisPipeline` (§4.3.2)
==============  ====================================  =========================================

Every handler takes the widgets' values (a prompt or class label as the model needs, sampler, steps,
guidance, seed, number of images, the task's own inputs) and returns PIL images; image i uses seed
``seed + i``, so the same values give the same images. ``progress(fraction, text)`` is called after
every sampler step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldmkit.errors import ConfigError, LdmkitError
from ldmkit.pipelines import TASKS, LatentDiffusionPipeline, load_pipeline, tasks_for
from ldmkit.runtime import autocast_dtype
from ldmkit.samplers import Step
from ldmkit.serve.images import crop_ids, editor_layers, fit_box, fit_image

#: Task names with their tab labels (which tasks a model gets comes from the pipelines' task registry).
TASK_LABELS: dict[str, str] = {name: TASKS.get(name).label for name in TASKS.names()}
MAX_IMAGES = 16  # images per request (one sampling batch)
MAX_STEPS = 200  # sampler steps the page offers: past this these models only get slower

Progress = Callable[[float, str], None]


class _StepProgress:
    """A sampler callback that reports the fraction of all steps of a request done so far (it returns
    nothing, so the sampler's state stays as it is)."""

    def __init__(self, report: Progress, runs: int):
        self.report, self.runs, self.done, self.run = report, runs, 0, 0

    def __call__(self, step: Step) -> None:
        i, total = step.index, step.total
        self.done += 1
        if i == 0 and self.done > 1:
            self.run += 1
        where = f"image {self.run + 1}/{self.runs}, " if self.runs > 1 else ""
        self.report(min(self.done / (self.runs * total), 1.0), f"{where}step {i + 1}/{total}")


def _names_from_experiment(extra: dict[str, Any], what: str) -> list[str]:
    """Class names (``what="labels"``) or map class names (``"map"``) from the training data's config."""
    data = (extra.get("experiment") or {}).get("data")
    if not isinstance(data, dict) or data.get("source") not in ("synthetic", "fashion_mnist"):
        return []  # other sources would have to be read from disk; the app numbers their classes
    try:
        from ldmkit.config import from_dict
        from ldmkit.data.config import DataConfig

        cfg = from_dict(DataConfig, data)
        if what == "map":
            if cfg.source != "synthetic":
                return []
            from ldmkit.data.synthetic import segmentation_classes

            return segmentation_classes(cfg.synthetic)
        from ldmkit.data.loader import class_names

        return class_names(cfg)
    except (LdmkitError, TypeError, ValueError):
        return []


def _model_name(directory: str | Path) -> str:
    """How the app names a model: its directory, or the run's directory for ``runs/NAME/model``."""
    path = Path(directory).resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def _numbered(names: Sequence[str], count: int) -> list[str]:
    """``names`` if there is one per class, else ``"class 0"``, ``"class 1"``, …"""
    return list(names) if len(names) == count else [f"class {i}" for i in range(count)]


class ServedModel:
    """A pipeline loaded once, the tasks it supports and a handler per task."""

    def __init__(self, pipe: LatentDiffusionPipeline, *, name: str = "model", class_names: Sequence[str] = (),
                 map_class_names: Sequence[str] = ()):
        self.pipe = pipe
        self.name = name
        config = pipe.conditioning
        self.tasks: tuple[str, ...] = tuple(tasks_for(config))
        if not self.tasks:
            raise ConfigError(f"the web app does not know models with the '{config.concat.kind}' image condition")
        self.class_names = _numbered(class_names, config.num_classes) if config.takes_labels else []
        self.map_class_names = (_numbered(map_class_names, config.concat.semantic_classes)
                                if config.concat.semantic_map else [])
        self._pipes: dict[str, LatentDiffusionPipeline] = {}
        self.lora_files: dict[str, Path] = {}  # adapters found beside the model, offered as a checklist
        self._loras: tuple[tuple[str, ...], float] = ((), 1.0)  # the adapters loaded now and their scale

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "auto", precision: str = "auto") -> ServedModel:
        """Load a model directory (one-line errors for a missing or damaged one) on the best device."""
        from ldmkit.io import read_model_dir

        pipe = load_pipeline(directory, device=device, precision=precision)
        extra = read_model_dir(directory, kind="ldm").extra
        served = cls(pipe, name=_model_name(directory), class_names=_names_from_experiment(extra, "labels"),
                     map_class_names=_names_from_experiment(extra, "map"))
        from ldmkit.adapters import find_adapters

        served.lora_files = find_adapters(directory)
        return served

    def use_loras(self, names: Sequence[str], scale: float = 1.0) -> None:
        """Have exactly the adapters ``names`` (of :attr:`lora_files`) loaded, at ``scale``."""
        unknown = [n for n in names if n not in self.lora_files]
        if unknown:
            raise ConfigError(f"no adapter {', '.join(unknown)} beside this model; pick from "
                              f"{', '.join(self.lora_files) or 'none'}")
        wanted = (tuple(sorted(names)), float(scale))
        if wanted == self._loras:
            return
        self.pipe.unload_loras()
        self._loras = ((), 1.0)
        for name in wanted[0]:
            self.pipe.load_lora(self.lora_files[name], wanted[1])
        self._loras = wanted

    # ----- what the model is ------------------------------------------------------------------------
    @property
    def condition(self) -> str:
        """``text`` (also a frozen pretrained encoder), ``class`` or ``none``."""
        return self.pipe.conditioning.condition_name

    @property
    def has_guidance(self) -> bool:
        """Whether classifier-free guidance applies: a condition whose null version was trained (dropped)."""
        return not self.pipe.conditioning.unconditional and self.pipe.conditioning.drop_prob > 0

    @property
    def has_self_attention(self) -> bool:
        """Whether perturbed-attention guidance applies: the denoiser has self-attention layers to perturb."""
        from ldmkit.samplers.pag import self_attention_layers

        return bool(self_attention_layers(self.pipe.unet))

    @property
    def image_size(self) -> tuple[int, int]:
        """Training size (height, width) in pixels."""
        return self.pipe.image_size

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: the autoencoder's f times the UNet's downsampling."""
        return self.pipe.autoencoder.downsample_factor * self.pipe.unet.config.downsample_factor

    @property
    def upscale_factor(self) -> int:
        return self.pipe.conditioner.config.concat.low_res_factor

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def describe(self) -> str:
        """One line about the model: condition, size, tasks and device."""
        height, width = self.image_size
        condition = {"text": "text-conditional", "class": f"class-conditional ({len(self.class_names)} classes)",
                     "none": "unconditional"}[self.condition]
        concat = self.pipe.conditioning.concat
        if concat.present:
            condition += f", {concat.kind} condition"
        dtype = autocast_dtype(self.device, self.pipe.precision)
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        return f"{self.name}: {condition}, trained at {width}x{height}, on {self.device} ({precision})"

    def pipeline(self, task: str) -> LatentDiffusionPipeline:
        """The pipeline of ``task`` (sharing the loaded model parts)."""
        if task not in self.tasks:
            raise ConfigError(f"this model does not do '{task}'; it does {', '.join(self.tasks)}")
        if task not in self._pipes:
            pipeline = TASKS.get(task).pipeline
            self._pipes[task] = self.pipe if type(self.pipe) is pipeline else pipeline.from_pipeline(self.pipe)
        return self._pipes[task]

    # ----- the widgets' values ----------------------------------------------------------------------
    def _settings(self, prompt: str | None, class_label: int | str | None, negative_prompt: str | None,
                  sampler: str, steps: float, guidance: float, seed: float, n: float,
                  progress: Progress | None, runs: int | None = None, pag_scale: float = 0.0) -> dict[str, Any]:
        """Keyword arguments of a pipeline call from widget values (blank text = none)."""
        n, steps, seed = int(n), int(steps), int(seed)
        if not 1 <= n <= MAX_IMAGES:
            raise ConfigError(f"number of images must be in 1..{MAX_IMAGES}; got {n}")
        if seed < 0:
            raise ConfigError(f"seed must be 0 or more; got {seed}")
        kwargs: dict[str, Any] = {"sampler": sampler, "steps": steps, "seed": seed, "n": n, "progress": False,
                                  "guidance": float(guidance) if self.has_guidance else 1.0,
                                  "pag_scale": float(pag_scale) if self.has_self_attention else 0.0}
        if self.pipe.conditioning.takes_text:
            kwargs["prompt"] = (prompt or "").strip() or None
            kwargs["negative_prompt"] = (negative_prompt or "").strip() or None
        elif self.pipe.conditioning.takes_labels:
            if class_label is None or class_label == "":
                raise ConfigError("this is a class-conditional model: pick a class")
            kwargs["class_label"] = int(class_label)
        if progress is not None:
            kwargs["callback"] = _StepProgress(progress, runs if runs is not None else 1)
        return kwargs

    def _fit(self, image: Image.Image, resize: bool) -> tuple[Image.Image, Any]:
        """The RGB input fitted to the grid (scaled to the training size first when ``resize``)."""
        box = fit_box(image.size, min(self.image_size) if resize else None, self.multiple)
        return fit_image(image.convert("RGB"), box), box

    # ----- handlers ---------------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, class_label: int | str | None = None,
                 negative_prompt: str | None = None, *, sampler: str = "dpm++2m", steps: int = 25,
                 guidance: float = 3.0, pag_scale: float = 0.0, seed: int = 0, n: int = 4,
                 height: int | None = None, width: int | None = None,
                 progress: Progress | None = None) -> list[Image.Image]:
        """``n`` images from the prompt / class (or from nothing), at the training size unless given."""
        kwargs = self._settings(prompt, class_label, negative_prompt, sampler, steps, guidance, seed, n, progress,
                                pag_scale=pag_scale)
        size = {"height": int(height) if height else None, "width": int(width) if width else None}
        return self.pipeline("generate")(batch_size=MAX_IMAGES, **size, **kwargs)

    def img2img(self, image: Image.Image | None, prompt: str | None = None, class_label: int | str | None = None,
                negative_prompt: str | None = None, *, strength: float = 0.6, resize: bool = True,
                sampler: str = "dpm++2m", steps: int = 25, guidance: float = 3.0, pag_scale: float = 0.0,
                seed: int = 0, n: int = 4, progress: Progress | None = None) -> list[Image.Image]:
        """``n`` redrawings of ``image`` (SDEdit): small ``strength`` stays close to it."""
        if image is None:
            raise ConfigError("upload an image to start from")
        kwargs = self._settings(prompt, class_label, negative_prompt, sampler, steps, guidance, seed, n, progress,
                                pag_scale=pag_scale)
        fitted, _ = self._fit(image, resize)
        return self.pipeline("img2img")(fitted, strength=float(strength), batch_size=MAX_IMAGES, **kwargs)

    def inpaint(self, image: Any, mask: Image.Image | None = None, prompt: str | None = None,
                class_label: int | str | None = None, negative_prompt: str | None = None, *,
                resize: bool = True, sampler: str = "dpm++2m", steps: int = 25, guidance: float = 3.0,
                pag_scale: float = 0.0, seed: int = 0, n: int = 4,
                progress: Progress | None = None) -> list[Image.Image]:
        """``n`` fillings of the white region of ``mask`` (pixels under black stay as they are).

        ``image`` is a PIL image or an image editor's value; a region painted in the editor is the mask
        unless ``mask`` (an uploaded black-and-white image) is given.
        """
        picture, painted = editor_layers(image)
        if picture is None:
            raise ConfigError("upload an image to inpaint")
        mask = mask if mask is not None else painted
        if mask is None:
            raise ConfigError("paint over the region to fill in, or upload a mask (white = fill in)")
        if mask.size != picture.size:
            raise ConfigError(f"the mask is {mask.width}x{mask.height} pixels but the image is "
                              f"{picture.width}x{picture.height}; give a mask of the image's size")
        kwargs = self._settings(prompt, class_label, negative_prompt, sampler, steps, guidance, seed, n, progress,
                                pag_scale=pag_scale)
        fitted, box = self._fit(picture, resize)
        fitted_mask = fit_image(mask.convert("L"), box, Image.Resampling.NEAREST)
        return self.pipeline("inpaint")(fitted, fitted_mask, batch_size=MAX_IMAGES, **kwargs)

    def upscale(self, image: Image.Image | None, prompt: str | None = None, class_label: int | str | None = None,
                negative_prompt: str | None = None, *, tiled: bool = False, sampler: str = "dpm++2m",
                steps: int = 25, guidance: float = 3.0, pag_scale: float = 0.0, seed: int = 0, n: int = 1,
                progress: Progress | None = None) -> list[Image.Image]:
        """``n`` versions of ``image`` at the model's factor × its size (cropped to fit the grid)."""
        if image is None:
            raise ConfigError("upload a low-resolution image")
        kwargs = self._settings(prompt, class_label, negative_prompt, sampler, steps, guidance, seed, n, progress,
                                runs=int(n), pag_scale=pag_scale)
        factor = self.upscale_factor
        box = fit_box(image.size, None, self.multiple // math.gcd(self.multiple, factor))
        fitted = fit_image(image.convert("RGB"), box)
        return self.pipeline("upscale")(fitted, tile="auto" if tiled else None, **kwargs)

    def synthesize(self, segmentation_map: str | Path | Image.Image | torch.Tensor | None,
                   prompt: str | None = None, class_label: int | str | None = None,
                   negative_prompt: str | None = None, *, sampler: str = "dpm++2m", steps: int = 25,
                   guidance: float = 3.0, pag_scale: float = 0.0, seed: int = 0, n: int = 4,
                   progress: Progress | None = None) -> list[Image.Image]:
        """``n`` images laid out like a map of class ids (PNG: grey levels or palette indices = ids)."""
        from ldmkit.pipelines.semantic import map_to_tensor

        if segmentation_map is None:
            raise ConfigError("upload a map PNG of class ids")
        kwargs = self._settings(prompt, class_label, negative_prompt, sampler, steps, guidance, seed, n, progress,
                                pag_scale=pag_scale)
        ids = crop_ids(map_to_tensor(segmentation_map), self.multiple)  # [H, W]
        return self.pipeline("synthesize")(ids, batch_size=MAX_IMAGES, **kwargs)


__all__ = ["MAX_IMAGES", "MAX_STEPS", "TASK_LABELS", "ServedModel"]
