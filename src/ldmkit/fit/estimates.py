"""Expected time and memory of a plan, before anything is built on the device.

Memory of a training stage = 16 bytes per trained parameter (fp32 weights, gradients and two Adam moments) plus
activations: :data:`ACTIVATION_FACTOR` times the feature maps :mod:`ldmkit.pipelines.memory` counts for one
forward. The factor is calibrated on the one training peak recorded (docs/results/performance.md: the SD-1.x
UNet, 32² latents, batch 128, bf16, eager: 51.4 GB), and used for the first stage too, where no peak was
recorded; the estimate is a guide, not a bound. Parameters are counted on networks built on the meta device
(no memory).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ldmkit.config import option
from ldmkit.pipelines.memory import first_stage_bytes, format_bytes, unet_bytes

if TYPE_CHECKING:
    from ldmkit.fit.plan import Plan
    from ldmkit.fit.table import PlanRow

ACTIVATION_FACTOR = 16  # training activations / pipelines.memory's guided-forward estimate (see above)
OPTIMIZER_BYTES = 16  # per trained parameter: fp32 weight, gradient, two Adam moments
DISCRIMINATOR_PARAMS = 2_800_000  # PatchGAN, 3 layers of 64 channels (the presets' loss)
LPIPS_PARAMS = 14_700_000  # VGG16 features up to conv5_3, frozen


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "gpu" or "cpu"
    memory_bytes: int
    gpus: int = 1
    name: str = ""

    def describe(self) -> str:
        what = self.name or ("GPU" if self.kind == "gpu" else "CPU")
        return f"{what} ({format_bytes(self.memory_bytes)})"


@dataclass(frozen=True)
class Estimate:
    """What a plan is expected to cost (recomputed whenever the plan changes, never read back)."""

    ae_parameters: int = option(0, help="autoencoder parameters")
    unet_parameters: int = option(0, help="UNet parameters")
    ae_memory_bytes: int = option(0, help="autoencoder training peak (estimate)")
    ldm_memory_bytes: int = option(0, help="diffusion training peak (estimate)")
    ae_minutes: float = option(0.0, help="autoencoder training")
    ldm_minutes: float = option(0.0, help="diffusion training")
    other_minutes: float = option(0.0, help="start-up, latent encoding and evaluation")
    total_minutes: float = option(0.0, help="everything")


def device_info(device: Any, gpus: int = 1) -> DeviceInfo:
    """The planning view of a torch device: its kind and memory (the machine's RAM for the CPU)."""
    import torch

    from ldmkit.pipelines.memory import device_memory_bytes

    memory = device_memory_bytes(device) or 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return DeviceInfo("cpu" if device.type == "cpu" else "gpu", memory, gpus, name)


def parameters(plan: "Plan") -> tuple[int, int]:
    """(autoencoder, UNet) parameter counts."""
    c = plan.autoencoder.latent_channels
    unet = dataclasses.replace(plan.unet, in_channels=c, out_channels=c, context_dim=_context(plan),
                               vector_dim=_vector(plan))
    return _counts(plan.autoencoder, unet)


@functools.lru_cache(maxsize=64)
def _counts(autoencoder: Any, unet: Any) -> tuple[int, int]:
    import torch

    from ldmkit.autoencoders import build_autoencoder
    from ldmkit.denoisers.unet import UNet

    with torch.device("meta"):
        return (sum(p.numel() for p in build_autoencoder(autoencoder).parameters()),
                sum(p.numel() for p in UNet(unet).parameters()))


def _context(plan: "Plan") -> int | None:
    return plan.conditioner.embed_dim if plan.conditioner.takes_text else None


def _vector(plan: "Plan") -> int | None:
    return plan.conditioner.embed_dim if plan.conditioner.takes_labels else None


def training_bytes(plan: "Plan", stage: str, batch: int, device: DeviceInfo) -> int:
    """Estimated peak memory of training ``stage`` ("ae" or "ldm") at ``batch`` images per process."""
    ae_params, unet_params = parameters(plan)
    itemsize = 2 if device.kind == "gpu" else 4  # bf16 autocast on GPU, fp32 on the CPU
    side = plan.resolution
    if stage == "ae":
        # Encoder and decoder, each at the widest maps of the pixel grid.
        maps = 2 * first_stage_bytes(plan.autoencoder, side, side, batch, itemsize)
        return OPTIMIZER_BYTES * (ae_params + DISCRIMINATOR_PARAMS) + 4 * LPIPS_PARAMS + ACTIVATION_FACTOR * maps
    _, h, w = plan.latent_shape
    maps = unet_bytes(plan.unet, h, w, batch, itemsize)
    return OPTIMIZER_BYTES * unet_params + 4 * ae_params + ACTIVATION_FACTOR * maps


def overhead_seconds(row: "PlanRow", device: DeviceInfo, count: int) -> float:
    """Start-up plus encoding the latent cache: the encoder alone runs at about 3x a training step's images."""
    speed = device.gpus * (0.96 if device.gpus > 1 else 1.0)
    return (60 if device.kind == "gpu" else 10) + count / (3 * row.ae_img_per_s * speed)


def estimate(plan: "Plan", device: DeviceInfo, count: int, row: "PlanRow | None" = None) -> Estimate:
    """Parameters, memory and minutes of ``plan`` on ``device`` for ``count`` images."""
    from ldmkit.fit.table import rows_for

    row = row or next((r for r in rows_for(device.kind) if r.name == plan.row), rows_for(device.kind)[0])
    ae_params, unet_params = parameters(plan)
    speed = device.gpus * (0.96 if device.gpus > 1 else 1.0)
    ae_minutes = 0.0
    if plan.trains_autoencoder:
        ae_minutes = plan.ae.steps * plan.ae.batch * device.gpus / (row.ae_img_per_s * speed) / 60
        ae_minutes = min(ae_minutes, plan.ae.minutes or ae_minutes)
    ldm_minutes = plan.ldm.steps * plan.ldm.batch * device.gpus / (row.ldm_img_per_s * speed) / 60
    ldm_minutes = min(ldm_minutes, plan.ldm.minutes or ldm_minutes)
    sample = plan.eval.samples * plan.eval.sampler_steps / (2 * row.ldm_img_per_s * speed)
    other = overhead_seconds(row, device, count) + sample + plan.eval.reconstructions / row.ae_img_per_s
    return Estimate(
        ae_parameters=ae_params, unet_parameters=unet_params,
        ae_memory_bytes=training_bytes(plan, "ae", plan.ae.batch, device) if plan.trains_autoencoder else 0,
        ldm_memory_bytes=training_bytes(plan, "ldm", plan.ldm.batch, device),
        ae_minutes=round(ae_minutes, 2), ldm_minutes=round(ldm_minutes, 2), other_minutes=round(other / 60, 2),
        total_minutes=round(ae_minutes + ldm_minutes + other / 60, 2))


__all__ = ["ACTIVATION_FACTOR", "DeviceInfo", "Estimate", "device_info", "estimate", "overhead_seconds", "parameters", "training_bytes"]
