"""The plan of ``ldm fit``: a pure function of the data survey, the device and the time budget.

:func:`make_plan` tries the image sizes the data allows, largest first (a side of 256, 128, 64, 32 or 16 px
no larger than the images' median shorter side), and takes the first whose row of the table
(:mod:`ldmkit.fit.table`) fits the device's memory and trains enough steps in the budget (on a GPU, enough
diffusion images too: :data:`GOOD_LDM_IMAGES`, else the smallest size):

- **f and the latent**: the row's autoencoder preset, its downsamplings trimmed until the latent is at least
  :data:`MIN_LATENT_SIDE` cells a side; latent channels scaled with the image channels (grey data: a third);
- **batch**: the row's, halved while the estimated training memory is over :data:`MEMORY_SHARE` of the
  device's, at most the training images, at least :data:`MIN_BATCH`;
- **steps**: the stage's share of the budget (:data:`SHARES`) times the row's measured images per second
  (times 0.96 per GPU: DDP ran 1.92x on 2), over the batch; at most the preset's steps and
  :data:`MAX_EPOCHS` passes over the data (that cap never below :data:`EPOCH_CAP_FLOOR` steps). Each trainer also
  gets its share as ``train.max_minutes``, so a slow device stops on time rather than late;
- **held out**: 10% of the images (at least :data:`MIN_HELD_OUT`) for the evaluation, which scores up to 10
  generated images per held-out one (at most 5,000, and what half the budget left after training can sample).

A plan under :data:`MIN_AE_STEPS` / :data:`MIN_LDM_STEPS` steps is too short to learn anything; when every size
is, the budget is refused in one line, as is a device on which even the smallest plan does not fit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ldmkit.autoencoders.config import AutoencoderConfig
from ldmkit.autoencoders.losses import AutoencoderLossConfig
from ldmkit.conditioning import ConditionerConfig
from ldmkit.config import from_dict, option, to_dict
from ldmkit.config.loading import read_yaml, resolve_preset
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.schedules import ScheduleConfig
from ldmkit.errors import ConfigError
from ldmkit.fit.conditioning import conditioner_config
from ldmkit.fit.estimates import DeviceInfo, Estimate, estimate, overhead_seconds
from ldmkit.fit.survey import DataSurvey
from ldmkit.fit.table import PlanRow, rows_for

SIDES = (256, 128, 64, 32, 16)
MIN_LATENT_SIDE = 8
MIN_BATCH = 8
MEMORY_SHARE = 0.85  # of the device's memory a plan may use (the rest: allocator slack, data, other processes)
MIN_AE_STEPS = 200
MIN_LDM_STEPS = 500
# On a GPU, fewer diffusion training images than this at one size (steps x batch) and a smaller size is planned
# instead, where it gets them. A judgement between two runs (docs/results/fit.md): the emoji folder at 128 px
# trained 507 x 64 (32 k) in a 5-minute fit and scored FD-EffLite0 253; the 64 px emoji text model of
# docs/results/ldm.md trained 2,123 x 128 (272 k) and scored 69.7. A data set so small that it passes
# MAX_EPOCHS sooner needs only those passes. CPU plans are too slow for any such number: they keep the size.
GOOD_LDM_IMAGES = 100_000
MIN_HELD_OUT = 2  # two images at least, so Fréchet statistics exist
# Shares of the budget: (autoencoder, diffusion); the rest is start-up, latent encoding and evaluation.
SHARES = {"train": (0.30, 0.55), "reuse": (0.0, 0.80)}
DDP_EFFICIENCY = 0.96
# Passes over the training images beyond which more steps are not planned: about what the presets made on their
# data (fluent-emoji-64: 84 autoencoder and 1,264 diffusion epochs; Fashion-MNIST: 17 and 85).
MAX_EPOCHS = {"ae": 100, "ldm": 1000}
# Steps the MAX_EPOCHS cap never stops a stage before: on a folder of 49 photos, 100 epochs were 153 steps, and
# the first stage stopped at 108 reconstructed worse than bicubic (17.2 against 22.9 dB); 632 steps on the emoji
# folder beat it (27.3 against 25.8; docs/results/fit.md).
EPOCH_CAP_FLOOR = {"ae": 1000, "ldm": MIN_LDM_STEPS}  # both at least the stage's minimum
EVAL_SHARE = 0.5  # of the budget left after training, for sampling the scored images


@dataclass(frozen=True)
class StagePlan:
    """One trainer's share of the plan."""

    batch: int = option(32, help="images per step on each process", min=1)
    steps: int = option(1000, help="optimiser steps", min=1)
    minutes: float = option(0.0, help="train.max_minutes of the stage (0: no limit)", min=0.0)
    lr: float = option(1e-4, help="learning rate (the preset's)", min=0.0)
    warmup_steps: int = option(0, help="learning-rate warm-up steps", min=0)


@dataclass(frozen=True)
class EvalPlan:
    """What the evaluation stage measures."""

    feature: str = option("efflite0", help="feature network of FD / precision / recall (random-conv: tests)")
    samples: int = option(1000, help="generated images scored against the held-out split", min=2)
    reconstructions: int = option(500, help="held-out images the autoencoder and bicubic reconstruct", min=1)
    sampler: str = option("dpm++2m", help="sampler of the scored samples and the grid")
    sampler_steps: int = option(25, help="sampling steps", min=1)
    batch: int = option(0, help="samples drawn at once; 0: the diffusion batch (sampling, even at twice it for "
                                "guidance, needs less memory than training)", min=0)
    guidance: float = option(2.0, help="classifier-free guidance of conditional models", min=0.0)
    grid_seeds: int = option(4, help="samples per class or caption in the grid", min=1)
    grid_conditions: int = option(10, help="classes or captions in the grid", min=1)
    lpips: bool = option(True, help="LPIPS in the reconstruction scores (needs `ldm assets fetch lpips`)")
    lpips_net: Literal["vgg16", "alex"] = option("vgg16", help="LPIPS network of the reconstruction scores (alex: "
                                                              "the LPIPS authors' default for evaluation)")


@dataclass(frozen=True)
class Plan:
    """Everything the stages of ``ldm fit`` are built from; written to RUN/plan.json."""

    row: str = option("", help="the table row the plan comes from")
    device: str = option("cpu", help="cpu or gpu")
    gpus: int = option(1, help="processes (one per GPU)", min=1)
    resolution: int = option(32, help="image side in pixels", min=8)
    channels: int = option(3, help="image channels (1: grey)", choices=(1, 3))
    val_fraction: float = option(0.1, help="held-out fraction for the evaluation", min=0.0, max=0.9)
    budget_minutes: float = option(0.0, help="the time budget (--time)", min=0.0)
    autoencoder_dir: str = option("", help="a first stage to reuse (--autoencoder) instead of training one")
    init_from: str = option("", help="an LDM model directory whose weights the diffusion stage starts from")
    autoencoder: AutoencoderConfig = option(default_factory=AutoencoderConfig, help="the first stage")
    ae_loss: AutoencoderLossConfig = option(default_factory=AutoencoderLossConfig, help="its losses")
    ae: StagePlan = option(default_factory=StagePlan, help="autoencoder training")
    unet: UNetConfig = option(default_factory=UNetConfig, help="the denoiser")
    conditioner: ConditionerConfig = option(default_factory=ConditionerConfig, help="what it is conditioned on")
    schedule: ScheduleConfig = option(default_factory=ScheduleConfig, help="noise schedule")
    ema_decay: float = option(0.999, help="EMA decay of the denoiser", min=0.0, max=1.0)
    ldm: StagePlan = option(default_factory=StagePlan, help="diffusion training")
    eval: EvalPlan = option(default_factory=EvalPlan, help="evaluation")
    estimate: Estimate = option(default_factory=Estimate, help="expected time and memory (recomputed)")
    source: str = option("", help="where the row's numbers come from")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.autoencoder.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.downsample_factor
        return self.autoencoder.latent_channels, side, side

    @property
    def trains_autoencoder(self) -> bool:
        return not self.autoencoder_dir

    @property
    def sampling_batch(self) -> int:
        """Samples the evaluation draws at once: ``eval.batch``, else the diffusion batch. Sampling 16 at a time
        drew 40 img/s on an H200 (docs/results/fit.md); the trained batch is known to fit in memory."""
        return self.eval.batch or self.ldm.batch


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for, beside the data and the device."""

    budget_seconds: float
    conditioning: str  # captions, labels or none (fit.conditioning)
    autoencoder_dir: str = ""
    init_from: str = ""
    init_config: dict[str, Any] | None = field(default=None, compare=False)  # the init model's config.json
    autoencoder_config: dict[str, Any] | None = field(default=None, compare=False)  # a reused first stage's


def make_plan(survey: DataSurvey, device: DeviceInfo, request: PlanRequest) -> Plan:
    """The largest plan that fits ``device`` and the budget (see the module text); a one-line ConfigError
    when none does."""
    rows = rows_for(device.kind)
    sides = [s for s in SIDES if s <= survey.short_side and s <= rows[-1].resolution]
    if not sides:
        smallest = min(SIDES)
        if survey.short_side < smallest:
            raise ConfigError(f"the images are {survey.short_side} px on their shorter side (median); ldm fit needs "
                              f"at least {smallest} px")
        sides = [rows[-1].resolution]
    if request.autoencoder_config is not None:  # a reused first stage fixes the resolution's f and latent
        sides = [s for s in sides if s // _reused_f(request) >= MIN_LATENT_SIDE] or sides[-1:]
    too_slow, too_big, brief = [], [], []
    for side in sides:
        row = next(r for r in rows if r.resolution >= side)
        plan = _plan_at(row, side, survey, device, request)
        if plan is None:
            too_big.append((row, side))
            continue
        if plan.ldm.steps < MIN_LDM_STEPS or (plan.trains_autoencoder and plan.ae.steps < MIN_AE_STEPS):
            too_slow.append(plan)
            continue
        if device.kind == "gpu" and plan.ldm.steps < _enough_ldm_steps(plan, survey):
            brief.append(plan)
            continue
        return plan
    if brief:  # no size trains long enough: the one that trains most, the smallest
        return brief[-1]
    if not too_slow:
        row, side = too_big[-1]
        raise ConfigError(f"the {device.describe()} is too small for the smallest plan ({row.name} at {side} px, "
                          f"batch {MIN_BATCH}, needs about {_gib(_smallest_need(row, side, survey, device, request))}"
                          f" GiB); use a device with more memory")
    smallest = too_slow[-1]
    need = _minutes_needed(smallest, device, survey)
    raise ConfigError(f"a time budget of {_minutes(request.budget_seconds / 60)} is too small for any plan: the "
                      f"smallest ({smallest.row} at {smallest.resolution} px, {MIN_AE_STEPS if smallest.trains_autoencoder else 0}"
                      f" autoencoder and {MIN_LDM_STEPS} diffusion steps) needs about {_minutes(need)}; "
                      f"give --time {math.ceil(need)}m or more")


def replan(plan: Plan, overrides: list[str], device: DeviceInfo, survey: DataSurvey) -> Plan:
    """``plan`` with ``key.sub=value`` overrides applied (validated) and its estimate recomputed."""
    from ldmkit.config.loading import apply_overrides

    if not overrides:
        return plan
    changed = from_dict(Plan, apply_overrides(to_dict(plan), overrides))
    return dataclasses.replace(changed, estimate=estimate(changed, device, survey.count))


def _reused_f(request: PlanRequest) -> int:
    config = request.autoencoder_config or {}
    return 2 ** (len(config.get("channel_mult", (1,))) - 1)


def _preset(group: str, name: str) -> dict[str, Any]:
    return read_yaml(resolve_preset(name, group))


def _first_stage(row: PlanRow, side: int, channels: int) -> AutoencoderConfig:
    """The row's autoencoder for ``channels``-channel images of ``side`` px, f lowered to keep the latent."""
    preset = from_dict(AutoencoderConfig, _preset("autoencoder", row.autoencoder_preset)["model"])
    mult = tuple(preset.channel_mult)
    while len(mult) > 1 and side // 2 ** (len(mult) - 1) < MIN_LATENT_SIDE:
        mult = mult[:-1]
    latent = max(1, preset.latent_channels * channels // preset.in_channels)
    return dataclasses.replace(preset, channel_mult=mult, in_channels=channels, out_channels=channels,
                               latent_channels=latent)


def _unet(row: PlanRow, latent_side: int, request: PlanRequest) -> tuple[UNetConfig, ScheduleConfig, float, dict]:
    preset = _preset("diffusion", row.diffusion_preset)
    if request.init_config is not None:  # fine-tuning keeps the model's own networks
        unet = from_dict(UNetConfig, request.init_config["unet"])
        schedule = from_dict(ScheduleConfig, request.init_config["schedule"])
        return unet, schedule, float(preset.get("ema_decay", 0.999)), preset.get("train", {})
    unet = dataclasses.replace(from_dict(UNetConfig, preset["unet"]), **dict(row.unet))
    mult = tuple(unet.channel_mult)
    while len(mult) > 1 and latent_side % 2 ** (len(mult) - 1):  # every level must halve the latent evenly
        mult = mult[:-1]
    unet = dataclasses.replace(unet, channel_mult=mult,
                               attention_resolutions=tuple(a for a in unet.attention_resolutions
                                                           if a < 2 ** len(mult)) or (2 ** (len(mult) - 1),))
    schedule = from_dict(ScheduleConfig, preset.get("schedule", {}))
    return unet, schedule, float(preset.get("ema_decay", 0.999)), preset.get("train", {})


def _first_stage_loss(ae_preset: dict[str, Any], side: int) -> AutoencoderLossConfig:
    """The preset's loss; its LPIPS backbone swapped for VGG16 when the images are too small for it (AlexNet
    needs 32 px, VGG16 16 px), so a folder of 16-31 px images trains instead of stopping at the first step."""
    from ldmkit.autoencoders.lpips import _MIN_SIDE as LPIPS_MIN_SIDE

    loss = from_dict(AutoencoderLossConfig, ae_preset.get("loss", {}))
    if loss.perceptual_weight > 0 and side < LPIPS_MIN_SIDE[loss.perceptual_net]:
        loss = dataclasses.replace(loss, perceptual_net="vgg16")
    return loss


def held_out_fraction(count: int) -> float:
    return min(0.5, max(0.1, MIN_HELD_OUT / count))


def train_images(count: int, val_fraction: float) -> int:
    """Images left for training when ``val_fraction`` of ``count`` is held out (at least one is)."""
    return count - max(1, round(val_fraction * count))


def _plan_at(row: PlanRow, side: int, survey: DataSurvey, device: DeviceInfo, request: PlanRequest) -> Plan | None:
    """The plan of ``row`` at ``side`` px, or None when not even :data:`MIN_BATCH` fits the memory."""
    if request.autoencoder_config is not None:
        first = from_dict(AutoencoderConfig, request.autoencoder_config)
    else:
        first = _first_stage(row, side, survey.channels)
    ae_preset = _preset("autoencoder", row.autoencoder_preset)
    latent_side = side // 2 ** (len(first.channel_mult) - 1)
    unet, schedule, ema_decay, ldm_train = _unet(row, latent_side, request)
    if request.init_config is not None:
        conditioner = from_dict(ConditionerConfig, request.init_config["conditioner"])
    else:
        conditioner = conditioner_config(request.conditioning, survey, text_width=128)
    val_fraction = held_out_fraction(survey.count)
    train_count = train_images(survey.count, val_fraction)
    share_ae, share_ldm = SHARES["reuse" if request.autoencoder_dir else "train"]
    # The evaluation's scored samples grow with the data, up to the 5,000 of docs/results.
    held_out = survey.count - train_count
    usable = max(0.0, request.budget_seconds - overhead_seconds(row, device, survey.count))
    other = (1 - share_ae - share_ldm) * usable
    affordable = int(EVAL_SHARE * other * 2 * row.ldm_img_per_s * _parallel(device.gpus) / EvalPlan().sampler_steps)
    samples = max(2, min(5000, 10 * held_out, affordable))
    plan = Plan(
        row=row.name, device=device.kind, gpus=device.gpus, resolution=side, channels=survey.channels,
        val_fraction=val_fraction, budget_minutes=request.budget_seconds / 60, autoencoder_dir=request.autoencoder_dir,
        init_from=request.init_from, autoencoder=first, ae_loss=_first_stage_loss(ae_preset, side),
        ae=StagePlan(batch=row.ae_batch, lr=float(ae_preset["train"].get("lr", 1e-4))),
        unet=unet, conditioner=conditioner, schedule=schedule, ema_decay=ema_decay,
        ldm=StagePlan(batch=row.ldm_batch, lr=float(ldm_train.get("lr", 1e-4)),
                      warmup_steps=int(ldm_train.get("warmup_steps", 0))),
        eval=EvalPlan(samples=samples,
                      grid_conditions=min(10, max(1, len(survey.class_names)))),
        source=row.source,
    )
    limit = MEMORY_SHARE * device.memory_bytes
    batches = {}
    for stage, preset_steps in (("ae", int(ae_preset["train"]["steps"])), ("ldm", int(ldm_train.get("steps", 1000)))):
        batch = min(getattr(plan, stage).batch, _floor_pow2(train_count))
        while batch > MIN_BATCH and _stage_memory(plan, stage, batch, device) > limit:
            batch //= 2
        if _stage_memory(plan, stage, batch, device) > limit:
            return None
        share = share_ae if stage == "ae" else share_ldm
        img_per_s = (row.ae_img_per_s if stage == "ae" else row.ldm_img_per_s) * _parallel(device.gpus)
        seconds = share * usable
        steps = int(seconds * img_per_s / (batch * device.gpus))
        minimum = MIN_AE_STEPS if stage == "ae" else MIN_LDM_STEPS
        if steps >= minimum:  # more time than data: stop at the preset's steps or MAX_EPOCHS passes
            epochs = math.ceil(MAX_EPOCHS[stage] * train_count / (batch * device.gpus))
            steps = min(steps, preset_steps, max(EPOCH_CAP_FLOOR[stage], epochs))
        batches[stage] = dataclasses.replace(getattr(plan, stage), batch=batch, steps=max(1, steps),
                                             minutes=round(seconds / 60, 2))
    if not plan.trains_autoencoder:
        batches["ae"] = dataclasses.replace(batches["ae"], steps=1, minutes=0.0)
    plan = dataclasses.replace(plan, ae=batches["ae"], ldm=batches["ldm"])
    return dataclasses.replace(plan, estimate=estimate(plan, device, survey.count, row))


def _enough_ldm_steps(plan: Plan, survey: DataSurvey) -> int:
    """Diffusion steps below which a smaller image size is the better use of the budget (GOOD_LDM_IMAGES)."""
    per_step = plan.ldm.batch * plan.gpus
    images = min(GOOD_LDM_IMAGES, MAX_EPOCHS["ldm"] * train_images(survey.count, plan.val_fraction))
    return math.ceil(images / per_step)


def _stage_memory(plan: Plan, stage: str, batch: int, device: DeviceInfo) -> int:
    from ldmkit.fit.estimates import training_bytes

    return training_bytes(plan, stage, batch, device)


def _smallest_need(row: PlanRow, side: int, survey: DataSurvey, device: DeviceInfo, request: PlanRequest) -> int:
    first = _first_stage(row, side, survey.channels)
    unet, *_ = _unet(row, side // 2 ** (len(first.channel_mult) - 1), request)
    plan = Plan(resolution=side, channels=survey.channels, autoencoder=first, unet=unet)
    return max(_stage_memory(plan, "ae", MIN_BATCH, device), _stage_memory(plan, "ldm", MIN_BATCH, device))


def _minutes_needed(plan: Plan, device: DeviceInfo, survey: DataSurvey) -> float:
    """Minutes of budget that give ``plan``'s row the minimum steps."""
    from ldmkit.fit.table import rows_for

    row = next(r for r in rows_for(device.kind) if r.name == plan.row)
    share_ae, share_ldm = SHARES["reuse" if plan.autoencoder_dir else "train"]
    speed = _parallel(device.gpus)
    need = MIN_LDM_STEPS * plan.ldm.batch * device.gpus / (row.ldm_img_per_s * speed) / share_ldm
    if plan.trains_autoencoder:
        need = max(need, MIN_AE_STEPS * plan.ae.batch * device.gpus / (row.ae_img_per_s * speed) / share_ae)
    return (need + overhead_seconds(row, device, survey.count)) / 60


def _parallel(gpus: int) -> float:
    return gpus * (DDP_EFFICIENCY if gpus > 1 else 1.0)


def _floor_pow2(n: int) -> int:
    return 2 ** int(math.log2(max(1, n)))


def _gib(count: float) -> str:
    return f"{count / 2**30:.1f}"


def _minutes(minutes: float) -> str:
    return f"{minutes * 60:.0f}s" if minutes < 1 else f"{minutes:.1f} min"


__all__ = ["EvalPlan", "Plan", "PlanRequest", "StagePlan", "held_out_fraction", "make_plan", "replan"]
