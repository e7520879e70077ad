"""ldmkit: Latent Diffusion Models (Rombach et al., CVPR 2022) as a library, a command and a web app."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
