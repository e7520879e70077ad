"""Vector quantisation with a straight-through estimator (VQ-VAE, van den Oord et al. 2017; paper §3.1).

Each latent vector is replaced by its nearest codebook entry. The codebook is learned either by the
codebook loss ‖sg[z] − e‖² (gradients) or by exponential moving averages of the assigned encodings
(VQ-VAE appendix, ``ema=True``); the encoder is pulled towards its codes by β‖z − sg[e]‖². Codes whose
usage (an EMA of assignments per batch) falls below ``dead_code_threshold`` are re-initialised from
encodings of the current batch. Under ``torch.distributed`` the statistics are summed over processes
and re-initialised codes are taken from rank 0, so every process keeps the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# Rows of the distance matrix computed at once (bounds memory at rows × codebook_size floats).
_MAX_DISTANCE_ELEMENTS = 1 << 24


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nearest_codes(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code (squared Euclidean distance) for each row of ``flat`` [N, D] → [N]."""
    codebook = codebook.float()
    code_sq = codebook.pow(2).sum(dim=1)  # [K]
    rows = max(1, _MAX_DISTANCE_ELEMENTS // codebook.shape[0])
    out = []
    with torch.autocast(device_type=flat.device.type, enabled=False):  # distances in float32, also under AMP
        for chunk in flat.float().split(rows):
            # ‖x − e‖² = ‖x‖² − 2 x·e + ‖e‖²; ‖x‖² does not change the argmin.
            dist_sq = code_sq[None, :] - 2.0 * chunk @ codebook.t()  # [n, K]
            out.append(dist_sq.argmin(dim=1))
    return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)


def perplexity_and_usage(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(entropy) of the assignment frequencies (K for a uniform assignment) and the fraction of codes used."""
    probs = counts.float() / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return torch.exp(entropy), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    """z [B, D, h, w] → (z_q with straight-through gradients [B, D, h, w], aux dict).

    Args:
        num_codes: codebook size K.
        dim: code dimension D (the latent channels).
        beta: commitment weight β.
        ema: learn the codebook by EMA updates (then it gets no gradient and the codebook loss is 0).
        decay: EMA decay (codebook and usage statistics).
        dead_code_threshold: re-initialise codes with EMA usage below this; 0 disables.
        eps: Laplace smoothing of the EMA cluster sizes.
    """

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, ema: bool = False, decay: float = 0.99,
                 dead_code_threshold: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.beta, self.use_ema, self.decay = beta, ema, decay
        self.dead_code_threshold, self.eps = dead_code_threshold, eps
        codebook = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        self.codebook = nn.Parameter(codebook, requires_grad=not ema)
        # EMA of assignments per batch, per code (starts at 1 so no code is "dead" before it had a chance).
        self.register_buffer("cluster_size", torch.ones(num_codes))
        if ema:
            self.register_buffer("embed_sum", codebook.clone())

    def extra_repr(self) -> str:
        return f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.use_ema}"

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of ``indices`` [B, h, w] → [B, D, h, w]."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes without losses or updates: z [B, D, h, w] → (z_q [B, D, h, w], indices [B, h, w])."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [N, D]
        indices = nearest_codes(flat.detach(), self.codebook.detach()).view(b, h, w)
        return self.lookup(indices).to(z.dtype), indices

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, d, h, w = z.shape
        if d != self.dim:
            raise ValueError(f"VectorQuantizer expects {self.dim} channels, got {d}")
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [N, D]
        indices = nearest_codes(flat.detach(), self.codebook.detach())  # [N]
        counts = torch.bincount(indices, minlength=self.num_codes).float()  # [K]
        if self.training:
            self._update(flat.detach().float(), indices, counts)
        z_q = self.lookup(indices.view(b, h, w)).to(z.dtype)  # [B, D, h, w]
        commitment = self.beta * F.mse_loss(z, z_q.detach())
        if self.use_ema:
            codebook_loss = torch.zeros((), device=z.device, dtype=commitment.dtype)
        else:
            codebook_loss = F.mse_loss(z_q, z.detach())
        z_st = z + (z_q - z).detach()  # straight-through: forward = z_q, backward = identity
        perplexity, usage = perplexity_and_usage(counts)
        aux = {
            "vq_loss": codebook_loss + commitment,
            "codebook_loss": codebook_loss.detach(),
            "commitment_loss": commitment.detach(),
            "perplexity": perplexity,
            "usage": usage,
            "indices": indices.view(b, h, w),
        }
        return z_st, aux

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA statistics, EMA codebook (if enabled) and dead-code re-initialisation."""
        sums = None
        if self.use_ema:
            sums = torch.zeros(self.num_codes, self.dim, device=flat.device, dtype=flat.dtype)
            sums.index_add_(0, indices, flat)  # [K, D]: Σ of encodings assigned to each code
        if _distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.use_ema:
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total  # [K]
            self.codebook.data.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            self._reinit_dead_codes(flat)

    @torch.no_grad()
    def _reinit_dead_codes(self, flat: torch.Tensor) -> None:
        dead = torch.nonzero(self.cluster_size < self.dead_code_threshold).flatten()
        n = int(dead.numel())
        if n == 0 or flat.shape[0] == 0:
            return
        pick = torch.randint(flat.shape[0], (n,), device=flat.device)
        fresh = flat[pick].to(self.codebook.dtype)  # [n, D]
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.codebook.data[dead] = fresh
        reset = max(1.0, self.dead_code_threshold)
        self.cluster_size[dead] = reset
        if self.use_ema:
            self.embed_sum[dead] = fresh * reset
