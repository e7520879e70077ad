"""Training objective of the first stage (paper §3.1, appendix G): reconstruction + perceptual + adversarial.

Generator (autoencoder) side, per step:

    nll     = (ℓ_rec(x, x̂) + w_p · LPIPS(x, x̂)) / exp(s) + s          (s: output log-variance, 0 unless learned)
    L_G     = nll + w_kl · KL(q(z|x) ‖ N(0, I)) + w_cb · L_vq + λ · f_d · L_adv
    λ       = w_d · clamp(‖∇_L nll‖ / (‖∇_L L_adv‖ + 1e-4), 0, λ_max)       (L: the decoder's last layer)

with ``L_adv = −E[D(x̂)]`` (hinge) or ``E[softplus(−D(x̂))]`` (vanilla, non-saturating), and the
discriminator trained on ``½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))])`` (hinge) or the logistic loss
(vanilla). Before ``disc_start`` the adversarial terms are zero and the discriminator is not run.

Reductions: ``reduction="sum"`` sums ``nll`` over pixels and averages over the batch (the LDM KL models,
whose ``kl_weight ≈ 1e-6`` is relative to that sum); ``"mean"`` averages over all elements (the VQ
models of taming-transformers). The KL term is always summed per sample and averaged over the batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.autoencoders.discriminator import NLayerDiscriminator
from ldmkit.config import option


@dataclass(frozen=True)
class AutoencoderLossConfig:
    """Weights and schedule of the autoencoder's training objective."""

    rec_loss: Literal["l1", "l2"] = option("l1", help="pixel reconstruction loss: 'l1' (paper) or 'l2'")
    reduction: Literal["sum", "mean"] = option(
        "sum", help="'sum': nll summed over pixels, mean over batch (LDM KL); 'mean': mean over elements (VQ)")
    perceptual_weight: float = option(1.0, help="weight of the LPIPS perceptual distance; 0 disables", min=0.0)
    perceptual_net: Literal["vgg16", "alex"] = option("vgg16", help="LPIPS backbone")
    kl_weight: float = option(1e-6, help="weight of KL(q(z|x) ‖ N(0, I)) (KL-reg. models)", min=0.0)
    codebook_weight: float = option(1.0, help="weight of the codebook + commitment loss (VQ-reg. models)", min=0.0)
    disc_start: int = option(50001, help="training step from which the adversarial loss is on", min=0)
    disc_weight: float = option(0.5, help="multiplier of the adaptive generator weight λ", min=0.0)
    disc_factor: float = option(1.0, help="factor of both adversarial losses once on", min=0.0)
    disc_loss: Literal["hinge", "vanilla"] = option(
        "hinge", help="'hinge' or 'vanilla' (logistic, non-saturating generator loss)")
    disc_layers: int = option(3, help="stride-2 layers of the PatchGAN discriminator (3: 70×70 patches)", min=1)
    disc_channels: int = option(64, help="width of the discriminator's first layer", min=1)
    disc_norm: Literal["group", "batch"] = option(
        "group", help="discriminator normalisation: 'group' (DDP-safe) or 'batch' (pix2pix; needs SyncBatchNorm)")
    adaptive_weight_max: float = option(1e4, help="upper clamp of the adaptive weight λ (before disc_weight)",
                                        min=0.0)
    learn_logvar: bool = option(
        False, help="learn the output log-variance s (nll = rec / exp(s) + s); the trainer must optimise it")
    logvar_init: float = option(0.0, help="initial output log-variance s")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (E[relu(1 − D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½ (E[softplus(−D(x))] + E[softplus(D(x̂))]) — the logistic GAN loss."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """λ = ‖∇_L rec_loss‖ / (‖∇_L adv_loss‖ + eps), clamped to [0, max_weight], detached (Esser et al. 2021)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    weight = g_rec.norm() / (g_adv.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without accumulating gradients into its parameters (inputs still get gradients)."""
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class AutoencoderLoss(nn.Module):
    """The two losses of the alternating GAN training of the first stage.

    Args:
        cfg: weights and schedule.
        perceptual: a frozen module ``(x, y) -> [B]`` distances for images in [-1, 1] (LPIPS), or ``None``
            when ``cfg.perceptual_weight == 0``. Single-channel images are repeated to three channels.
        image_channels: channels of the images the discriminator sees.

    The trainer alternates two Adam optimisers (β = (0.5, 0.9)): one over the autoencoder's parameters plus
    :meth:`generator_parameters`, one over :meth:`discriminator_parameters`. Under DistributedDataParallel,
    replace ``loss.discriminator`` by its DDP wrapper: :meth:`generator_loss` runs the unwrapped network with
    frozen parameters (no discriminator gradients, no reducer involvement), :meth:`discriminator_loss` the
    wrapper.
    """

    def __init__(self, cfg: AutoencoderLossConfig, perceptual: nn.Module | None = None, image_channels: int = 3):
        super().__init__()
        if cfg.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual module (see build_autoencoder_loss)")
        self.cfg = cfg
        self.perceptual = perceptual
        if perceptual is not None:
            perceptual.eval()
            perceptual.requires_grad_(False)
        self.discriminator: nn.Module = NLayerDiscriminator(
            image_channels, cfg.disc_channels, cfg.disc_layers, cfg.disc_norm)
        self.logvar = nn.Parameter(torch.full((), float(cfg.logvar_init)), requires_grad=cfg.learn_logvar)
        self._d_loss = hinge_d_loss if cfg.disc_loss == "hinge" else vanilla_d_loss

    def train(self, mode: bool = True) -> "AutoencoderLoss":
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()  # frozen feature network: always in evaluation mode
        return self

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the loss optimised with the autoencoder (the output log-variance, if learned)."""
        return [self.logvar] if self.cfg.learn_logvar else []

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def discriminator_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at ``step`` (``step >= disc_start`` and a non-zero factor)."""
        return step >= self.cfg.disc_start and self.cfg.disc_factor > 0

    def _plain_discriminator(self) -> nn.Module:
        d = self.discriminator
        return d.module if isinstance(d, nn.parallel.DistributedDataParallel) else d

    def _perceptual(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        return self.perceptual(x.contiguous(), y.contiguous()).reshape(-1)  # [B]

    def _reduce(self, per_element: torch.Tensor) -> torch.Tensor:
        if self.cfg.reduction == "sum":
            return per_element.sum() / per_element.shape[0]
        return per_element.mean()

    def _generator_adv(self, logits_fake: torch.Tensor) -> torch.Tensor:
        if self.cfg.disc_loss == "hinge":
            return -logits_fake.mean()
        return F.softplus(-logits_fake).mean()

    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, aux: dict[str, Any], step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the autoencoder at ``step`` and its terms (detached) for logging.

        ``inputs``/``reconstructions`` are [B, C, H, W] in [-1, 1]; ``aux`` is the autoencoder's aux dict
        (``kl`` [B] and/or ``vq_loss``); ``last_layer`` the decoder's final weight for the adaptive weight
        (``None``: λ = disc_weight). With gradients disabled (validation) λ is 0, as in the LDM code.
        """
        cfg = self.cfg
        x, xr = inputs, reconstructions
        diff = xr - x
        rec = diff.abs() if cfg.rec_loss == "l1" else diff.pow(2)  # [B, C, H, W]
        logs: dict[str, torch.Tensor] = {"rec": rec.detach().mean()}
        total_rec = rec
        if cfg.perceptual_weight > 0:
            p = self._perceptual(x, xr)  # [B]
            total_rec = rec + cfg.perceptual_weight * p.view(-1, 1, 1, 1)
            logs["perceptual"] = p.detach().mean()
        nll = total_rec / torch.exp(self.logvar) + self.logvar  # [B, C, H, W]
        nll_loss = self._reduce(nll)
        loss = nll_loss
        logs["nll"] = nll_loss.detach()
        logs["logvar"] = self.logvar.detach()
        if "kl" in aux:
            kl = aux["kl"].mean()
            loss = loss + cfg.kl_weight * kl
            logs["kl"] = kl.detach()
        if "vq_loss" in aux:
            loss = loss + cfg.codebook_weight * aux["vq_loss"]
            logs["codebook"] = aux["vq_loss"].detach()
            for key in ("perplexity", "usage"):
                if key in aux:
                    logs[key] = aux[key].detach()
        zero = torch.zeros((), device=x.device)
        if self.discriminator_active(step):
            with _no_param_grads(self._plain_discriminator()):
                logits_fake = self._plain_discriminator()(xr)  # [B, 1, h', w']
            g_adv = self._generator_adv(logits_fake)
            if not torch.is_grad_enabled() or not g_adv.requires_grad:
                d_weight = zero
            elif last_layer is None:
                d_weight = torch.full((), cfg.disc_weight, device=x.device)
            else:
                d_weight = cfg.disc_weight * adaptive_weight(nll_loss, g_adv, last_layer, cfg.adaptive_weight_max)
            loss = loss + d_weight * cfg.disc_factor * g_adv
            logs["g_adv"] = g_adv.detach()
            logs["d_weight"] = d_weight.detach()
            logs["disc_factor"] = torch.full((), cfg.disc_factor, device=x.device)
        else:
            logs["g_adv"] = zero
            logs["d_weight"] = zero
            logs["disc_factor"] = zero
        logs["total"] = loss.detach()
        return loss, logs

    def discriminator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, step: int
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the discriminator (inputs are detached here).

        Before ``disc_start`` the discriminator is not run and the loss is a zero still connected to its
        parameters, so ``backward()`` works; trainers should rather skip the step when
        :meth:`discriminator_active` is false (required under DDP, whose reducer expects a forward pass).
        """
        if not self.discriminator_active(step):
            params = self.discriminator_parameters()
            loss = sum((p.reshape(-1)[0] * 0.0 for p in params), torch.zeros((), device=inputs.device))
            zero = torch.zeros((), device=inputs.device)
            return loss, {"d_loss": zero, "logits_real": zero, "logits_fake": zero}
        logits_real = self.discriminator(inputs.detach())  # [B, 1, h', w']
        logits_fake = self.discriminator(reconstructions.detach())
        loss = self.cfg.disc_factor * self._d_loss(logits_real, logits_fake)
        logs = {
            "d_loss": loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
        return loss, logs


def build_autoencoder_loss(cfg: AutoencoderLossConfig, image_channels: int = 3,
                           perceptual: nn.Module | None = None) -> AutoencoderLoss:
    """The loss with the real pretrained LPIPS network (fetched with ``ldm assets fetch``) unless one is given.

    Raises :class:`ldmkit.errors.AssetMissingError` when the LPIPS weights have not been fetched.
    """
    if perceptual is None and cfg.perceptual_weight > 0:
        from ldmkit.autoencoders.lpips import LPIPS

        perceptual = LPIPS.from_assets(cfg.perceptual_net)
    return AutoencoderLoss(cfg, perceptual, image_channels)
