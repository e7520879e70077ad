"""The denoiser: network + noise schedule + parameterisation, the only thing samplers call.

DESIGN habit 2 (as edm2's Precond and k-diffusion's Denoiser): the network maps
``(x_t, t, cond)`` to whatever it was trained to predict (``schedule.prediction``: eps, x0, v or the flow
velocity, for which it sees the flow-path point instead of ``x_t``);
:class:`Denoiser` turns that into both the clean-sample estimate and the noise estimate, so every
sampler works with every parameterisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch
from torch import nn

from ldmkit.conditioning.types import Conditioning
from ldmkit.diffusion.parameterisation import network_input, to_x0_eps
from ldmkit.diffusion.schedules import NoiseSchedule


class DiffusionNetwork(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Prediction:
    """What the denoiser says about ``x_t``: ``x0`` = E[x_0 | x_t], ``eps`` the matching noise, both [B, C, h, w]."""

    x0: torch.Tensor
    eps: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.x0, self.eps))


class NetworkWrapper(nn.Module):
    """A module that evaluates the network in ``self.network`` in its own way (e.g. on tiles) with the same
    ``(x, t, cond)`` signature. Replacing the network for speed (:meth:`Denoiser.replace_network`) swaps the
    innermost network and keeps every wrapper in place."""

    network: nn.Module


class Denoiser(nn.Module):
    """``denoiser(x_t, t, cond) -> Prediction(x0, eps)``.

    ``t`` is a tensor [B] or a scalar (tensor or number) shared by the batch. Integer timesteps index
    the schedule; fractional ones (Karras σ ladders) are passed on to the network as they are, with ᾱ
    interpolated in log σ. Predictions come back in ``x_t``'s dtype; the conversion runs in float32
    (float64 for float64 inputs).
    """

    def __init__(self, network: nn.Module | DiffusionNetwork, schedule: NoiseSchedule):
        super().__init__()
        self.network = network
        self.schedule = schedule

    @property
    def prediction(self) -> str:
        return self.schedule.prediction

    def replace_network(self, network: nn.Module) -> None:
        """Put ``network`` (e.g. a compiled copy) where the bare network is, inside any wrappers."""
        holder: nn.Module = self
        while isinstance(holder.network, NetworkWrapper):
            holder = holder.network
        holder.network = network

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float | int,
                cond: Conditioning | None = None) -> Prediction:
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"timesteps must be a scalar or of shape [{batch}]; got {tuple(t.shape)}")
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        alpha_bar = self.schedule.alpha_bar(t, dtype=dtype).reshape(batch, *([1] * (x_t.dim() - 1)))
        output = self.network(network_input(self.prediction, x_t, alpha_bar.to(x_t.dtype)), t, cond)  # [B, C, h, w]
        if output.shape != x_t.shape:
            raise ValueError(f"network output {tuple(output.shape)} does not match its input {tuple(x_t.shape)}")
        x0, eps = to_x0_eps(self.prediction, output.to(dtype), x_t.to(dtype), alpha_bar)
        return Prediction(x0=x0.to(x_t.dtype), eps=eps.to(x_t.dtype))
