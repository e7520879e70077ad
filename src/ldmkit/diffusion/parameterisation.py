"""Exact conversions between the three things a diffusion network may predict (DESIGN habit 2).

With ``x_t = a x0 + b ε``, ``a = sqrt(ᾱ_t)``, ``b = sqrt(1 - ᾱ_t)`` (Ho et al. 2020, eq. 4):

- ``eps``: the noise ε (Ho et al. 2020; the LDM objective, paper eq. 1/2);
- ``x0``: the clean sample;
- ``v = a ε - b x0`` (Salimans & Ho 2022, §4 / appendix D).

Since ``a² + b² = 1``: ``x0 = a x_t - b v`` and ``ε = b x_t + a v``.

- ``flow``: the rectified-flow velocity ``u = ε - x0`` (Liu et al. 2023; Lipman et al. 2023; Esser et al.
  2024, SD3 §2) of the straight path ``y_s = (1 - s) x0 + s ε``. The same noise level in both views:
  ``y_s = x_t / (a + b)`` and ``s = b / (a + b)``, so the network sees ``y_s`` (:func:`network_input`) and
  ``x0 = y_s - s u``, ``ε = y_s + (1 - s) u``. The flow ODE ``dy/ds = u`` is the probability-flow ODE of the
  variance-preserving view, so every sampler samples a flow model.
``alpha_bar`` is a tensor broadcastable against ``x_t`` (e.g. [B, 1, 1, 1]). Every function is exact
algebra; in float64 a round trip is accurate to ~1e-12. Converting ``eps`` to ``x0`` divides by ``a``
and is undefined at ᾱ = 0; ``x0`` to ``eps`` divides by ``b`` and is undefined at ᾱ = 1.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("eps", "x0", "v", "flow")


def _ab(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a, b = _ab(alpha_bar)
    return (x_t - b * eps) / a


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a, b = _ab(alpha_bar)
    return (x_t - a * x0) / b


def v_from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a, b = _ab(alpha_bar)
    return a * eps - b * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a, b = _ab(alpha_bar)
    return a * x_t - b * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a, b = _ab(alpha_bar)
    return b * x_t + a * v


def v_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    return v_from_eps_x0(eps, x0_from_eps(x_t, eps, alpha_bar), alpha_bar)


def v_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    return v_from_eps_x0(eps_from_x0(x_t, x0, alpha_bar), x0, alpha_bar)


def flow_time(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, 1 / (a + b)): the flow time of the noise level ᾱ and the factor that takes x_t to y_s."""
    a, b = _ab(alpha_bar)
    scale = 1 / (a + b)
    return b * scale, scale


def network_input(prediction: str, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the network sees at ``x_t``: ``x_t`` itself, or for ``flow`` the flow-path point ``y_s``."""
    if prediction != "flow":
        return x_t
    return x_t * flow_time(alpha_bar)[1]


def to_x0_eps(prediction: str, output: torch.Tensor, x_t: torch.Tensor,
              alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a network ``output`` of kind ``prediction`` at ``x_t``."""
    if prediction == "eps":
        return x0_from_eps(x_t, output, alpha_bar), output
    if prediction == "x0":
        return output, eps_from_x0(x_t, output, alpha_bar)
    if prediction == "v":
        return x0_from_v(x_t, output, alpha_bar), eps_from_v(x_t, output, alpha_bar)
    if prediction == "flow":
        s, scale = flow_time(alpha_bar)
        y = x_t * scale
        return y - s * output, y + (1 - s) * output
    raise ValueError(f"unknown prediction '{prediction}'; use one of {', '.join(PREDICTIONS)}")


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What a network of kind ``prediction`` should output for clean ``x0`` noised with ``eps``."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_eps_x0(eps, x0, alpha_bar)
    if prediction == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction '{prediction}'; use one of {', '.join(PREDICTIONS)}")
