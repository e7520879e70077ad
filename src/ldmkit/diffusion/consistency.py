"""The consistency function of latent consistency models (Song et al. 2023, §3; Luo et al. 2023, LCM §4).

A consistency model maps any point of a probability-flow trajectory to its start:
``f(x_t, t) = c_skip(t) · x_t + c_out(t) · x̂0(x_t, t)``, with ``c_skip(0) = 1, c_out(0) = 0`` (the boundary
condition f(x, 0) = x) and ``c_skip → 0, c_out → 1`` away from 0. As in LCM, the coefficients take the discrete
timestep scaled by 10 with σ_data = 0.5, so they matter only in the last few timesteps.
"""

from __future__ import annotations

import torch

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def boundary_coefficients(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) at timesteps ``t`` (any shape, float)."""
    scaled = TIMESTEP_SCALING * t.float()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def consistency_output(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) for the denoiser's clean estimate ``x0`` [B, C, h, w] at timesteps ``t`` ([B] or [])."""
    c_skip, c_out = boundary_coefficients(t.to(x_t.device))
    shape = (-1,) + (1,) * (x_t.dim() - 1) if c_skip.dim() else ()
    return c_skip.reshape(shape).to(x_t.dtype) * x_t + c_out.reshape(shape).to(x_t.dtype) * x0


def skipping_timesteps(num_timesteps: int, skip: int) -> torch.Tensor:
    """The DDIM ladder distillation walks, ascending: ``skip - 1, 2·skip - 1, …, T - 1`` (LCM's skipping-step
    schedule, k = ``skip``; each training pair is one of these and the timestep ``skip`` below it, floored at 0)."""
    return torch.arange(skip - 1, num_timesteps, skip, dtype=torch.long)


__all__ = ["SIGMA_DATA", "TIMESTEP_SCALING", "boundary_coefficients", "consistency_output", "skipping_timesteps"]
