"""Classifier-free guidance (Ho & Salimans 2022) with optional guidance rescale (Lin et al. 2023, §3.4).

``eps = eps_u + s (eps_c - eps_u)``: ``eps_c`` under the condition, ``eps_u`` under the null (or a
negative) condition. Both come from ONE batched forward pass (conditional and unconditional halves
concatenated along the batch). Because x0 and eps are affine in each other at a fixed ``x_t`` and t,
combining the x0 estimates with the same weights gives exactly the x0 of the guided eps, with no
division by sqrt(ᾱ).

Perturbed-attention guidance adds ``s_pag (eps_c - eps_p)``, ``eps_p`` the conditional prediction with chosen
self-attention maps replaced by the identity (:mod:`ldmkit.samplers.pag`), from the same batched pass.

Projected guidance (APG, :func:`project_guidance`) replaces the plain direction by its part orthogonal to the
conditional x0, the parallel part weighted, and eps follows from the guided x0.

Rescale (φ = ``rescale``) counters over-exposure at large scales: the guided x0 is rescaled to the
per-sample standard deviation of the conditional x0, then mixed with the plain guided x0,
``x0 = φ · x0_cfg · std(x0_c)/std(x0_cfg) + (1 - φ) · x0_cfg``, and eps follows from x0. (Some codes
rescale the raw network output instead; for eps-prediction networks that is a different rule.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ldmkit.conditioning.types import Conditioning
from ldmkit.diffusion.parameterisation import eps_from_x0
from ldmkit.denoisers.wrapper import Denoiser, Prediction
from ldmkit.errors import ConfigError
from ldmkit.samplers.pag import perturbed_self_attention


def check_guidance(cond: Conditioning | None, uncond: Conditioning | None, scale: float, rescale: float) -> None:
    """Reject guidance settings that cannot work, with a one-line reason."""
    if rescale < 0 or rescale > 1:
        raise ConfigError(f"guidance_rescale must be in [0, 1]; got {rescale}")
    if scale != 1.0 and (cond is None or uncond is None):
        raise ConfigError(
            f"guidance scale {scale} needs both a condition and an unconditional (null) condition; "
            "pass uncond or use guidance 1"
        )


def fit_batch(cond: Conditioning | None, batch: int) -> Conditioning | None:
    """A conditioning of batch 1 repeated to ``batch`` (one prompt for many samples); others unchanged."""
    if cond is None or cond.batch_size in (None, batch):
        return cond
    if cond.batch_size == 1:
        return cond.repeat(batch)
    raise ConfigError(f"conditioning has batch {cond.batch_size} but there are {batch} samples; use 1 or {batch}")


def guided_prediction(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None,
                      uncond: Conditioning | None = None, scale: float = 1.0, rescale: float = 0.0,
                      pag_scale: float = 0.0, pag_layers: Sequence[str] = (), parallel: float = 1.0,
                      norm_threshold: float = 0.0, momentum: float = 0.0,
                      history: list[torch.Tensor] | None = None) -> Prediction:
    """The denoiser's prediction at ``(x_t, t)`` under classifier-free guidance, and with ``pag_scale`` > 0
    perturbed-attention guidance on ``pag_layers`` (:mod:`ldmkit.samplers.pag`); ``parallel``, ``norm_threshold``
    and ``momentum`` project the guidance as APG does (:func:`project_guidance`; 1, 0 and 0: plain CFG), the
    momentum's running direction kept in ``history`` (one list per sampling run).

    ``scale == 1`` without PAG runs only the conditional pass and returns it unchanged. Otherwise one batched
    forward runs the conditional, the unconditional (when ``scale != 1``) and the perturbed conditional parts,
    in that order. ``t`` is a tensor [B] or a scalar. Conditionings of batch 1 are repeated to the batch of ``x_t``.
    """
    batch = x_t.shape[0]
    if scale == 1.0 and pag_scale == 0.0:
        return denoiser(x_t, t, fit_batch(cond, batch))
    if scale != 1.0:
        check_guidance(cond, uncond, scale, rescale)
    cond, uncond = fit_batch(cond, batch), fit_batch(uncond, batch)
    t = torch.as_tensor(t, device=x_t.device)
    t = t.expand(batch) if t.dim() == 0 else t
    conds = [cond, *([uncond] if scale != 1.0 else []), *([cond] if pag_scale else [])]
    parts = len(conds)
    inputs = (torch.cat([x_t] * parts), torch.cat([t] * parts), Conditioning.cat(conds) if cond is not None else None)
    if pag_scale:
        with perturbed_self_attention(denoiser.network, pag_layers, first=(parts - 1) * batch, batch=parts * batch):
            out = denoiser(*inputs)  # [parts·B, C, h, w]
    else:
        out = denoiser(*inputs)
    x0s, epss = out.x0.chunk(parts), out.eps.chunk(parts)
    x0_c, eps_c = x0s[0], epss[0]
    x0, eps = x0_c, eps_c
    projected = scale != 1.0 and (parallel != 1.0 or norm_threshold > 0 or momentum != 0)
    if projected:  # eps follows from x0 below
        delta = x0_c - x0s[1]
        if momentum and history is not None:  # APG's running average of the direction (its β, negative there)
            if history:
                delta = delta + momentum * history[0]
            history[:] = [delta]
        x0 = x0_c + (scale - 1) * project_guidance(delta, x0_c, parallel, norm_threshold)
    elif scale != 1.0:
        x0, eps = x0s[1] + scale * (x0_c - x0s[1]), epss[1] + scale * (eps_c - epss[1])
    if pag_scale:  # away from the prediction whose self-attention saw only itself
        x0, eps = x0 + pag_scale * (x0_c - x0s[-1]), eps + pag_scale * (eps_c - epss[-1])
    if rescale == 0.0 and not projected:
        return Prediction(x0=x0, eps=eps)
    dims = tuple(range(1, x0.dim()))
    if rescale:
        factor = x0_c.std(dim=dims, keepdim=True) / x0.std(dim=dims, keepdim=True).clamp_min(1e-12)
        x0 = x0 * (rescale * factor + (1 - rescale))
    dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
    alpha_bar = denoiser.schedule.alpha_bar(t, dtype=dtype).reshape(batch, *([1] * (x_t.dim() - 1)))
    eps = eps_from_x0(x_t.to(dtype), x0.to(dtype), alpha_bar).to(x_t.dtype)
    return Prediction(x0=x0, eps=eps)


def project_guidance(delta: torch.Tensor, x0_c: torch.Tensor, parallel: float, norm_threshold: float) -> torch.Tensor:
    """Adaptive projected guidance's update (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High
    Guidance Scales in Diffusion Models", ICLR 2025; its momentum is applied to Δ before, in
    :func:`guided_prediction`).

    The guidance direction Δ = x0_c − x0_u [B, ...] is first shortened to at most ``norm_threshold`` per sample
    (0: not), then split into its part along the conditional prediction x0_c, which mostly saturates colours,
    and the part orthogonal to it, which mostly adds detail. The parallel part is kept at weight ``parallel``
    (APG: 0). The guided x0 is x0_c + (s − 1) · the result.
    """
    dims = tuple(range(1, delta.dim()))
    if norm_threshold > 0:
        norm = torch.linalg.vector_norm(delta, dim=dims, keepdim=True)
        delta = delta * (norm_threshold / norm.clamp_min(1e-12)).clamp(max=1.0)
    unit = x0_c / torch.linalg.vector_norm(x0_c, dim=dims, keepdim=True).clamp_min(1e-12)
    along = (delta * unit).sum(dim=dims, keepdim=True) * unit
    return delta - along + parallel * along
