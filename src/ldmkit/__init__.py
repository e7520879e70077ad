"""ldmkit: Latent Diffusion Models (Rombach et al., CVPR 2022) as a library, a command and a web app."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_pipeline"]


def load_pipeline(directory, device="auto", precision="auto"):
    """Load a trained latent diffusion model directory as a sampling pipeline (imports torch lazily)."""
    from ldmkit.pipelines import load_pipeline as _load

    return _load(directory, device=device, precision=precision)
