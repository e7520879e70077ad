"""Noise schedules of the forward process q(x_t | x_0) (Ho et al. 2020; paper §3.2 / appendix B).

The forward process is variance preserving: ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` (Ho et al.
eq. 4), with ``ᾱ_t = Π_{s≤t} (1 - β_s)`` and timesteps ``t = 0 … T-1``. The network never sees the
betas (DESIGN habit 2): the :class:`~ldmkit.denoisers.wrapper.Denoiser` and the samplers read the
tables of a :class:`NoiseSchedule`.

Equivalent views of the same noise level, all tabulated here:

- ``ᾱ_t`` (``alphas_cumprod``), ``sqrt(ᾱ_t)``, ``sqrt(1 - ᾱ_t)``;
- ``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)``, the noise level of ``x_t / sqrt(ᾱ_t) = x_0 + σ_t ε``
  (the variance-exploding view used by Karras et al. 2022 and DPM-Solver);
- ``log-SNR λ_t = log(ᾱ_t / (1 - ᾱ_t)) = -2 log σ_t``.

Timesteps may be fractional (Karras σ ladders): values between table entries are interpolated
linearly in ``log σ``, as k-diffusion does.

The ``flow`` kind is rectified flow's straight path ``y_s = (1 - s) x_0 + s ε`` (Liu et al. 2023; SD3,
Esser et al. 2024) on T steps ``s_t = (t + 1) / T``, optionally shifted to ``s' = α s / (1 + (α - 1) s)``
(SD3 eq. 23; α > 1 spends more steps at high noise, as larger images need: α = sqrt(pixels / base pixels),
:func:`resolution_shift`). In the variance-preserving view it is ``ᾱ_t = (1 - s)² / ((1 - s)² + s²)``, with
``ᾱ = 0`` at the last step, so everything built on ᾱ — samplers, img2img, inpainting — works with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ldmkit.config import option
from ldmkit.errors import ConfigError

Kind = Literal["linear", "scaled_linear", "cosine", "flow"]
Prediction = Literal["eps", "x0", "v", "flow"]
Spacing = Literal["leading", "trailing", "linspace", "karras"]
SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace", "karras")

# Published β endpoints per kind: DDPM (Ho et al. 2020) and the LDM / Stable Diffusion schedule.
DEFAULT_BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
# Stand-in for ᾱ = 0 wherever a finite σ is needed (zero-terminal-SNR schedules): σ ≈ 4096.
TERMINAL_ALPHA_BAR = 2.0**-24
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5


@dataclass(frozen=True)
class ScheduleConfig:
    """The forward process and what the network predicts."""

    kind: Kind = option(
        "scaled_linear",
        help="beta schedule: linear (DDPM), scaled_linear (linear in sqrt(beta); LDM/Stable Diffusion), "
        "cosine (Nichol & Dhariwal 2021), flow (rectified flow's straight path; pair with prediction flow)",
    )
    num_timesteps: int = option(1000, help="number of discrete diffusion steps T", min=2)
    beta_start: float | None = option(
        None, help="first beta (null: 1e-4 for linear, 0.00085 for scaled_linear; unused by cosine)", min=0.0, max=1.0
    )
    beta_end: float | None = option(
        None, help="last beta (null: 0.02 for linear, 0.012 for scaled_linear; unused by cosine)", min=0.0, max=1.0
    )
    cosine_offset: float = option(0.008, help="offset s of the cosine schedule", min=0.0)
    zero_terminal_snr: bool = option(
        False, help="rescale so that the last step is pure noise, ᾱ_T = 0 (Lin et al. 2023; use prediction v or x0)"
    )
    prediction: Prediction = option("eps", help="what the network predicts: eps (noise), x0 (clean data), v, or "
                                                "flow (the rectified-flow velocity ε - x0)")
    flow_shift: float = option(1.0, help="time shift α of the flow schedule, s' = α s / (1 + (α - 1) s) (SD3 eq. 23; "
                                         "1 = none, 3 = SD3 at 1024²)", min=1e-3)

    def __post_init__(self) -> None:
        if self.kind in ("cosine", "flow"):
            if self.beta_start is not None or self.beta_end is not None:
                raise ConfigError(f"beta_start/beta_end do not apply to the {self.kind} schedule; leave them unset")
        else:
            start, end = self.betas_range()
            if not 0.0 < start < end < 1.0:
                raise ConfigError(f"betas must satisfy 0 < beta_start < beta_end < 1; got {start} and {end}")
        if self.zero_terminal_snr and self.prediction == "eps":
            raise ConfigError(
                "zero_terminal_snr cannot be learned with prediction eps (x0 is undefined at ᾱ_T = 0); "
                "use prediction v or x0"
            )
        if self.kind == "flow" and self.prediction == "eps":
            raise ConfigError("the flow schedule ends in pure noise, where prediction eps cannot give x0; use "
                              "prediction flow (or v or x0)")
        if self.flow_shift != 1.0 and self.kind != "flow":
            raise ConfigError(f"flow_shift applies to the flow schedule only; this one is '{self.kind}'")

    def betas_range(self) -> tuple[float, float]:
        """(beta_start, beta_end) with the kind's published values filled in."""
        default_start, default_end = DEFAULT_BETAS.get(self.kind, (0.0, 0.0))
        start = default_start if self.beta_start is None else self.beta_start
        end = default_end if self.beta_end is None else self.beta_end
        return start, end


def flow_times(config: ScheduleConfig) -> torch.Tensor:
    """s_0 … s_{T-1} of the flow schedule, float64: (t + 1) / T, shifted by ``flow_shift`` (SD3 eq. 23)."""
    s = torch.arange(1, config.num_timesteps + 1, dtype=torch.float64) / config.num_timesteps
    shift = config.flow_shift
    return shift * s / (1 + (shift - 1) * s)


def resolution_shift(pixels: int, base_pixels: int = 256 * 256) -> float:
    """SD3's resolution-dependent time shift α = sqrt(m / n) for images of ``pixels`` trained at ``base_pixels``."""
    return math.sqrt(pixels / base_pixels)


def make_betas(config: ScheduleConfig) -> torch.Tensor:
    """β_0 … β_{T-1} in float64 (before any zero-terminal-SNR rescaling)."""
    n = config.num_timesteps
    if config.kind == "flow":  # 1 - ᾱ_t / ᾱ_{t-1} of ᾱ = (1 - s)² / ((1 - s)² + s²), the last one 1
        s = flow_times(config)
        alpha_bar = (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
        previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        return 1 - alpha_bar / previous
    if config.kind == "linear":  # Ho et al. 2020, §4
        start, end = config.betas_range()
        return torch.linspace(start, end, n, dtype=torch.float64)
    if config.kind == "scaled_linear":  # LDM code's "linear": linear in sqrt(β)
        start, end = config.betas_range()
        return torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
    # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β ≤ 0.999.
    s = config.cosine_offset
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(ᾱ) so that ᾱ_T = 0 and ᾱ_0 is unchanged."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return root**2


class NoiseSchedule:
    """Float64 tables of a :class:`ScheduleConfig`, computed once on the CPU.

    ``table(name, device, dtype)`` returns cached copies, so a sampling step reads its coefficients
    from the device without a host round trip.
    """

    TABLES = ("betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sigmas",
              "log_snr", "log_sigmas")

    def __init__(self, config: ScheduleConfig | None = None):
        self.config = config if config is not None else ScheduleConfig()
        betas = make_betas(self.config)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        if self.config.zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
            previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
            betas = 1 - alphas_cumprod / previous
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt()
        # σ_t and log-SNR; at ᾱ = 0 (zero terminal SNR) these are +inf and -inf.
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.log_snr = alphas_cumprod.log() - (1 - alphas_cumprod).log()
        # log σ with a finite stand-in for ᾱ = 0: the table fractional timesteps interpolate in.
        finite = alphas_cumprod.clone()
        if finite[-1] <= 0:
            finite[-1] = min(TERMINAL_ALPHA_BAR, 0.5 * float(finite[-2]))
        self.log_sigmas = 0.5 * ((1 - finite).log() - finite.log())
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    @property
    def prediction(self) -> str:
        return self.config.prediction

    @property
    def preferred_spacing(self) -> str | None:
        """The timestep spacing samplers use on this schedule unless asked otherwise (None: each sampler's own).

        Flow: ``trailing``, steps even in flow time s (the flow ODE is nearly straight in s; a Karras ladder
        would spend most steps near the pure-noise end, whose σ is only a finite stand-in)."""
        return "trailing" if self.config.kind == "flow" else None

    @property
    def sigma_min(self) -> float:
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        """The largest finite σ (the stand-in at ᾱ_T = 0 for zero-terminal-SNR schedules)."""
        return float(self.log_sigmas[-1].exp())

    def table(self, name: str, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The table ``name`` on ``device`` in ``dtype`` (copied once, then cached)."""
        if name not in self.TABLES:
            raise ValueError(f"unknown schedule table '{name}'; known: {', '.join(self.TABLES)}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        key = (name, device, dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=device, dtype=dtype)
        return self._cache[key]

    # ---- values at (possibly fractional) timesteps -------------------------------------------------

    def alpha_bar(self, t: torch.Tensor | float | int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """ᾱ at timesteps ``t`` (any shape, on t's device).

        Integer timesteps index the table exactly; fractional ones interpolate linearly in log σ.
        ``dtype`` defaults to float64 for float64 ``t`` and float32 otherwise.
        """
        t = torch.as_tensor(t)
        if dtype is None:
            dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        table = self.table("alphas_cumprod", t.device, dtype)
        last = self.num_timesteps - 1
        if not t.is_floating_point():
            return table[t.long().clamp(0, last)]
        t = t.to(dtype).clamp(0, last)
        low = t.floor().long().clamp(max=last)
        high = (low + 1).clamp(max=last)
        weight = t - low.to(dtype)
        log_sigmas = self.table("log_sigmas", t.device, dtype)
        log_sigma = torch.lerp(log_sigmas[low], log_sigmas[high], weight)
        between = torch.sigmoid(-2 * log_sigma)  # ᾱ = 1 / (1 + σ²)
        return torch.where(weight == 0, table[low], between)

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The fractional timestep whose σ is ``sigma`` (inverse of the log-σ interpolation), float64."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        log_sigmas = self.log_sigmas
        log_sigma = sigma.log().clamp(float(log_sigmas[0]), float(log_sigmas[-1]))
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, self.num_timesteps - 2)
        weight = (log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])
        return low.to(torch.float64) + weight.clamp(0, 1)

    # ---- the forward process -----------------------------------------------------------------------

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) (Ho et al. eq. 4); ``t`` is [B] or a scalar."""
        alpha_bar = self.alpha_bar(t.to(x0.device), dtype=_compute_dtype(x0.dtype))
        alpha_bar = broadcast_per_sample(alpha_bar, x0)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise  # [B, C, h, w]
        return x_t.to(x0.dtype)

    # ---- sampling timesteps ------------------------------------------------------------------------

    def timesteps(self, steps: int, spacing: str = "trailing") -> torch.Tensor:
        """``steps`` descending timesteps for a sampler (float64, CPU).

        - ``leading``: multiples of ``T // steps`` from 0 (DDIM, original LDM code);
        - ``trailing``: ``T - 1`` down in strides of ``T / steps`` (starts at the last timestep, Lin et al. 2023);
        - ``linspace``: ``steps`` evenly spaced values from ``T - 1`` to 0, rounded;
        - ``karras``: σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, ρ = 7 (Karras et al. 2022,
          eq. 5), mapped to fractional timesteps.
        """
        n, total = steps, self.num_timesteps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"steps must be a positive integer; got {steps!r}")
        if spacing not in SPACINGS:
            raise ConfigError(f"unknown timestep spacing '{spacing}'; use one of {', '.join(SPACINGS)}")
        if spacing == "karras":
            if n == 1:
                sigmas = torch.tensor([self.sigma_max], dtype=torch.float64)
            else:
                lo, hi = self.sigma_min ** (1 / KARRAS_RHO), self.sigma_max ** (1 / KARRAS_RHO)
                ramp = torch.linspace(0, 1, n, dtype=torch.float64)
                sigmas = (hi + ramp * (lo - hi)) ** KARRAS_RHO
            t = self.sigma_to_t(sigmas)
            t[0] = total - 1  # exact ends, free of interpolation round-off
            if n > 1:
                t[-1] = 0
            return t
        if n > total:
            raise ConfigError(f"steps={n} is more than the schedule's {total} timesteps; use at most {total}")
        if spacing == "leading":
            t = torch.arange(n, dtype=torch.float64) * (total // n)
        elif spacing == "trailing":
            t = torch.round(total - torch.arange(n, dtype=torch.float64) * (total / n)).flip(0) - 1
        else:
            t = torch.round(torch.linspace(0, total - 1, n, dtype=torch.float64))
        return t.flip(0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def broadcast_per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] or [] → broadcastable against ``like`` [B, ...]."""
    return values.reshape(values.shape + (1,) * (like.dim() - values.dim())) if values.dim() else values
