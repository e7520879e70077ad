"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", §3).

Training keeps two power-function EMAs of the denoiser, θ̂_γ(t) = Σ_τ≤t w(τ) θ(τ) with w(τ) ∝ τ^γ, updated as
θ̂ ← β θ̂ + (1 − β) θ with β = (1 − 1/t)^(γ+1) (their eq. 2), and writes both every ``snapshot_every`` steps.
Afterwards the EMA of any relative width σ_rel ending at any snapshot step is reconstructed as the linear
combination of snapshots whose averaging profile is closest, in L2, to the target's power profile (their §3.2
and appendix C.3): the profiles' inner products have a closed form, so that is one small linear solve.
σ_rel, the profile's standard deviation relative to its length, relates to γ by
σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)) (their eq. 3).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ldmkit.config import option
from ldmkit.errors import CheckpointError, ConfigError

SNAPSHOT_DIR = "ema-snapshots"
_SNAPSHOT = re.compile(r"step-(\d+)-gamma-([0-9.]+)\.safetensors$")


@dataclass(frozen=True)
class PosthocEMAConfig:
    """Two power-function EMAs kept during training for ``ldm ema`` (off unless ``snapshot_every`` > 0)."""

    sigma_rels: tuple[float, ...] = option((0.05, 0.10), help="relative widths of the EMAs kept (EDM2: 0.05, 0.10)",
                                           min=1e-4, max=0.28)
    snapshot_every: int = option(0, help="steps between snapshots of both EMAs (0: post-hoc EMA off)", min=0)


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """γ of the power profile of relative width σ_rel: the real root of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²)."""
    if not 0 < sigma_rel < math.sqrt(1 / 12):  # γ → 0 gives the widest profile, σ_rel = sqrt(1/12)
        raise ConfigError(f"sigma_rel {sigma_rel} is outside (0, {math.sqrt(1 / 12):.4f})")
    inverse = sigma_rel**-2
    return float(np.roots([1, 7, 16 - inverse, 12 - inverse]).real.max())


def sigma_rel_from_gamma(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA:
    """θ̂_γ of a module: ``update(module, t)`` after update t (1, 2, …)."""

    def __init__(self, module: torch.nn.Module, gamma: float):
        self.gamma = gamma
        self.model = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, t: int) -> None:
        beta = (1 - 1 / t) ** (self.gamma + 1)  # 0 at t = 1: the average starts at θ(1)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in module.parameters()], 1 - beta)
        for mine, theirs in zip(self.model.buffers(), module.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.gamma = float(state["gamma"])
        self.model.load_state_dict(state["weights"])


def _product(t_a: float, g_a: float, t_b: float, g_b: float) -> float:
    """∫ p_a p_b of normalised power profiles p(τ) = (γ + 1) τ^γ / t^(γ+1) on [0, t]."""
    t = min(t_a, t_b)
    return ((g_a + 1) * (g_b + 1) * t ** (g_a + g_b + 1)
            / ((g_a + g_b + 1) * t_a ** (g_a + 1) * t_b ** (g_b + 1)))


def reconstruction_weights(snapshots: list[tuple[int, float]], step: int, gamma: float) -> np.ndarray:
    """Coefficients x of snapshots (step, γ) whose combined profile best matches the power profile γ ending at
    ``step``: the normal equations A x = b of the L2 fit (EDM2 appendix C.3), solved in float64."""
    a = np.array([[_product(ti, gi, tj, gj) for tj, gj in snapshots] for ti, gi in snapshots], dtype=np.float64)
    b = np.array([_product(ti, gi, step, gamma) for ti, gi in snapshots], dtype=np.float64)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def snapshot_path(run_dir: Path, step: int, gamma: float) -> Path:
    return run_dir / SNAPSHOT_DIR / f"step-{step:08d}-gamma-{gamma:.6f}.safetensors"


def write_snapshot(ema: PowerEMA, run_dir: Path, step: int) -> None:
    """Atomically: a snapshot redone after a resume replaces its earlier copy."""
    path = snapshot_path(run_dir, step, ema.gamma)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.model.state_dict().items()}, str(partial))
    partial.replace(path)


def list_snapshots(run_dir: Path) -> list[tuple[int, float, Path]]:
    found = []
    for path in sorted((run_dir / SNAPSHOT_DIR).glob("step-*-gamma-*.safetensors")):
        match = _SNAPSHOT.search(path.name)
        if match:
            found.append((int(match.group(1)), float(match.group(2)), path))
    return found


def reconstruct(run_dir: Path, sigma_rel: float, step: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The EMA of relative width ``sigma_rel`` ending at snapshot ``step`` (default: the last), and a record of
    how it was made. Only snapshots up to ``step`` take part (later weights did not exist yet)."""
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise CheckpointError(f"{run_dir} has no {SNAPSHOT_DIR}/: train with posthoc_ema.snapshot_every > 0 to "
                              "keep the EMA snapshots ldm ema reconstructs from")
    steps = sorted({s for s, _, _ in snapshots})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ConfigError(f"no snapshots at step {step}; snapshot steps: {steps[0]}…{steps[-1]} every "
                          f"{steps[1] - steps[0] if len(steps) > 1 else steps[0]}")
    used = [(s, g, p) for s, g, p in snapshots if s <= step]
    gamma = gamma_from_sigma_rel(sigma_rel)
    weights = reconstruction_weights([(s, g) for s, g, _ in used], step, gamma)
    state: dict[str, torch.Tensor] = {}
    for weight, (_, _, path) in zip(weights, used):
        for name, tensor in load_file(str(path)).items():
            if tensor.is_floating_point():
                state[name] = state.get(name, 0) + float(weight) * tensor.double()
            else:
                state.setdefault(name, tensor)
    dtypes = {name: tensor.dtype for name, tensor in load_file(str(used[-1][2])).items()}
    state = {name: value.to(dtypes[name]) if value.is_floating_point() else value for name, value in state.items()}
    record = {"sigma_rel": sigma_rel, "gamma": gamma, "step": step, "snapshots": len(used),
              "weight_sum": float(np.sum(weights))}
    return state, record


__all__ = ["PosthocEMAConfig", "PowerEMA", "gamma_from_sigma_rel", "reconstruct", "reconstruction_weights",
           "sigma_rel_from_gamma", "write_snapshot"]
