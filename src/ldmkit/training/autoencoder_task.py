"""Training the first stage (paper §3.1): L1/L2 + LPIPS + patch adversarial loss, two alternating optimisers.

After the last step the latent scale is measured: 1/std of the latents of a sample of the training
data, stored in the model's config so ``encode()`` returns unit-variance latents for the diffusion stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder
from ldmkit.autoencoders.build import latent_statistics, set_latent_scale
from ldmkit.autoencoders.discriminator import NLayerDiscriminator
from ldmkit.autoencoders.losses import AutoencoderLossConfig, build_autoencoder_loss
from ldmkit.config import option, to_dict
from ldmkit.data import DataConfig
from ldmkit.errors import ConfigError
from ldmkit.io.images import make_grid, to_unit
from ldmkit.training.config import TrainConfig
from ldmkit.training.distributed import average_gradients_of, no_sync, wrap
from ldmkit.training.init_from import load_component, read_init
from ldmkit.training.loop import StepContext, Task
from ldmkit.training.optimizers import build_optimizer
from ldmkit.training.trainable import AUTOENCODER_PARTS, freeze_parts, trainable_parameters


@dataclass(frozen=True)
class AutoencoderExperiment:
    """Everything `ldm train autoencoder` reads from its YAML file."""

    data: DataConfig = option(default_factory=DataConfig, help="training images")
    model: AutoencoderConfig = option(default_factory=AutoencoderConfig, help="the autoencoder")
    loss: AutoencoderLossConfig = option(default_factory=AutoencoderLossConfig, help="reconstruction losses")
    train: TrainConfig = option(default_factory=TrainConfig, help="optimisation and run directory")
    scale_samples: int = option(512, help="training images encoded to measure the latent scale 1/std (0 keeps the "
                                          "model's: 1, or train.init_from's)", min=0)

    def __post_init__(self) -> None:
        # Only a discriminator this run reaches (disc_start within train.steps) has to fit the images.
        runs = self.loss.disc_weight > 0 and self.loss.disc_factor > 0 and self.loss.disc_start < self.train.steps
        if runs and NLayerDiscriminator.output_side(self.data.resolution, self.loss.disc_layers) < 1:
            raise ConfigError(
                f"loss.disc_layers={self.loss.disc_layers} is too deep for data.resolution={self.data.resolution}: "
                "the PatchGAN would shrink the images to nothing; lower loss.disc_layers or raise the resolution")
        part = self.train.trainable
        if part not in ("all", "encoder", "decoder"):
            raise ConfigError(f"train.trainable={part} is a part of a latent diffusion model; the autoencoder "
                              "trainer trains all, encoder or decoder")
        if part != "all" and self.model.kind == "identity":
            raise ConfigError("train.trainable: the identity first stage (f = 1) has no weights to train")
        if part == "encoder" and self.model.kind == "vq" and self.model.ema:
            raise ConfigError("train.trainable=encoder freezes the codebook, which model.ema=true updates by moving "
                              "averages: set model.ema=false, or train.trainable=all")


class AutoencoderTask(Task):
    name = "autoencoder"

    def __init__(self, experiment: AutoencoderExperiment, dataset: Any):
        self.experiment = experiment
        self.dataset = dataset
        self.model_config = experiment.model

    def setup(self, device: torch.device, train: TrainConfig) -> None:
        self.device = device
        self.model = build_autoencoder(self.model_config).to(device)
        if train.init_from:
            init = read_init(train.init_from, "autoencoder")
            load_component(self.model, init, "model")
            # Its latent scale too: with the encoder frozen the latents, and so their scale, stay its own.
            scale, shift = init.config.get("scale_factor", 1.0), init.config.get("shift_factor", 0.0)
            self.model.set_latent_scale(float(scale), float(shift))
        freeze_parts(self.model, AUTOENCODER_PARTS, train.trainable)
        self.trainable = train.trainable
        self.loss = build_autoencoder_loss(self.experiment.loss, image_channels=self.model_config.in_channels).to(device)
        if device.type == "cuda" and train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Several processes: the autoencoder and the discriminator train in DistributedDataParallel. The loss
        # keeps the plain discriminator (the generator step runs it with frozen weights); the wrapper stands in
        # only for the discriminator's own update (see _discriminator_update). Checkpoints see plain modules.
        if train.parallel != "ddp":  # the adaptive GAN weight needs the decoder's full last-layer gradients
            raise ConfigError(f"train.parallel={train.parallel} is for the diffusion trainer; "
                              "train the autoencoder with train.parallel=ddp")
        self.network = wrap(self.model, device)
        self.ddp_discriminator = wrap(self.loss.discriminator, device)
        average_gradients_of(self.loss.generator_parameters())  # the learned log-variance lives outside DDP
        betas = (0.5, 0.9)
        generator = trainable_parameters(self.model.parameters(), train.trainable) + list(
            self.loss.generator_parameters())
        self.opt_g = build_optimizer(train.optimizer, generator, lr=train.lr, betas=betas, decoupled=False,
                                     device=device)
        self.opt_d = build_optimizer(train.optimizer, self.loss.discriminator_parameters(), lr=train.lr, betas=betas,
                                     decoupled=False, device=device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model, "loss": self.loss}

    def train_step(self, batch: dict[str, Any], step: int, ctx: StepContext) -> dict[str, Any]:
        x = batch["image"]  # [B, 3, H, W] in [-1, 1]
        with ctx.autocast():
            reconstruction, aux = self.network(x)  # [B, 3, H, W]
            g_loss, logs = self.loss.generator_loss(x, reconstruction, aux, step, self._last_layer())
        ctx.step("generator", g_loss)
        if self.loss.discriminator_active(step):
            with ctx.autocast(), self._discriminator_update():
                d_loss, d_logs = self.loss.discriminator_loss(x, reconstruction.detach(), step)
            ctx.step("discriminator", d_loss)
            logs.update(d_logs)
        return logs

    def no_sync(self):
        return no_sync(self.network, self.ddp_discriminator)

    @contextlib.contextmanager
    def _discriminator_update(self) -> Iterator[None]:
        """Let the loss run the DDP-wrapped discriminator (gradients averaged over ranks) for its own update."""
        plain = self.loss.discriminator
        if self.ddp_discriminator is plain:
            yield
            return
        self.loss.discriminator = self.ddp_discriminator
        try:
            yield
        finally:
            self.loss.discriminator = plain

    @torch.no_grad()
    def images(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        x = batch["image"][:8]
        self.model.eval()
        reconstruction = self.model.decode(self.model.encode(x))
        self.model.train()
        pairs = torch.stack([x, reconstruction.to(x.dtype)], dim=1).flatten(0, 1)  # [2B, 3, H, W]: input, recon
        return {"reconstruction": make_grid(to_unit(pairs), nrow=8)}

    def _last_layer(self) -> torch.Tensor | None:
        """The decoder's last weight for the adaptive GAN weight; None (λ = loss.disc_weight) when the decoder is
        frozen and so has no gradient to compare."""
        last = self.model.last_layer
        return last if last is not None and last.requires_grad else None

    def finish(self, run_dir: Path) -> None:
        """Measure the latent scale (§3.1: rescale latents to unit variance) on training images; a frozen encoder
        keeps the scale it came with (its latents have not changed)."""
        count = min(self.experiment.scale_samples, len(self.dataset))
        if count == 0 or self.model_config.kind == "identity" or self.trainable == "decoder":
            return
        from torch.utils.data import DataLoader, Subset

        batch = self.experiment.train.batch_size
        loader = DataLoader(Subset(self.dataset, range(count)), batch_size=batch, shuffle=False)
        self.model.eval()
        _, std = latent_statistics(self.model, (b["image"] for b in loader),
                                   generator=torch.Generator(self.device).manual_seed(0))
        set_latent_scale(self.model, std)
        print(f"latent std {std:.4f}: scale_factor = {1.0 / std:.4f}")

    def write_model(self, directory: Path) -> None:
        save_autoencoder(directory, self.model, extra={"data": to_dict(self.experiment.data)})
