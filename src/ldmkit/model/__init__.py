"""The latent diffusion model as one object: denoising network, noise schedule, conditioner, first stage.

:class:`LatentDiffusionModel` is what training writes, converters produce, and every task pipeline samples
with; :mod:`ldmkit.model.directory` is the one place it is saved and loaded.
"""

from ldmkit.model.latent_diffusion import Conditions, LatentDiffusionModel

__all__ = ["Conditions", "LatentDiffusionModel"]
