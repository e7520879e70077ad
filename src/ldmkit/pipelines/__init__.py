"""Pipelines: condition → sample → decode, for each way of using a latent diffusion model."""

from ldmkit.pipelines.text2img import LatentDiffusionPipeline, load_pipeline

__all__ = ["LatentDiffusionPipeline", "load_pipeline"]
