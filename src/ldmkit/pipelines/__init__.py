"""Pipelines: condition → sample → decode, for each way of using a latent diffusion model."""

from ldmkit.pipelines.img2img import ImageToImagePipeline
from ldmkit.pipelines.inpaint import InpaintPipeline
from ldmkit.pipelines.semantic import SemanticSynthesisPipeline
from ldmkit.pipelines.tasks import TASKS, TaskSpec, check_task, tasks_for
from ldmkit.pipelines.text2img import LatentDiffusionPipeline, load_pipeline
from ldmkit.pipelines.upscale import UpscalePipeline

__all__ = ["ImageToImagePipeline", "InpaintPipeline", "LatentDiffusionPipeline", "SemanticSynthesisPipeline",
           "TASKS", "TaskSpec", "UpscalePipeline", "check_task", "load_pipeline", "tasks_for"]
