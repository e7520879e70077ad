"""Training the latent diffusion model (paper §3.2–3.3) on latents of a frozen first stage.

Latents come from a cache written by ``ldm encode`` (fast: the autoencoder runs once) or are encoded
on the fly from images. The UNet's input/output channels and conditioning widths are derived from the
autoencoder and the conditioner, so a preset only chooses sizes. An EMA of the denoiser (and of a jointly
trained text encoder) is what sampling, previews and the saved model use. An inpainting model's training
masks are drawn with the items, in the data-loader workers (:func:`training_dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Literal

import torch
from torch.utils.data import IterableDataset

from ldmkit.adapters.config import LoraConfig
from ldmkit.autoencoders import load_autoencoder
from ldmkit.conditioning import ConditionerConfig, build_conditioner, load_conditioner
from ldmkit.config import load_config, option, to_dict
from ldmkit.data import DataConfig, build_dataset, dataset_captions
from ldmkit.data.latents import check_cache_autoencoder, LatentDataset, read_latent_index
from ldmkit.data.captions import CaptionConfig, CaptionedItems, ChainedHooks, ItemCaptions
from ldmkit.data.masked import ItemMasks, MaskedItems
from ldmkit.denoisers.dit_config import DiTConfig
from ldmkit.denoisers.registry import BACKBONES
from ldmkit.denoisers.unet_config import UNetConfig
from ldmkit.diffusion.losses import diffusion_loss
from ldmkit.diffusion.schedules import NoiseSchedule, ScheduleConfig
from ldmkit.diffusion.timestep_sampling import TimestepConfig
from ldmkit.errors import ConfigError
from ldmkit.io import load_weights, read_model_dir
from ldmkit.io.images import make_grid, to_unit
from ldmkit.model import LatentDiffusionModel
from ldmkit.runtime import autocast_dtype, is_main_process
from ldmkit.training.config import TrainConfig
from ldmkit.training.distributed import ema_of, is_sharded, no_sync, wrap
from ldmkit.training.dreambooth import ClassImages, DreamBoothConfig, InstanceCaptions
from ldmkit.training.init_from import check_same_autoencoder, load_component, read_init
from ldmkit.training.optimizers import build_optimizer
from ldmkit.training.trainable import trainable_parameters
from ldmkit.adapters.training import add_trained_lora, write_lora_model
from ldmkit.training.loop import StepContext, Task, train
from ldmkit.training.posthoc_ema import PosthocEMAConfig, PowerEMA, gamma_from_sigma_rel, write_snapshot
from ldmkit.training.validation import HeldOut, ValidationConfig, validation_scores


@dataclass(frozen=True)
class PreviewConfig:
    """Fixed-seed sample grids written during training."""

    prompts: tuple[str, ...] = option((), help="captions sampled for text models (empty: captions of the data)")
    classes: tuple[int, ...] = option((), help="class labels sampled for class models (empty: the first classes)")
    count: int = option(8, help="images per grid", min=1)
    sampler: str = option("dpm++2m", help="sampler for previews (see `ldm sample --help`)")
    steps: int = option(20, help="sampling steps for previews", min=1)
    guidance: float = option(3.0, help="classifier-free guidance scale for previews", min=0.0)
    seed: int = option(0, help="noise seed of the previews", min=0)


@dataclass(frozen=True)
class DiffusionExperiment:
    """Everything `ldm train diffusion` reads from its YAML file."""

    autoencoder: str = option("", help="model directory of the first stage (output of `ldm train autoencoder`)")
    latents: str | None = option(None, help="latent cache written by `ldm encode` (null: encode images on the fly)")
    data: DataConfig = option(default_factory=DataConfig, help="images (used when latents is null)")
    backbone: Literal["unet", "dit"] = option("unet", help="the denoising network: unet, or dit (diffusion "
                                                         "transformer); its section below sets its sizes")
    unet: UNetConfig = option(default_factory=UNetConfig,
                              help="the UNet (backbone unet); in/out channels and conditioning widths are set "
                                   "automatically")
    dit: DiTConfig = option(default_factory=DiTConfig,
                            help="the diffusion transformer (backbone dit); in/out channels and conditioning "
                                 "widths are set automatically")
    schedule: ScheduleConfig = option(default_factory=ScheduleConfig, help="noise schedule and parameterisation")
    conditioner: ConditionerConfig = option(default_factory=ConditionerConfig, help="conditioning encoder (§3.3)")
    train: TrainConfig = option(default_factory=TrainConfig, help="optimisation and run directory")
    weighting: Literal["simple", "min_snr"] = option("simple", help="loss weighting over timesteps")
    min_snr_gamma: float = option(5.0, help="γ of min-SNR weighting", min=0.0)
    timesteps: TimestepConfig = option(default_factory=TimestepConfig,
                                       help="distribution of training timesteps (uniform, logit_normal, log_normal)")
    offset_noise: float = option(0.0, help="offset noise: add this x N(0,1) per sample and channel to the noise "
                                           "(Guttenberg 2023; 0.05-0.1 is common)", min=0.0)
    multires_noise_levels: int = option(0, help="multi-resolution noise: add this many coarser noise fields "
                                                "(halving the grid each time), rescaled to unit variance (Whitaker "
                                                "2023; sd-scripts' multires_noise_iterations, 6-10 there)", min=0,
                                        max=16)
    multires_noise_discount: float = option(0.3, help="weight ratio of each coarser level (level i: discount^i)",
                                            min=0.0, max=1.0)
    input_perturbation: float = option(0.0, help="γ of input perturbation: the input is noised with noise + γ·ξ, "
                                                 "the target keeps the noise (Ning et al. 2023; 0.1 there)", min=0.0)
    loss: Literal["mse", "huber", "l1"] = option("mse", help="element loss: mse, huber (pseudo-Huber of scale "
                                                            "huber_delta) or l1")
    huber_delta: float = option(0.1, help="δ of the huber loss: squared below, linear above", min=1e-6)
    ema_decay: float = option(0.9999, help="EMA decay of the denoiser weights (with warm-up)", min=0.0, max=1.0)
    preview: PreviewConfig = option(default_factory=PreviewConfig, help="sample grids during training")
    lora: LoraConfig = option(default_factory=LoraConfig, help="train low-rank adapters only (rank > 0); combine "
                                                               "with train.init_from to adapt an existing model")
    dreambooth: DreamBoothConfig = option(default_factory=DreamBoothConfig,
                                          help="concept learning from a few images and a prompt with a rare token, "
                                               "with optional prior preservation")
    captions: CaptionConfig = option(default_factory=CaptionConfig,
                                     help="caption variants per epoch for text models: tag shuffling and dropout, "
                                          "one of several captions per image")
    posthoc_ema: PosthocEMAConfig = option(default_factory=PosthocEMAConfig,
                                           help="two power-function EMAs kept as snapshots, for `ldm ema` to "
                                                "reconstruct the model of any EMA length afterwards")
    validation: ValidationConfig = option(default_factory=ValidationConfig,
                                          help="held-out scores every train.validate_every steps (loss, FD-EffLite0)")

    def __post_init__(self) -> None:
        if not self.autoencoder:
            raise ConfigError("config key 'autoencoder' is required: the model directory of a trained autoencoder")
        self.timesteps.bounds(self.schedule.num_timesteps)  # bounds within the schedule, or a one-line error
        if self.train.trainable not in ("all", "unet", "conditioner"):
            raise ConfigError(f"train.trainable={self.train.trainable} is a part of an autoencoder; the diffusion "
                              "trainer trains all, unet or conditioner")
        self.dreambooth.check(self.conditioner.takes_text)
        if self.latents and self.data.labels:  # a cache is read whole: the option would change nothing
            raise ConfigError(f"data.labels picks items of image data, but latents={self.latents} is a latent cache, "
                              "read whole: encode the cache with data.labels set (ldm encode … data.labels=[…]) and "
                              "leave data.labels out here")


class _DenoisingLoss(torch.nn.Module):
    """The trained networks (denoiser and, when trained jointly, the conditioner) behind one forward that returns
    the diffusion loss, so one DistributedDataParallel wrapper averages all their gradients."""

    def __init__(self, trained: torch.nn.ModuleDict, network: torch.nn.Module, schedule: NoiseSchedule,
                 experiment: DiffusionExperiment):
        super().__init__()
        self.trained = trained
        self._network = (network,)  # the UNet or its compiled form (a tuple: not registered twice)
        self.schedule = schedule
        self.weighting = experiment.weighting
        self.min_snr_gamma = experiment.min_snr_gamma
        # The uniform default goes the way it always went (no TimestepConfig), drawing the same numbers.
        self.timesteps = None if experiment.timesteps == TimestepConfig() else experiment.timesteps
        self.objective = {"offset_noise": experiment.offset_noise, "input_perturbation": experiment.input_perturbation,
                          "multires_noise_levels": experiment.multires_noise_levels,
                          "multires_noise_discount": experiment.multires_noise_discount,
                          "loss": experiment.loss, "huber_delta": experiment.huber_delta}

    def forward(self, z0: torch.Tensor, batch: dict[str, Any], cond: Any, prior: tuple | None = None) -> torch.Tensor:
        loss = self._loss(z0, batch, cond)
        if prior is not None:  # DreamBooth: + λ · the loss on the model's own class images (one forward for DDP)
            prior_z0, prior_batch, prior_cond, weight = prior
            loss = loss + weight * self._loss(prior_z0, prior_batch, prior_cond)
        return loss

    def _loss(self, z0: torch.Tensor, batch: dict[str, Any], cond: Any) -> torch.Tensor:
        if "conditioner" in self.trained:
            cond = self.trained["conditioner"].encode(batch)
        # batch["loss_mask"] [B, 1, H, W], when the data supplies one, weighs the loss per pixel.
        loss, _ = diffusion_loss(self._network[0], z0, cond, self.schedule, weighting=self.weighting,
                                 min_snr_gamma=self.min_snr_gamma, timesteps=self.timesteps,
                                 mask=batch.get("loss_mask"), **self.objective)  # z0: [B, c, h, w]
        return loss


class DiffusionTask(Task):
    name = "diffusion"
    compiles = True

    def __init__(self, experiment: DiffusionExperiment, dataset: Any, captions: Iterable[str] | None):
        self.experiment = experiment
        self.dataset = dataset
        self.captions = captions

    def setup(self, device: torch.device, train_cfg: TrainConfig) -> None:
        exp = self.experiment
        self.device = device
        self.autoencoder = load_autoencoder(exp.autoencoder, device=device).eval().requires_grad_(False)
        # Only concat routes encode images; passing the first stage otherwise would copy it into the EMA.
        first_stage = self.autoencoder.encode if exp.conditioner.concat.present else None
        self.conditioner = build_conditioner(exp.conditioner, captions=self.captions,
                                             first_stage=first_stage).to(device)
        init = read_init(train_cfg.init_from, "ldm") if train_cfg.init_from else None
        if init is not None:
            check_same_autoencoder(init, exp.autoencoder)
            if self.conditioner.trainable:  # its trained weights, and a text encoder's vocabulary with them
                saved = {"config": to_dict(exp.conditioner)}
                if init.extra.get("tokenizer") is not None:
                    saved["tokenizer"] = init.extra["tokenizer"]
                self.conditioner = load_conditioner(load_weights(init, "conditioner"), saved, first_stage=first_stage,
                                                    source=f"train.init_from={init.path} (conditioner)").to(device)
        z_channels = self.autoencoder.latent_channels
        backbone = BACKBONES.get(exp.backbone)
        sizes = {}
        if exp.conditioner.size_conditioning:
            if not hasattr(getattr(exp, backbone.name), "size_embed"):
                raise ConfigError(f"conditioner.size_conditioning needs a backbone with a size embedding (unet); "
                                  f"backbone {backbone.name} has none")
            sizes = {"size_embed": True}
        self.unet_config = replace(
            getattr(exp, backbone.name), in_channels=z_channels, out_channels=z_channels,
            context_dim=self.conditioner.context_dim, vector_dim=self.conditioner.vector_dim,
            concat_channels=self.conditioner.concat_channels, **sizes,
        )
        self.unet = backbone.network_class(self.unet_config).to(device)
        if init is not None:  # a size embedding added for fine-tuning starts at zero
            load_component(self.unet, init, backbone.name, may_add=("size_embedding.",) if sizes else ())
        adapted_text = exp.lora.enabled and add_trained_lora(self.unet, self.conditioner, exp.lora,
                                                             train_cfg.trainable)
        if device.type == "cuda" and train_cfg.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.schedule = NoiseSchedule(exp.schedule)
        trained = torch.nn.ModuleDict({"unet": self.unet})
        self._freeze(train_cfg.trainable)
        if (self.conditioner.trainable and train_cfg.trainable != "unet") or adapted_text:
            trained["conditioner"] = self.conditioner
        self.trained = trained
        self.network = torch.compile(self.unet, mode=train_cfg.compile_mode) if train_cfg.compile else self.unet
        # Several processes: rank 0's weights are broadcast here, so the EMA below starts equal on every rank.
        # With train.parallel=fsdp the UNet is sharded over the processes, and so is its EMA.
        self.denoising_loss = wrap(_DenoisingLoss(trained, self.network, self.schedule, exp), device,
                                   parallel=train_cfg.parallel, param_dtype=autocast_dtype(device, train_cfg.precision))
        self.ema = ema_of(trained, decay=exp.ema_decay)
        posthoc = exp.posthoc_ema  # power-function EMAs of the denoiser for `ldm ema` (EDM2 §3)
        if posthoc.snapshot_every and is_sharded(self.denoising_loss):
            raise ConfigError("posthoc_ema with train.parallel=fsdp is not supported: use ddp, or set "
                              "posthoc_ema.snapshot_every=0")
        self.power_emas = ([PowerEMA(self.unet, gamma_from_sigma_rel(s)) for s in posthoc.sigma_rels]
                           if posthoc.snapshot_every else [])
        # With LoRA only the adapters' A and B are unfrozen, and only they get optimiser state.
        part = "adapters" if exp.lora.enabled else train_cfg.trainable
        self.optimizer = build_optimizer(train_cfg.optimizer, trainable_parameters(trained.parameters(), part),
                                         lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, betas=(0.9, 0.999),
                                         device=device, sharded=is_sharded(self.denoising_loss))
        self.class_images = (ClassImages.made_or_read(Path(train_cfg.out), exp.dreambooth, self.pipeline,
                                                      self.autoencoder) if exp.dreambooth.prior else None)

    def _freeze(self, trainable: str) -> None:
        """``train.trainable``: unet freezes a trainable conditioner (then encoded outside the trained networks,
        like a frozen one); conditioner freezes the denoiser, which stays among the trained networks (its EMA
        copy, equal to it throughout, is what the model is written from)."""
        if trainable == "unet":
            self.conditioner.requires_grad_(False)
        elif trainable == "conditioner":
            if not self.conditioner.trainable:
                raise ConfigError(f"train.trainable=conditioner, but the {self.experiment.conditioner.kind} "
                                  "conditioner has no weights to train; use train.trainable=unet or all")
            self.unet.requires_grad_(False)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"trained": self.trained}

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "power_emas": [ema.state_dict() for ema in self.power_emas]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        for ema, saved in zip(self.power_emas, state.get("power_emas", [])):
            ema.load_state_dict(saved)

    def _latents(self, batch: dict[str, Any]) -> torch.Tensor:
        if "latent" in batch:
            return batch["latent"]  # [B, c, h, w], already scaled
        with torch.no_grad():  # z ~ q(z|x) (§3.1); a deterministic first stage has std 0
            return self.autoencoder.encode_distribution(batch["image"]).sample()

    def train_step(self, batch: dict[str, Any], step: int, ctx: StepContext) -> dict[str, Any]:
        z0 = self._latents(batch)
        prior = None
        with ctx.autocast():
            cond = None if "conditioner" in self.trained else self.conditioner.encode(batch)
            if self.class_images is not None:
                prior_z0, prior_batch = self.class_images.batch(step, z0.shape[0], z0.device)
                prior_cond = None if "conditioner" in self.trained else self.conditioner.encode(prior_batch)
                prior = (prior_z0, prior_batch, prior_cond, self.experiment.dreambooth.prior_loss_weight)
            loss = self.denoising_loss(z0, batch, cond, prior)
        grad_norm = ctx.step("model", loss)
        if ctx.updating:
            self.ema.update(self.trained)
            self._update_power_emas(step + 1)
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    def _update_power_emas(self, t: int) -> None:
        """The two power-function EMAs of post-hoc EMA, and their snapshots (rank 0 writes them)."""
        config = self.experiment.posthoc_ema
        if not config.snapshot_every:
            return
        for ema in self.power_emas:
            ema.update(self.unet, t)
        if t % config.snapshot_every == 0 and is_main_process():
            for ema in self.power_emas:
                write_snapshot(ema, self.run_dir, t)

    def no_sync(self):
        return no_sync(self.denoising_loss)

    @property
    def best_by(self) -> str:
        return self.experiment.validation.best_by

    def validate(self, step: int) -> dict[str, float]:
        """Held-out loss at fixed timesteps and noise (and FD-EffLite0) of the EMA weights (:mod:`.validation`)."""
        if self.conditioner.concat_channels:
            return {}  # image-conditioned models need their task's inputs (masks, low-res images) to be scored
        if getattr(self, "_held_out", None) is None:
            self._held_out = HeldOut.build(self.experiment.validation, self.experiment.data, self.autoencoder,
                                           self.device)
        return validation_scores(self.model(), self._held_out, self.experiment.validation)

    def _preview_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        preview = self.experiment.preview
        n = preview.count
        takes = self.experiment.conditioner
        if takes.takes_text:
            prompts = list(preview.prompts) or list(batch["caption"])[:n]
            return {"prompt": (prompts * n)[:n]}
        if takes.takes_labels:
            classes = list(preview.classes) or list(range(self.experiment.conditioner.num_classes))
            return {"class_label": (classes * n)[:n]}
        return {"n": n}

    @torch.no_grad()
    def images(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        if self.conditioner.concat_channels:
            return {}  # concat-conditioned previews need task inputs; the tasks pipelines cover them
        pipe = self.pipeline()
        preview = self.experiment.preview
        images = pipe(**self._preview_inputs(batch), sampler=preview.sampler, steps=preview.steps,
                      guidance=preview.guidance, seed=preview.seed, output="tensor", progress=False)
        return {"samples": make_grid(to_unit(images), nrow=min(8, images.shape[0]))}

    def model(self) -> LatentDiffusionModel:
        """The model on the current EMA weights (no copy), with the first stage it trains on."""
        ema = self.ema.model
        conditioner = ema["conditioner"] if "conditioner" in ema else self.conditioner
        return LatentDiffusionModel(unet=ema["unet"], schedule=self.schedule, conditioner=conditioner,
                                    autoencoder=self.autoencoder, latent_size=self._latent_size(),
                                    autoencoder_source=Path(self.experiment.autoencoder))

    def pipeline(self):
        """A sampling pipeline on the current EMA weights (no copy, no disk round trip)."""
        from ldmkit.pipelines.text2img import LatentDiffusionPipeline

        return LatentDiffusionPipeline(self.model())

    def _latent_size(self) -> tuple[int, int]:
        if isinstance(self.dataset, LatentDataset):
            shape = self.dataset.index["latent_shape"]
            return int(shape[1]), int(shape[2])
        f = self.autoencoder.downsample_factor
        return self.experiment.data.resolution // f, self.experiment.data.resolution // f

    def write_model(self, directory: Path) -> None:
        if self.experiment.lora.enabled:  # the base model, and the adapter beside it in adapters/
            write_lora_model(self.model(), directory, self.experiment.lora, to_dict(self.experiment))
            return
        self.model().save(directory, experiment=to_dict(self.experiment))


def run_diffusion_training(config: str | None, overrides: Iterable[str]) -> Path:
    """`ldm train diffusion`: load the experiment, pick latents or images, train, write the model."""
    experiment = load_config(DiffusionExperiment, config, overrides, group="diffusion")
    read_model_dir(experiment.autoencoder, kind="autoencoder")  # fail fast on a wrong path
    if experiment.latents:
        check_cache_autoencoder(experiment.latents, read_latent_index(experiment.latents), experiment.autoencoder)
        dataset = LatentDataset(experiment.latents)
        captions = dataset.captions
    else:
        dataset = build_dataset(experiment.data, split="train")
        captions = dataset_captions(dataset) if experiment.conditioner.trains_text_encoder else None
    dreambooth = experiment.dreambooth
    if dreambooth.enabled:
        dataset = InstanceCaptions(dataset, dreambooth.instance_prompt)
        if captions is not None:  # a text encoder trained here learns its words from the captions
            captions = [dreambooth.instance_prompt, dreambooth.class_prompt]
    task = DiffusionTask(experiment, dataset, captions)
    return train(task, experiment.train, training_dataset(experiment, dataset), experiment)


def training_dataset(experiment: DiffusionExperiment, dataset: Any) -> Any:
    """What the training loop iterates: ``dataset``, plus a training ``mask`` per item when the model learns
    inpainting (concat kind masked_image, §4.5), and captions varied per epoch when ``captions`` says so.

    Masks and caption variants are drawn with each item, in the data-loader workers, from (train.seed, epoch, item
    index): a map-style data set is wrapped (:class:`~ldmkit.data.masked.MaskedItems`,
    :class:`~ldmkit.data.captions.CaptionedItems`); streamed shards get the same drawers as their ``item_hook``.
    Another iterable data set is returned unchanged: its batches come without masks, and the conditioner draws
    them in the training process.
    """
    concat, seed = experiment.conditioner.concat, experiment.train.seed
    hooks = []
    if concat.inpainting:
        if isinstance(dataset, LatentDataset):
            raise ConfigError("inpainting (conditioner.concat.kind=masked_image) trains on images, which a latent "
                              "cache does not hold: set latents: null")
        hooks.append(ItemMasks(concat.masks, seed=seed))
    if experiment.captions != CaptionConfig() and experiment.conditioner.takes_text:
        hooks.append(ItemCaptions(experiment.captions, seed=seed))
    if not hooks:
        return dataset
    if isinstance(dataset, IterableDataset):
        if hasattr(dataset, "item_hook"):
            dataset.item_hook = hooks[0] if len(hooks) == 1 else ChainedHooks(*hooks)
        return dataset
    if concat.inpainting:
        dataset = MaskedItems(dataset, concat.masks, seed=seed)
    if len(hooks) > int(concat.inpainting):
        dataset = CaptionedItems(dataset, experiment.captions, seed=seed)
    return dataset
