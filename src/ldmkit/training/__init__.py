"""Training: one rank-aware loop (checkpoints, resume, guards, logging) driven by an autoencoder or diffusion task."""

from ldmkit.training.config import TrainConfig
from ldmkit.training.loop import NonFiniteError, Preempted, StepContext, Task, train

__all__ = ["NonFiniteError", "Preempted", "StepContext", "Task", "TrainConfig", "train"]
