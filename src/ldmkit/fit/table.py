"""The plan table: for each image size, which presets ``ldm fit`` trains and how fast they ran.

Each row names the autoencoder and diffusion presets of ``configs/`` it takes its networks from, and the
throughput those presets reached in a recorded run (``docs/results/``), so that a plan's step counts and
times come from measurements, not guesses. Rows marked ``extrapolated`` had no run at that size: their
throughput is scaled from the nearest measured row by the number of latent cells (said in ``source``).
GPU throughputs are of one H100/H200 in bf16; CPU throughputs of 2 cores in fp32. ``docs/fit.md`` prints
this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanRow:
    name: str
    device: str  # "gpu" or "cpu"
    resolution: int  # the image side the row is for (images at or below it, above the previous row)
    autoencoder_preset: str  # configs/autoencoder/<name>.yaml: the first stage's network and loss
    diffusion_preset: str  # configs/diffusion/<name>.yaml: the UNet and schedule
    ae_batch: int
    ae_img_per_s: float  # autoencoder training images per second
    ldm_batch: int
    ldm_img_per_s: float  # diffusion training images per second
    source: str  # where the throughputs come from
    unet: tuple[tuple[str, object], ...] = ()  # UNet fields changed from the preset (why: in ``source``)


GPU_ROWS: tuple[PlanRow, ...] = (
    PlanRow("gpu-32", "gpu", 32, "fashion-mnist-kl-f2", "fashion-mnist-class", 128, 3177.0, 256, 3802.0,
            "docs/results/autoencoders.md (fashion-mnist-kl-f2: 5,046 x 128 in 203 s, 32.18 dB vs bicubic 20.75); "
            "docs/results/ldm.md (fashion-mnist-class: 3,683 x 256 in 248 s, FD-EffLite0 11.05)"),
    PlanRow("gpu-64", "gpu", 64, "fluent-emoji-64-kl-f4", "fluent-emoji-64-text", 32, 801.0, 128, 1006.0,
            "docs/results/ldm.md (emoji text model: first stage 2,254 x 32 in 90 s; diffusion 2,123 x 128 in "
            "270 s, FD-EffLite0 69.7 vs floor 38.3)"),
    PlanRow("gpu-128", "gpu", 128, "fluent-emoji-128-kl-f4", "fluent-emoji-64-text", 32, 286.0, 64, 415.0,
            "docs/results/autoencoders.md (fluent-emoji-128-vq-f4: 2,217 x 32 in 248 s, 30.55 dB KL vs bicubic "
            "25.42); diffusion: docs/results/fit.md (the emoji fit at 128 px, H200: about 415 img/s at batch 64, "
            "this row's UNet with attention left out of the 32x32 level)", unet=(("attention_resolutions", (2, 4)),)),
    PlanRow("gpu-256", "gpu", 256, "kl-f4", "ldm4-256", 16, 18.0, 48, 159.0,
            "docs/results/performance.md (LDM-4 UNet on cached 64x64x3 latents: 159 img/s, H100); first stage "
            "extrapolated from gpu-128: 4x the pixels and 2x the width, 286 / 16 img/s"),
)

CPU_ROWS: tuple[PlanRow, ...] = (
    PlanRow("cpu-32", "cpu", 32, "synthetic-kl-f4", "synthetic-text", 32, 80.0, 32, 150.0,
            "the demo's presets (`ldm demo`: 400 + 2,400 steps x 32 at 32 px), planned as 10 minutes on 2 CPU cores "
            "split between the stages; a run of 207 s trained at about 270 and 490 img/s, so these rates are cautious"),
    PlanRow("cpu-64", "cpu", 64, "synthetic-kl-f4", "synthetic-text", 16, 20.0, 32, 38.0,
            "extrapolated from cpu-32: 4x the pixels and latent cells"),
)


def rows_for(device: str) -> tuple[PlanRow, ...]:
    return GPU_ROWS if device == "gpu" else CPU_ROWS


__all__ = ["CPU_ROWS", "GPU_ROWS", "PlanRow", "rows_for"]
