"""Condition → sample latents → decode: the generation pipeline for text, class and unconditional models.

``pipe = ldmkit.load_pipeline(DIR); images = pipe(prompt="a red circle", steps=25, guidance=3.0, seed=0)``

Each image's noise comes from its own seed (``seed + i``) drawn on the CPU, so an image does not change
with the batch size or the device. Larger sizes than trained are sampled convolutionally (paper §4.3.2).

``pipe.optimize()`` switches a GPU pipeline to the fast path: bf16 weights, channels-last layout, a
``torch.compile``d denoising network (CUDA graphs by default) and a compiled decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldmkit import samplers
from ldmkit.conditioning.config import ConditionerConfig
from ldmkit.conditioning.sizes import check_size_request
from ldmkit.conditioning.types import Conditioning
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.errors import ConfigError
from ldmkit.io.images import to_pil, to_unit
from ldmkit.model import LatentDiffusionModel
from ldmkit.config.checks import check_count, check_seed
from ldmkit.pipelines.checks import request_options, seed_generator
from ldmkit.pipelines.tasks import TaskSpec, register_task, without_image_condition
from ldmkit.progress import progress_bar
from ldmkit.samplers import SamplerOptions
from ldmkit.pipelines.memory import check_fits, sampling_bytes
from ldmkit.runtime import autocast_dtype, pick_device

#: ``torch.compile`` modes :meth:`LatentDiffusionPipeline.optimize` accepts ("reduce-overhead" and
#: "max-autotune" replay CUDA graphs; "max-autotune*" benchmark kernels at compile time, which takes minutes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def seeded_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """[N, c, h, w] standard normal noise, sample i drawn from a CPU generator seeded with seeds[i]."""
    return torch.stack([torch.randn(shape, generator=seed_generator(s)) for s in seeds])


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation of two noise tensors (keeps the norm a Gaussian sample should have)."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if theta.abs() < 1e-4:
        return torch.lerp(a, b, weight)
    out = (torch.sin((1 - weight) * theta) * a.double() + torch.sin(weight * theta) * b.double()) / torch.sin(theta)
    return out.to(a.dtype)


class _FreshOutputs(torch.nn.Module):
    """Calls a network compiled with CUDA graphs and copies each output out of the graphs' memory pool.

    The next replay overwrites that memory, and samplers keep past predictions (PLMS, DPM-Solver++); the
    copy is one latent-sized tensor per call.
    """

    def __init__(self, compiled: torch.nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # outputs of earlier calls are no longer needed
        return self.compiled(x, t, cond).clone()  # [B, C, h, w]


def optimize_network(network: torch.nn.Module, *, compile: bool = True, mode: str = "reduce-overhead",
                     channels_last: bool = True, bf16_weights: bool = True, backend: str = "inductor",
                     quantize: str | None = None) -> torch.nn.Module:
    """The fast inference form of a denoising network ``(x, t, cond) -> output``.

    Converts ``network`` in place (bf16 weights, channels-last layout, and with ``quantize`` its transformer
    GEMMs in int8 or fp8: :mod:`ldmkit.pipelines.quantize`) and returns what to call: the network itself, or its
    ``torch.compile``d form (``mode`` one of :data:`COMPILE_MODES`; ``backend`` is passed to ``torch.compile``,
    which ignores ``mode`` for backends other than inductor). Inputs are then bf16 or run under bf16 autocast.
    """
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile mode '{mode}' is not one of {', '.join(COMPILE_MODES)}")
    if bf16_weights:
        network.to(torch.bfloat16)
    if channels_last:
        network.to(memory_format=torch.channels_last)
    if quantize is not None:
        from ldmkit.pipelines.quantize import quantize_network

        quantize_network(network, quantize)
    if not compile:
        return network
    inductor = backend == "inductor"
    compiled = torch.compile(network, backend=backend, mode=mode if inductor else None)
    if inductor and mode in ("reduce-overhead", "max-autotune"):
        return _FreshOutputs(compiled)
    return compiled


def _has_fast_path(device: torch.device) -> bool:
    """Whether bf16 weights and compiled kernels pay off: on accelerators; on CPUs often not (no bf16 units)."""
    return device.type != "cpu"


class LatentDiffusionPipeline:
    """Generation over one :class:`~ldmkit.model.LatentDiffusionModel`; the task pipelines share its parts."""

    def __init__(self, model: LatentDiffusionModel, precision: str = "auto"):
        self.model = model
        self.denoiser = model.denoiser()
        self.precision = precision
        self.optimizations: tuple[str, ...] = ()  # what optimize() applied
        self.quantized: str | None = None  # the quantization of the denoiser's GEMMs (quantize())
        self.decode_tile: tuple[int, int] | None = None  # latent cells per decoding tile (tile_decoding())
        self.decode_overlap: int | None = None
        self.original_size: tuple[int, int] | None = None  # what a size-conditioned model imitates (size_conditions())
        self.crop_top_left: tuple[int, int] = (0, 0)

    # The model's parts, read through the pipeline (``pipe.unet``, ``pipe.autoencoder``, …).
    unet = property(lambda self: self.model.unet)
    schedule = property(lambda self: self.model.schedule)
    conditioner = property(lambda self: self.model.conditioner)
    autoencoder = property(lambda self: self.model.autoencoder)
    latent_size = property(lambda self: self.model.latent_size)

    def load_lora(self, path: str | Path, scale: float = 1.0) -> str:
        """Add a LoRA adapter file (diffusers' or kohya's layout) at ``scale``, beside those already loaded;
        load adapters before :meth:`optimize`. Returns the adapter's name."""
        from ldmkit.adapters import load_lora

        return load_lora(self.model, path, scale)

    def unload_loras(self) -> LatentDiffusionPipeline:
        """Remove every loaded adapter: the base model again."""
        from ldmkit.adapters import unload_loras

        unload_loras(self.model)
        return self

    def quantize(self, kind: str) -> LatentDiffusionPipeline:
        """Quantize the denoiser's attention and feed-forward GEMMs in place (``int8``, ``int8-weight`` or ``fp8``;
        :mod:`ldmkit.pipelines.quantize`), on any device; with :meth:`optimize`, pass ``quantize=`` there instead
        so it comes after the bf16 conversion and before compiling. Returns the pipeline."""
        from ldmkit.pipelines.quantize import quantize_network

        if self.optimizations:
            raise ConfigError("quantize before optimize(), or pass optimize(quantize=...)")
        quantize_network(self.unet, kind)
        self.quantized = kind
        return self

    def optimize(self, compile: bool = True, mode: str = "reduce-overhead", channels_last: bool = True,
                 bf16_weights: bool = True, quantize: str | None = None,
                 compile_decoder: bool = True) -> LatentDiffusionPipeline:
        """Switch to the fast inference path on a GPU; on a CPU nothing changes. Returns the pipeline.

        bf16 weights for the UNet and the autoencoder (sampling then runs under bf16 autocast, whatever
        ``precision`` said), channels-last layout, the UNet behind ``torch.compile(mode=mode)``
        (:data:`COMPILE_MODES`) and, with ``compile`` and ``compile_decoder``, the first stage's decoder behind
        ``torch.compile`` too (its default mode: one call per image needs no CUDA graphs; compiled, the SD VAE
        decodes 512² images 2× faster than eager at batch 8 on an H200). The first sampling call compiles (a
        minute or more for large UNets, half a minute for the SD decoder); each new image size or batch size
        compiles again. ``optimizations`` lists what was applied.
        """
        if mode not in COMPILE_MODES:
            raise ConfigError(f"compile mode '{mode}' is not one of {', '.join(COMPILE_MODES)}")
        if not _has_fast_path(self.device) or self.optimizations:
            if quantize is not None and not self.optimizations and self.quantized is None:
                self.quantize(quantize)  # the CPU path: no bf16 or compiling, the quantization still applies
            return self  # applied once only
        applied = []
        if bf16_weights:
            self.autoencoder.to(torch.bfloat16)
            self.precision = "bf16"
            applied.append("bf16_weights")
        if channels_last:
            self.autoencoder.to(memory_format=torch.channels_last)
            applied.append("channels_last")
        # Wrappers (tiling) keep their place around the fast network.
        self.denoiser.replace_network(optimize_network(self.unet, compile=compile, mode=mode,
                                                       channels_last=channels_last, bf16_weights=bf16_weights,
                                                       quantize=quantize))
        if quantize is not None:
            self.quantized = quantize
            applied.append(f"quantize:{quantize}")
        if compile:
            applied.append(f"compile:{mode}")
        if compile and compile_decoder:
            self.model.fast_decode = torch.compile(self.autoencoder.decode)
            applied.append("compile_decoder")
        self.optimizations = tuple(applied)
        return self

    def tile_decoding(self, tile: int | str | None = "auto", overlap: int | None = None) -> LatentDiffusionPipeline:
        """Decode latents one image and one overlapping tile at a time (None: whole images, the default).

        ``tile``: latent cells per side, or "auto" for the trained latent size; ``overlap``: latent cells shared
        by neighbouring tiles (default a quarter of the tile). The decoder's memory is then that of one tile,
        so 1024² and 2048² images decode on devices that cannot hold the whole decoder activations.
        Returns the pipeline.
        """
        if tile is None:
            self.decode_tile, self.decode_overlap = None, None
            return self
        if tile == "auto":
            self.decode_tile = self.latent_size
        elif isinstance(tile, int) and not isinstance(tile, bool) and tile >= 1:
            self.decode_tile = (tile, tile)
        else:
            raise ConfigError(f"decoding tile must be 'auto' or a positive number of latent cells; got {tile!r}")
        if overlap is not None and not 0 <= overlap < min(self.decode_tile):
            raise ConfigError(f"decoding tile overlap must be in [0, {min(self.decode_tile)}); got {overlap}")
        self.decode_overlap = overlap
        return self

    def size_conditions(self, original_size: tuple[int, int] | None = None,
                        crop_top_left: tuple[int, int] = (0, 0)) -> LatentDiffusionPipeline:
        """What a size-conditioned model (``conditioner.size_conditioning``, SDXL §2.2) is told about the images it
        makes: the original (height, width) to imitate (None: the output size: a full-resolution image) and the
        crop's (top, left) corner ((0, 0): well framed; larger values imitate an image cut off at the top or left).
        Other models ignore this. Returns the pipeline."""
        check_size_request(tuple(original_size) if original_size is not None else (1, 1), tuple(crop_top_left))
        self.original_size = tuple(original_size) if original_size is not None else None
        self.crop_top_left = tuple(crop_top_left)
        return self

    def sized(self, cond: Conditioning | None, latents: torch.Tensor) -> Conditioning | None:
        """``cond`` with the sizes route of the images ``latents`` [B, c, h, w] decode to, as
        :meth:`size_conditions` says (only for a size-conditioned model)."""
        f = self.autoencoder.downsample_factor
        return self.model.with_sizes(cond, latents.shape[0], latents.shape[-2] * f, latents.shape[-1] * f,
                                     self.original_size, self.crop_top_left)

    @classmethod
    def from_pipeline(cls, pipe: LatentDiffusionPipeline) -> LatentDiffusionPipeline:
        """The same model parts (no copies) behind this class's interface (a task pipeline's checks run here)."""
        made = cls(pipe.model, precision=pipe.precision)
        made.decode_tile, made.decode_overlap = pipe.decode_tile, pipe.decode_overlap
        made.original_size, made.crop_top_left = pipe.original_size, pipe.crop_top_left
        made.quantized = pipe.quantized  # the shared network is quantized in place
        return made

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "auto",
             precision: str = "auto") -> LatentDiffusionPipeline:
        """Load a model directory written by `ldm train diffusion` as this kind of pipeline."""
        return cls.from_pipeline(load_pipeline(directory, device=device, precision=precision))

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def kind(self) -> str:
        """The conditioning kind's name (as in the model's config)."""
        return self.conditioner.config.kind

    @property
    def conditioning(self) -> ConditionerConfig:
        """What the model is conditioned on (``takes_text``, ``takes_labels``, ``concat.inpainting``, …)."""
        return self.model.conditioning

    @property
    def image_size(self) -> tuple[int, int]:
        return self.model.image_size

    # ----- checks before sampling --------------------------------------------------------------------
    @staticmethod
    def _image_count(prompt, class_label, n: int | None) -> int:
        """How many images a call gives: ``n``, else one per prompt or class label, else one."""
        if n is not None:
            return n
        for given in (prompt, class_label):
            if given is not None and not isinstance(given, (str, int)):
                return len(given)
        return 1

    def check_memory(self, height: int, width: int, *, batch: int, count: int, tile: tuple[int, int] | None = None,
                     tile_batch: int = 1,
                     advice: str = "ask for a smaller size or a smaller batch size, or decode in tiles "
                                   "(--decode-tile auto, tile_decoding())") -> None:
        """A one-line ConfigError when sampling ``count`` images of ``height × width`` pixels, ``batch`` at a
        time, would need more memory than the device has (see :mod:`ldmkit.pipelines.memory`)."""
        weight = next(self.autoencoder.parameters(), None)
        unet_dtype = autocast_dtype(self.device, self.precision) or torch.float32
        unet_config = getattr(self.unet, "config", None)
        needed = sampling_bytes(unet_config if isinstance(unet_config, UNetConfig) else None, self.autoencoder.config,
                                height, width, batch=min(batch, count), count=count, tile=tile, tile_batch=tile_batch,
                                decode_tile=self.decode_tile,
                                unet_itemsize=unet_dtype.itemsize,
                                first_stage_itemsize=weight.element_size() if weight is not None else 4)
        images = "image" if count == 1 else "images"
        check_fits(needed, self.device, f"{count} {images} of {width}x{height} pixels", advice)

    # ----- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, cond: Conditioning, uncond: Conditioning | None, noise: torch.Tensor,
                       options: SamplerOptions, *, start: torch.Tensor | None = None,
                       callback: samplers.Callback | None = None, progress: bool = False) -> torch.Tensor:
        """Latents [B, c, h, w] from ``noise`` (and img2img ``start``) as ``options`` say; ``options.seed`` drives
        the noise that stochastic samplers (DDPM, DDIM η > 0) add per step."""
        cond, uncond = self.sized(cond, noise), self.sized(uncond, noise)
        if self.model.takes_guidance:  # a distilled student reproduces guidance w in one pass: w is its input
            cond = dataclasses.replace(cond, guidance=torch.full((noise.shape[0],), float(options.guidance),
                                                                  device=self.device))
            uncond, options = None, options.replace(guidance=1.0, guidance_rescale=0.0)
        elif self.conditioning.unconditional:
            options = options.replace(guidance=1.0)  # nothing to guide: the null condition is the only condition
        dtype = autocast_dtype(self.device, self.precision)
        bar = progress_bar(total=options.steps, desc=f"sample {options.sampler}", leave=False) if progress else None

        def step_callback(step: samplers.Step) -> torch.Tensor | None:
            if bar is not None:
                bar.total = step.total
                bar.update(1)
            return callback(step) if callback is not None else None

        try:
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                latents = samplers.sample(options, self.denoiser, noise.to(self.device), cond, uncond,
                                          start=start, callback=step_callback,
                                          generator=seed_generator(options.seed))
        finally:
            if bar is not None:
                bar.close()
        return latents.float()

    @torch.no_grad()
    def generate(self, cond: Conditioning, uncond: Conditioning, count: int, latent_shape: tuple[int, int, int],
                 options: SamplerOptions, *, batch_size: int, start: torch.Tensor | None = None,
                 callback_for: Callable[[slice, torch.Tensor], samplers.Callback | None] | None = None,
                 decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 progress: bool = False) -> torch.Tensor:
        """The batch loop every task shares: ``count`` images [count, C, H, W] in [-1, 1] on the CPU.

        Image i starts from the noise of seed ``options.seed + i`` (drawn on the CPU: an image does not change
        with the batch size or the device); batch ``[lo, hi)`` samples with seed ``options.seed + lo`` for the
        noise stochastic samplers add. ``start`` [1, c, h, w]: img2img latents for every image.
        ``callback_for(batch slice, that batch's noise)`` gives the batch's step callback (inpainting blends
        the known region through it). ``decode`` replaces :meth:`decode` (tiled decoding).
        """
        noise = seeded_noise([options.seed + i for i in range(count)], latent_shape)  # [N, c, h, w]
        images = []
        for lo in range(0, count, batch_size):
            index = slice(lo, min(lo + batch_size, count))
            batch_noise = noise[index].to(self.device)
            batch_start = start.expand(batch_noise.shape[0], -1, -1, -1) if start is not None else None
            callback = callback_for(index, batch_noise) if callback_for is not None else None
            latents = self.sample_latents(cond.index(index), uncond.index(index), batch_noise,
                                          options.replace(seed=options.seed + lo), start=batch_start,
                                          callback=callback, progress=progress)
            images.append((decode or self.decode)(latents).cpu())
        return torch.cat(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images [N, 3, H, W] in [-1, 1] (tile by tile after :meth:`tile_decoding`)."""
        return self.model.decode(latents, tile=self.decode_tile, overlap=self.decode_overlap)

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, *, class_label: int | Sequence[int] | None = None,
                 negative_prompt: str | Sequence[str] | None = None, n: int | None = None, steps: int | None = None,
                 sampler: str | None = None, guidance: float = 3.0, guidance_rescale: float = 0.0,
                 guidance_interval: tuple[float, float] | None = None, pag_scale: float = 0.0,
                 pag_layers: Sequence[str] = (), guidance_parallel: float = 1.0,
                 guidance_norm_threshold: float = 0.0, guidance_momentum: float = 0.0, eta: float = 0.0,
                 spacing: str | None = None, seed: int = 0, height: int | None = None, width: int | None = None,
                 batch_size: int = 16, callback: Callable | None = None, output: str = "pil",
                 progress: bool = True) -> list[Image.Image] | torch.Tensor:
        """Generate images; ``n`` repeats each prompt/class that many times in total (cycled)."""
        count = self._image_count(prompt, class_label, n)
        options = request_options(defaults=self.model.sampling_defaults, count=count, batch_size=batch_size, seed=seed,
                                  sampler=sampler, steps=steps,
                                  spacing=spacing, guidance=guidance, guidance_rescale=guidance_rescale,
                                  guidance_interval=guidance_interval, pag_scale=pag_scale,
                                  pag_layers=pag_layers, guidance_parallel=guidance_parallel,
                                  guidance_norm_threshold=guidance_norm_threshold,
                                  guidance_momentum=guidance_momentum, eta=eta)
        shape = self.model.latent_shape(height, width)
        f = self.autoencoder.downsample_factor
        self.check_memory(shape[1] * f, shape[2] * f, batch=batch_size, count=count)
        cond, uncond, count = self.model.condition(prompt, class_label, negative_prompt, n)
        batch = self.generate(cond, uncond, count, shape, options, batch_size=batch_size,
                              callback_for=(lambda index, noise: callback) if callback is not None else None,
                              progress=progress)
        return batch if output == "tensor" else [to_pil(to_unit(image)) for image in batch]

    @torch.no_grad()
    def interpolate(self, *, seeds: tuple[int, int] = (0, 1), prompts: tuple[str, str] | None = None,
                    class_label: int | None = None, frames: int = 8, output: str = "pil",
                    height: int | None = None, width: int | None = None, callback: samplers.Callback | None = None,
                    progress: bool = False, **sampling: Any) -> list[Image.Image] | torch.Tensor:
        """A strip from seed A to seed B (spherical interpolation of noise) and/or prompt A to prompt B
        (linear interpolation of the conditioning); ``sampling``: the :class:`SamplerOptions` fields."""
        check_count("frames", frames)
        for seed in seeds:
            check_seed(seed)
        options = SamplerOptions(**sampling)
        shape = self.model.latent_shape(height, width)
        f = self.autoencoder.downsample_factor
        self.check_memory(shape[1] * f, shape[2] * f, batch=frames, count=frames)
        noise_a, noise_b = seeded_noise(list(seeds), shape)
        weights = [i / max(frames - 1, 1) for i in range(frames)]
        noise = torch.stack([slerp(noise_a, noise_b, w) for w in weights])
        if prompts is not None:
            both, uncond, _ = self.model.condition(list(prompts), None, None, None)
            cond = _lerp_conditioning(both.index(slice(0, 1)), both.index(slice(1, 2)), weights)
            uncond = uncond.index(slice(0, 1)).repeat(frames)
        else:
            single = None if class_label is None else [class_label]
            prompt = None
            if self.conditioning.takes_text:
                raise ConfigError("interpolating seeds of a text model needs a prompt; pass prompts=(p, p)")
            cond, uncond, _ = self.model.condition(prompt, single, None, 1)
            cond, uncond = cond.repeat(frames), uncond.repeat(frames)
        latents = self.sample_latents(cond, uncond, noise, options, callback=callback, progress=progress)
        images = self.decode(latents).cpu()
        return images if output == "tensor" else [to_pil(to_unit(image)) for image in images]


def _lerp_conditioning(a: Conditioning, b: Conditioning, weights: list[float]) -> Conditioning:
    """Linear interpolation of the context/vector routes; masks are the union of both token sets."""
    out: dict[str, torch.Tensor] = {}
    for name in ("context", "vector", "concat"):
        ta, tb = getattr(a, name), getattr(b, name)
        if ta is not None:
            out[name] = torch.cat([torch.lerp(ta, tb, w) for w in weights])
    if a.context_mask is not None:
        out["context_mask"] = (a.context_mask | b.context_mask).repeat(len(weights), 1)
    return Conditioning(**out)


register_task(TaskSpec("generate", "Generate", 1, LatentDiffusionPipeline, without_image_condition,
                       lambda c: f"this model needs its '{c.concat.kind}' image condition to sample: use the "
                                 "task it was trained for"))


def load_pipeline(directory: str | Path, device: str | torch.device = "auto",
                  precision: str = "auto") -> LatentDiffusionPipeline:
    """Load a latent diffusion model directory (output of `ldm train diffusion`) as a pipeline."""
    model = LatentDiffusionModel.load(directory, device=pick_device(device) if isinstance(device, str) else device)
    return LatentDiffusionPipeline(model, precision=precision)


__all__ = ["COMPILE_MODES", "LatentDiffusionPipeline", "load_pipeline", "optimize_network", "seeded_noise", "slerp"]
