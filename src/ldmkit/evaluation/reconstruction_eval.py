"""Evaluating a first stage (paper §3.1, Tab. 8): how well does x̂ = D(E(x)) reproduce x, next to a bicubic baseline.

For every image the autoencoder's reconstruction (posterior mode for KL, quantised codes for VQ, clamped to
[-1, 1] as a saved image would be) is scored against the original with

- PSNR and SSIM (:mod:`ldmkit.evaluation.reconstruction`; on 8-bit levels unless ``quantize=False``),
- LPIPS (VGG16, v0.1) when an :class:`~ldmkit.autoencoders.lpips.LPIPS` is given,
- the Fréchet distance between feature statistics of the reconstructions and of the originals when a feature
  network is given: ``rFD-EffLite0`` with EfficientNet-Lite0 (only the standard Inception network earns the name
  ``rFID``),
- for VQ models, the fraction of codebook entries used and the perplexity exp(H) of the code frequencies, both
  over the whole evaluated set.

**Bicubic baseline.** The same numbers are computed for a plain resampling that keeps as many values as the
latent: the image (C channels, H × W) is shrunk bicubically (anti-aliased) to h' × w' and enlarged back
bicubically, then clamped. The latent holds c · (H/f) · (W/f) values; C · h' · w' equals that when

    h' = H / s,  w' = W / s,  with  s = f · sqrt(C / c)

(s = f · sqrt(3/c) for RGB; exactly f when c = 3). h' and w' are rounded to the nearest integer (at least 1,
at most the image side). Every autoencoder is thus shown against what a resampling of the same size achieves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ldmkit.autoencoders.base import FirstStage
from ldmkit.autoencoders.quantizer import perplexity_and_usage
from ldmkit.errors import ConfigError, DataError
from ldmkit.evaluation.extractor import FeatureExtractor
from ldmkit.evaluation.frechet import frechet_distance
from ldmkit.evaluation.reconstruction import psnr, ssim

BICUBIC_RULE = ("bicubic down (antialias) to h' = round(H / s), w' = round(W / s) with s = f * sqrt(C / c), "
                "so C*h'*w' = c*(H/f)*(W/f) values as in the latent; bicubic up; clamp to [-1, 1]")
RESULT_FILE = "reconstruction.json"
EXAMPLES_FILE = "reconstruction.png"


# --- the bicubic baseline ------------------------------------------------------------------------------------

def bicubic_factor(downsample_factor: int, latent_channels: int, image_channels: int = 3) -> float:
    """s = f · sqrt(C / c): the resampling factor whose low-resolution image holds as many values as the latent."""
    if downsample_factor < 1 or latent_channels < 1 or image_channels < 1:
        raise ConfigError(f"bicubic factor needs f, c, C ≥ 1, got f={downsample_factor}, c={latent_channels}, "
                          f"C={image_channels}")
    return downsample_factor * math.sqrt(image_channels / latent_channels)


def bicubic_size(height: int, width: int, downsample_factor: int, latent_channels: int,
                 image_channels: int = 3) -> tuple[int, int]:
    """(h', w') of the low-resolution image of the baseline: H / s and W / s rounded, within [1, side]."""
    s = bicubic_factor(downsample_factor, latent_channels, image_channels)
    return (min(height, max(1, round(height / s))), min(width, max(1, round(width / s))))


def bicubic_roundtrip(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] → bicubic down to ``size`` (anti-aliased), bicubic up to H × W, clamped."""
    height, width = images.shape[-2:]
    if tuple(size) == (height, width):
        return images.clamp(-1, 1)
    x = images.float()
    low = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)  # [B, C, h', w']
    up = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)  # [B, C, H, W]
    return up.clamp(-1, 1).to(images.dtype)


# --- accumulators ----------------------------------------------------------------------------------------------

class _FeatureMoments:
    """Streaming mean and covariance of features [N, D] (sums in float64 on the CPU)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None  # [D]
        self.outer: torch.Tensor | None = None  # [D, D]

    def update(self, features: torch.Tensor) -> None:
        f = features.detach().double().cpu()  # [B, D]
        if self.total is None:
            self.total = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        self.total += f.sum(dim=0)
        self.outer += f.T @ f
        self.count += f.shape[0]

    def mean_and_covariance(self) -> tuple[Any, Any]:
        assert self.total is not None and self.outer is not None and self.count >= 2
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean.numpy(), cov.numpy()


class _Scores:
    """Running sums of the per-image metrics of one method (autoencoder or bicubic)."""

    def __init__(self, with_features: bool) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0
        self.moments = _FeatureMoments() if with_features else None

    def add(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.detach().double().sum())

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


# --- the evaluation ----------------------------------------------------------------------------------------------

def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor [B, C, H, W] of a batch: a tensor, an (images, …) pair or a {"image": …} dict."""
    if isinstance(batch, dict):
        if "image" not in batch:
            raise DataError(f"a batch dict needs an 'image' entry, got keys {sorted(batch)}")
        batch = batch["image"]
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        raise DataError("image batches must be tensors [B, C, H, W] in [-1, 1]")
    return batch


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """Grey images [B, 1, H, W] are scored by LPIPS and the feature network as RGB [B, 3, H, W]."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _fd_name(extractor: FeatureExtractor) -> str:
    return "rFID" if extractor.label == "Inception" else f"rFD-{extractor.label}"


@torch.no_grad()
def evaluate_reconstruction(
    autoencoder: FirstStage,
    batches: Iterable[Any],
    *,
    lpips: torch.nn.Module | None = None,
    features: FeatureExtractor | None = None,
    device: torch.device | str | None = None,
    quantize: bool = True,
    bicubic: bool = True,
    examples: int = 8,
    total: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Reconstruction metrics of ``autoencoder`` (and of the bicubic baseline) over ``batches``.

    Args:
        autoencoder: a first stage; it is put in eval mode and, if ``device`` is given, moved there.
        batches: image batches [B, C, H, W] in [-1, 1] (tensors, ``(images, labels)`` or ``{"image": …}`` dicts).
        lpips: an LPIPS module (e.g. ``LPIPS.from_assets("vgg16")``), or ``None`` to leave LPIPS out.
        features: a feature network (e.g. ``build_feature_extractor("efflite0")``) for the Fréchet distance
            between reconstructions and originals, or ``None`` to leave it out.
        device: where to run the autoencoder and LPIPS (default: the autoencoder's device).
        quantize: score PSNR/SSIM on 8-bit levels, as the saved images would score.
        bicubic: also score the bicubic baseline (see the module docstring).
        examples: how many of the first images to keep for a side-by-side picture.
        total: number of images expected (only for the progress bar).
        progress: show a progress bar.

    Returns:
        A dict: ``metrics`` (``{"autoencoder": {...}, "bicubic": {...}}``), ``num_images``, ``seconds``,
        ``images_per_second``, ``device``, ``settings`` and ``notes`` — all JSON-ready — plus ``examples``:
        tensors ``{"original", "autoencoder", "bicubic"}`` [k, C, H, W] on the CPU, which
        :func:`write_reconstruction_report` draws and leaves out of the JSON.
    """
    device = torch.device(device) if device is not None else _model_device(autoencoder)
    autoencoder.eval().to(device)
    if lpips is not None:
        lpips = lpips.to(device).eval()
    run = _ReconstructionRun(autoencoder, lpips, features, quantize=quantize, bicubic=bicubic, examples=examples)
    bar = None
    if progress:
        from ldmkit.progress import progress_bar

        bar = progress_bar(total=total, desc="reconstruction", unit="img")
    start = time.perf_counter()
    for batch in batches:
        run.add(_images_of(batch).to(device=device, dtype=torch.float32))  # [B, C, H, W]
        if bar is not None:
            bar.update(run.last_batch)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    if run.count == 0:
        raise DataError("no images to evaluate the reconstructions on")
    metrics, notes = run.metrics()
    return {
        "metrics": metrics,
        "num_images": run.count,
        "seconds": round(seconds, 3),
        "images_per_second": round(run.count / seconds, 3) if seconds > 0 else None,
        "device": str(device),
        "settings": run.settings(quantize),
        "notes": notes,
        "examples": {name: torch.cat(parts) for name, parts in run.kept.items() if parts},
    }


class _ReconstructionRun:
    """Scores of the autoencoder (and of bicubic) accumulated batch by batch, with what the report records."""

    def __init__(self, autoencoder: FirstStage, lpips: torch.nn.Module | None, features: FeatureExtractor | None, *,
                 quantize: bool, bicubic: bool, examples: int):
        self.autoencoder, self.lpips, self.features = autoencoder, lpips, features
        self.quantize, self.bicubic, self.examples = quantize, bicubic, examples
        self.is_vq = hasattr(autoencoder, "quantizer")
        self.num_codes = int(autoencoder.quantizer.num_codes) if self.is_vq else 0
        self.code_counts = torch.zeros(self.num_codes, dtype=torch.float64)
        self.methods = ["autoencoder"] + (["bicubic"] if bicubic else [])
        self.scores = {m: _Scores(features is not None) for m in self.methods}
        self.real_moments = _FeatureMoments() if features is not None else None
        self.kept: dict[str, list[torch.Tensor]] = {"original": [], **{m: [] for m in self.methods}}
        self.kept_count = self.count = self.last_batch = self.image_channels = 0
        self.image_sizes: set[tuple[int, int]] = set()
        self.low_sizes: dict[str, list[int]] = {}
        self.latent_shape: list[int] | None = None

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Score one batch x [B, C, H, W] in [-1, 1]."""
        b, self.image_channels, height, width = x.shape
        c, h, w = self.autoencoder.latent_shape(height, width)
        self.latent_shape = [c, h, w]
        self.image_sizes.add((height, width))
        rec, aux = self.autoencoder(x, sample_posterior=False)
        outputs = {"autoencoder": rec.float().clamp(-1, 1)}  # [B, C, H, W]
        if self.is_vq and "indices" in aux:
            self.code_counts += torch.bincount(aux["indices"].flatten().cpu(), minlength=self.num_codes).double()
        if self.bicubic:
            size = bicubic_size(height, width, self.autoencoder.downsample_factor, c, self.image_channels)
            self.low_sizes[f"{height}x{width}"] = list(size)
            outputs["bicubic"] = bicubic_roundtrip(x, size)
        if self.real_moments is not None:
            self.real_moments.update(self.features(_rgb(x)))
        for name, y in outputs.items():
            scores = self.scores[name]
            scores.add("psnr", psnr(x, y, quantize=self.quantize))
            scores.add("ssim", ssim(x, y, quantize=self.quantize))
            if self.lpips is not None:
                scores.add("lpips", self.lpips(_rgb(x), _rgb(y)))
            if scores.moments is not None:
                scores.moments.update(self.features(_rgb(y)))
            scores.count += b
        if self.kept_count < self.examples:
            take = min(self.examples - self.kept_count, b)
            self.kept["original"].append(x[:take].cpu())
            for name, y in outputs.items():
                self.kept[name].append(y[:take].cpu())
            self.kept_count += take
        self.count += b
        self.last_batch = b

    def metrics(self) -> tuple[dict[str, dict[str, float]], list[str]]:
        """(metrics per method, notes on what was left out or how to read it)."""
        notes: list[str] = []
        metrics: dict[str, dict[str, float]] = {}
        features = self.features
        for name in self.methods:
            values = self.scores[name].means()
            if features is not None:
                if self.count < 2:
                    notes.append(f"{_fd_name(features)} needs at least 2 images; left out")
                else:
                    values[_fd_name(features)] = frechet_distance(*self.scores[name].moments.mean_and_covariance(),
                                                                  *self.real_moments.mean_and_covariance())
            metrics[name] = values
        if self.is_vq:
            perplexity, usage = perplexity_and_usage(self.code_counts)
            metrics["autoencoder"]["codebook_usage"] = float(usage)
            metrics["autoencoder"]["perplexity"] = float(perplexity)
        if self.lpips is None:
            notes.append("LPIPS left out (no LPIPS network given)")
        if features is None:
            notes.append("Fréchet distance left out (no feature network given)")
        else:
            notes.append(f"{_fd_name(features)} depends on the number of images ({self.count}) and is biased "
                         "upwards for small sets; compare only numbers computed over the same images")
        return metrics, notes

    def settings(self, quantize: bool) -> dict[str, Any]:
        """What was measured and how, for the JSON record."""
        autoencoder, cfg, lpips, features = self.autoencoder, self.autoencoder.config, self.lpips, self.features
        settings: dict[str, Any] = {
            "autoencoder_kind": cfg.kind,
            "downsample_factor": autoencoder.downsample_factor,
            "latent_channels": autoencoder.latent_channels,
            "latent_shape": self.latent_shape,
            "image_channels": self.image_channels,
            "image_sizes": [f"{h}x{w}" for h, w in sorted(self.image_sizes)],
            "reconstruction": ("posterior mode" if cfg.kind == "kl" else "nearest codes" if cfg.kind == "vq"
                               else "identity") + ", clamped to [-1, 1]",
            "psnr_ssim_on_8bit_levels": quantize,
            "lpips": f"LPIPS-{getattr(lpips, 'net', '?')} v0.1" if lpips is not None else None,
            "feature_network": ({"name": features.name, "protocol": features.protocol}
                                if features is not None else None),
        }
        if self.is_vq:
            settings["codebook_size"] = self.num_codes
        if self.bicubic:
            settings["bicubic"] = {
                "factor": bicubic_factor(autoencoder.downsample_factor, autoencoder.latent_channels,
                                         self.image_channels),
                "low_res_size": self.low_sizes,
                "rule": BICUBIC_RULE,
            }
        return settings


# --- reports -------------------------------------------------------------------------------------------------------

def comparison_grid(examples: dict[str, torch.Tensor], min_side: int = 128) -> torch.Tensor:
    """One picture [3, H', W'] in [0, 1]: a row per image, columns original | autoencoder | bicubic.

    Small images are enlarged by an integer factor (nearest neighbour) to at least ``min_side`` pixels a side.
    """
    from ldmkit.io.images import make_grid, to_unit

    columns = [examples[k] for k in ("original", "autoencoder", "bicubic") if k in examples]
    if not columns or columns[0].shape[0] == 0:
        raise DataError("no example images to draw")
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # [k * columns, C, H, W], row-major
    zoom = max(1, math.ceil(min_side / max(tiles.shape[-2:])))
    if zoom > 1:
        tiles = F.interpolate(tiles.float(), scale_factor=zoom, mode="nearest")
    return make_grid(to_unit(tiles), nrow=len(columns))


def write_reconstruction_report(result: dict[str, Any], out_dir: str | Path,
                                extra: dict[str, Any] | None = None) -> tuple[Path, Path | None]:
    """Write ``reconstruction.json`` (``result`` without its tensors, plus ``extra``) and ``reconstruction.png``
    (the side-by-side examples) into ``out_dir``; returns both paths (PNG ``None`` without examples)."""
    import json

    from ldmkit.io.images import save_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {k: v for k, v in result.items() if k != "examples"}
    report.update(extra or {})
    json_path = out / RESULT_FILE
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    examples = result.get("examples") or {}
    png_path = None
    if examples and examples.get("original") is not None and examples["original"].shape[0] > 0:
        png_path = save_grid(comparison_grid(examples), out / EXAMPLES_FILE)
    return json_path, png_path


__all__ = [
    "BICUBIC_RULE",
    "bicubic_factor",
    "bicubic_roundtrip",
    "bicubic_size",
    "comparison_grid",
    "evaluate_reconstruction",
    "write_reconstruction_report",
]
