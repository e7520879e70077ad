"""The diffusion process: noise schedules, the training loss and seeded noise."""

from ldmkit.diffusion.losses import diffusion_loss, loss_weights, min_snr_weights, sample_timesteps, snr
from ldmkit.diffusion.schedules import SPACINGS, NoiseSchedule, ScheduleConfig

__all__ = ["SPACINGS", "NoiseSchedule", "ScheduleConfig", "diffusion_loss", "loss_weights", "min_snr_weights",
           "sample_timesteps", "snr"]
