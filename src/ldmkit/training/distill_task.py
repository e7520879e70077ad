"""Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", §4, Algorithm 1).

A trained model (the teacher) is distilled into a student that samples in 1–4 steps with the consistency
sampler (``--sampler lcm``). Per training pair — a timestep t of the skipping-step ladder and s = t - k below
it (k = ``skip``) — the teacher takes one DDIM step from x_t to x_s under classifier-free guidance w, the
student maps x_t to its consistency estimate f_θ(x_t, w, t), and the target network (an EMA of the student, θ⁻)
maps the teacher's x_s to f_θ⁻(x_s, w, s); the loss is their pseudo-Huber distance. w ~ U[w_min, w_max] is an
input of the student (``guidance_embed``), so guidance is folded into it: the student samples guided images in
one network pass per step. The student starts as a copy of the teacher with a zero guidance embedding.

With ``lora.rank > 0`` the student is LCM-LoRA instead (Luo et al. 2023, "LCM-LoRA", §3): the teacher itself with
low-rank adapters, the only weights that train. It takes no w (guidance is folded in at the w the training drew,
so it samples with guidance 1), its target is the student itself without gradient (no EMA copy), and the result
is an adapter file that turns the teacher, or another fine-tune of the same base, into a few-step sampler:
``ldm sample --model M --lora OUT/model/adapters/NAME.safetensors --sampler lcm --steps 4 --guidance 1``.

Data: the teacher's own training data (its recorded experiment), or ``latents``/``data`` given here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from ldmkit.adapters.config import LoraConfig
from ldmkit.adapters.training import add_trained_lora, write_lora_model
from ldmkit.conditioning.types import Conditioning
from ldmkit.config import from_dict, load_config, option, to_dict
from ldmkit.data import DataConfig, build_dataset
from ldmkit.data.latents import LatentDataset, check_cache_autoencoder, read_latent_index
from ldmkit.diffusion.consistency import consistency_output, skipping_timesteps
from ldmkit.diffusion.losses import elementwise_loss
from ldmkit.diffusion.noise import rand, randint, randn
from ldmkit.diffusion.schedules import broadcast_per_sample
from ldmkit.errors import ConfigError
from ldmkit.io import read_model_dir
from ldmkit.io.images import make_grid, to_unit
from ldmkit.model import LatentDiffusionModel
from ldmkit.model.directory import AUTOENCODER_DIR
from ldmkit.training.config import TrainConfig
from ldmkit.training.distributed import wrap
from ldmkit.training.ema import EMA
from ldmkit.training.loop import StepContext, Task, train
from ldmkit.training.optimizers import build_optimizer


@dataclass(frozen=True)
class DistillExperiment:
    """Everything `ldm distill` reads (``key=value`` overrides; no presets)."""

    model: str = option("", help="the teacher: a model directory written by `ldm train diffusion` (or converted)")
    latents: str | None = option(None, help="latent cache of `ldm encode` (null: the teacher's, else images)")
    data: DataConfig | None = option(None, help="images, when there is no latent cache (null: the teacher's data)")
    guidance_min: float = option(1.0, help="smallest guidance scale w the student learns (LCM: 2 for SD)", min=1.0)
    guidance_max: float = option(4.0, help="largest guidance scale w the student learns (LCM: 14 for SD)", min=1.0)
    skip: int = option(20, help="k of the skipping-step schedule: teacher DDIM steps span k timesteps (LCM: 20)",
                       min=1)
    huber_c: float = option(0.001, help="c of the pseudo-Huber distance sqrt(d² + c²) - c (LCM: 0.001)", min=1e-8)
    target_decay: float = option(0.95, help="EMA decay of the target network θ⁻ (LCM: 0.95)", min=0.0, max=1.0)
    preview_steps: int = option(4, help="consistency-sampler steps of the preview grids", min=1)
    lora: LoraConfig = option(default_factory=LoraConfig,
                              help="rank > 0: distil into LoRA adapters of the teacher (LCM-LoRA), not a new UNet; "
                                   "the adapter is written to OUT/model/adapters/NAME.safetensors")
    train: TrainConfig = option(default_factory=lambda: TrainConfig(lr=1e-5, steps=2000, out="runs/distill"),
                                help="optimisation and run directory")

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("config key 'model' is required: the model directory of the teacher")
        if self.guidance_max < self.guidance_min:
            raise ConfigError(f"guidance_max={self.guidance_max} is below guidance_min={self.guidance_min}")
        if self.lora.enabled and "text_encoder" in self.lora.targets:
            raise ConfigError("lora.targets: an LCM-LoRA adapts the UNet only (the text encoder gives the teacher's "
                              "condition); drop text_encoder")


class _ConsistencyLoss(torch.nn.Module):
    """The student behind one forward that returns the distillation loss (one DDP wrapper averages its
    gradients); the teacher and the target network come along unregistered."""

    def __init__(self, student: torch.nn.Module, teacher: LatentDiffusionModel, target: torch.nn.Module,
                 experiment: DistillExperiment):
        super().__init__()
        self.student = student
        self._fixed = (teacher, target)  # a tuple: neither trained nor checkpointed through this module
        self.experiment = experiment
        self.ladder = skipping_timesteps(teacher.schedule.num_timesteps, experiment.skip)  # [N] ascending

    def forward(self, z0: torch.Tensor, cond: Conditioning, uncond: Conditioning) -> torch.Tensor:
        teacher, target = self._fixed
        exp, schedule, device, b = self.experiment, teacher.schedule, z0.device, z0.shape[0]
        t = self.ladder.to(device)[randint(len(self.ladder), (b,), device=device)]  # [B] start timesteps
        s = (t - exp.skip).clamp(min=0)  # [B] one teacher step below
        w = exp.guidance_min + (exp.guidance_max - exp.guidance_min) * rand((b,), device=device)  # [B]
        x_t = schedule.add_noise(z0, randn(z0.shape, device=device, dtype=z0.dtype), t)
        # A w-conditioned student is told w; an LCM-LoRA learns the guided flow at the drawn w without it.
        guided = replace(cond, guidance=w) if self.student.config.guidance_embed else cond
        student = teacher.denoiser(self.student)
        estimate = consistency_output(x_t, student(x_t, t, guided).x0, t)  # f_θ(x_t, w, t)
        with torch.no_grad():
            both = teacher.denoiser()(torch.cat([x_t, x_t]), torch.cat([t, t]), Conditioning.cat([cond, uncond]))
            (x0_c, x0_u), (eps_c, eps_u) = both.x0.chunk(2), both.eps.chunk(2)
            scale = broadcast_per_sample(w, z0).to(z0.dtype)
            x0_w, eps_w = x0_u + scale * (x0_c - x0_u), eps_u + scale * (eps_c - eps_u)  # CFG at w
            alpha_s = broadcast_per_sample(schedule.alpha_bar(s, dtype=torch.float32), z0).to(z0.dtype)
            x_s = alpha_s.sqrt() * x0_w + (1 - alpha_s).sqrt() * eps_w  # the teacher's DDIM step t → s
            goal = consistency_output(x_s, teacher.denoiser(target)(x_s, s, guided).x0, s)  # f_θ⁻(x_s, w, s)
        return elementwise_loss(estimate, goal.float(), "huber", exp.huber_c).mean() / (2 * exp.huber_c)


class DistillTask(Task):
    name = "distill"

    def __init__(self, experiment: DistillExperiment, dataset: Any):
        self.experiment = experiment
        self.dataset = dataset

    def setup(self, device: torch.device, train_cfg: TrainConfig) -> None:
        exp = self.experiment
        self.device = device
        self.teacher = LatentDiffusionModel.load(exp.model, device=device)
        if not hasattr(self.teacher.unet.config, "guidance_embed"):
            raise ConfigError(f"the teacher's {type(self.teacher.unet).__name__} takes no guidance embedding; "
                              "distillation needs a UNet teacher")
        if self.teacher.takes_guidance:
            raise ConfigError(f"{exp.model} is already a distilled student; distil its teacher instead")
        self.teacher.conditioner.eval().requires_grad_(False)
        if exp.lora.enabled:  # LCM-LoRA: the teacher's own UNet with adapters; its target is itself
            self.student = copy.deepcopy(self.teacher.unet)
            add_trained_lora(self.student, self.teacher.conditioner, exp.lora, "all")
            self.target_ema, self.target = None, self.student
        else:
            self.student = self._guided_student()
            # θ⁻: a constant-decay EMA of the student (no warm-up: LCM starts it equal to the student at μ = 0.95).
            self.target_ema = EMA(self.student, decay=exp.target_decay, warmup=False)
            self.target = self.target_ema.model
        self.trained = torch.nn.ModuleDict({"unet": self.student})
        self.loss = wrap(_ConsistencyLoss(self.student, self.teacher, self.target, exp), device,
                         parallel=train_cfg.parallel)
        trained = [p for p in self.student.parameters() if p.requires_grad]  # the adapters alone with LoRA
        self.optimizer = build_optimizer(train_cfg.optimizer, trained, lr=train_cfg.lr,
                                         weight_decay=train_cfg.weight_decay, betas=(0.9, 0.999), device=device,
                                         sharded=False)

    def _guided_student(self) -> torch.nn.Module:
        """The teacher's UNet with a zero guidance embedding: it starts as the teacher and learns to take w."""
        student_config = replace(self.teacher.unet.config, guidance_embed=True)
        student = type(self.teacher.unet)(student_config).to(self.device)
        missing, unexpected = student.load_state_dict(self.teacher.unet.state_dict(), strict=False)
        if unexpected or any(not key.startswith("guidance_embedding.") for key in missing):
            raise ConfigError(f"the student does not take the teacher's weights: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
        return student

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def modules(self) -> dict[str, torch.nn.Module]:
        if self.target_ema is None:  # LCM-LoRA: the target is the student
            return {"trained": self.trained}
        return {"trained": self.trained, "target": self.target}

    def _latents_and_conditions(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Conditioning, Conditioning]:
        with torch.no_grad():
            if "latent" in batch:
                z0 = batch["latent"]  # [B, c, h, w], already scaled
            else:
                z0 = self.teacher.autoencoder.encode_distribution(batch["image"].to(self.device)).sample()
            cond = self.teacher.conditioner.encode(batch)
            uncond = self.teacher.conditioner.unconditional_like(cond)  # keeps the concat and size routes
        return z0, cond, uncond

    def train_step(self, batch: dict[str, Any], step: int, ctx: StepContext) -> dict[str, Any]:
        z0, cond, uncond = self._latents_and_conditions(batch)
        with ctx.autocast():
            loss = self.loss(z0, cond, uncond)
        grad_norm = ctx.step("model", loss)
        if ctx.updating and self.target_ema is not None:
            self.target_ema.update(self.student)  # θ⁻ ← μ θ⁻ + (1 - μ) θ
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    @property
    def sampling(self) -> dict[str, Any]:
        """How the student samples (recorded with it)."""
        return {"sampler": "lcm", "steps": self.experiment.preview_steps,
                **({"guidance": 1.0} if self.experiment.lora.enabled else {})}

    def model(self) -> LatentDiffusionModel:
        """The student with the teacher's schedule, conditioner and first stage (with LoRA: the teacher with its
        adapters in place)."""
        teacher = self.teacher
        extra = dict(teacher.extra, distilled_from=str(Path(self.experiment.model).resolve()))
        if not self.experiment.lora.enabled:  # an adapted teacher saves as the plain teacher: its sampling is its own
            extra["sampling"] = self.sampling
        return replace(teacher, unet=self.student, extra=extra,
                       autoencoder_source=Path(self.experiment.model) / AUTOENCODER_DIR)

    @torch.no_grad()
    def images(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        from ldmkit.pipelines.text2img import LatentDiffusionPipeline

        pipe = LatentDiffusionPipeline(self.model())
        takes, n = pipe.conditioning, 8
        inputs: dict[str, Any] = {"n": n}
        if takes.takes_labels:
            inputs = {"class_label": [i % takes.num_classes for i in range(n)]}
        elif takes.takes_text:
            inputs = {"prompt": (list(batch["caption"]) * n)[:n]}
        if takes.concat.present:
            return {}
        guidance = 1.0 if self.experiment.lora.enabled else self.experiment.guidance_max  # LoRA: folded in
        images = pipe(**inputs, sampler="lcm", steps=self.experiment.preview_steps, guidance=guidance, seed=0,
                      output="tensor", progress=False)
        return {"samples": make_grid(to_unit(images), nrow=8)}

    def write_model(self, directory: Path) -> None:
        # The teacher's experiment (its data, sizes) with how the student was distilled from it.
        recorded = dict(self.teacher.extra.get("experiment") or {}, distill=to_dict(self.experiment))
        if self.experiment.lora.enabled:  # the teacher, and the adapter in adapters/ (LCM-LoRA)
            write_lora_model(self.model(), directory, self.experiment.lora, recorded, info={"sampling": self.sampling})
            return
        self.model().save(directory, experiment=recorded)


def _teacher_data(experiment: DistillExperiment) -> tuple[str | None, DataConfig | None]:
    """(latent cache, data config) to distil on: those given, else the teacher's own."""
    if experiment.latents or experiment.data is not None:
        return experiment.latents, experiment.data
    recorded = read_model_dir(experiment.model, kind="ldm").extra.get("experiment") or {}
    if recorded.get("latents") and Path(recorded["latents"]).is_dir():
        return recorded["latents"], None
    if recorded.get("data"):
        return None, from_dict(DataConfig, recorded["data"])
    raise ConfigError(f"{experiment.model} records no training data: give latents=DIR or data.source=… "
                      "(e.g. data.source=folder data.path=…)")


def run_distillation(overrides: Iterable[str]) -> Path:
    """`ldm distill`: load the teacher, pick its data (or the given one), distil, write the student."""
    experiment = load_config(DistillExperiment, None, list(overrides))
    latents, data = _teacher_data(experiment)
    if latents:
        check_cache_autoencoder(latents, read_latent_index(latents), Path(experiment.model) / AUTOENCODER_DIR)
        dataset = LatentDataset(latents)
    else:
        dataset = build_dataset(data, split="train")
    return train(DistillTask(experiment, dataset), experiment.train, dataset, experiment)


__all__ = ["DistillExperiment", "DistillTask", "run_distillation"]
