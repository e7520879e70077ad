"""Settings shared by every trainer (optimisation, precision, logging, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass

from ldmkit.config import option
from ldmkit.training.lr_schedules import LR_SCHEDULES, check_schedule
from ldmkit.training.optimizers import OPTIMIZERS


#: ``torch.compile`` modes a trainer accepts (train.compile_mode).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainConfig:
    out: str = option("runs/run", help="run directory: config, checkpoints, logs, samples and the final model")
    init_from: str = option("", help="start from the weights of this model directory (an LDM for the diffusion "
                                     "trainer, an autoencoder for the autoencoder trainer): fine-tuning, not a "
                                     "resume; the architecture must match")
    trainable: str = option("all", help="which parts train, the rest frozen: all; diffusion: unet or conditioner; "
                                        "autoencoder: encoder or decoder",
                            choices=("all", "unet", "conditioner", "encoder", "decoder"))
    steps: int = option(1000, help="optimiser steps to train for", min=1)
    batch_size: int = option(32, help="images per micro-batch on each process", min=1)
    accumulate: int = option(1, help="micro-batches whose gradients are summed into each update (gradient "
                                     "accumulation): the effective batch is accumulate x batch_size x processes",
                             min=1)
    lr: float = option(1e-4, help="peak learning rate", min=0.0)
    warmup_steps: int = option(0, help="linear learning-rate warm-up steps", min=0)
    lr_schedule: str = option("constant_with_warmup",
                              help="learning rate over the updates: constant, constant_with_warmup (the warm-up, then "
                                   "train.lr), linear or cosine (the warm-up, then decay to lr_min_ratio x train.lr "
                                   "at decay_steps)", choices=LR_SCHEDULES)
    decay_steps: int = option(0, help="update at which linear/cosine decay reaches its end (0: train.steps)", min=0)
    lr_min_ratio: float = option(0.0, help="learning rate at the end of linear/cosine decay, as a fraction of train.lr",
                                 min=0.0, max=1.0)
    weight_decay: float = option(0.0, help="AdamW weight decay", min=0.0)
    optimizer: str = option("adamw", help="adamw (the autoencoder: Adam); adamw8bit: the same with 8-bit "
                                          "moments (bitsandbytes, CUDA only; pip install 'ldmkit[bnb]'); prodigy: "
                                          "Adam that estimates its own step size, train.lr=1.0 "
                                          "(pip install 'ldmkit[prodigy]')",
                            choices=OPTIMIZERS)
    grad_clip: float = option(1.0, help="clip the global gradient norm to this (0 disables)", min=0.0)
    precision: str = option("auto", help="autocast dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32",
                            choices=("auto", "bf16", "fp16", "fp32"))
    device: str = option("auto", help="auto, cpu, cuda or cuda:N")
    seed: int = option(0, help="seed of model initialisation, data order and noise", min=0)
    num_workers: int = option(0, help="data-loader worker processes", min=0)
    log_every: int = option(10, help="steps between TensorBoard scalars", min=1)
    image_every: int = option(500, help="steps between image grids (0 disables)", min=0)
    validate_every: int = option(0, help="steps between validations on held-out data (0 disables); the best "
                                         "model by the task's validation score is kept in RUN/best", min=0)
    checkpoint_every: int = option(500, help="steps between checkpoints (0: only at the end)", min=0)
    keep_last: int = option(2, help="complete checkpoints kept (older ones deleted after a new one is complete)", min=1)
    keep_every: int = option(0, help="also keep every checkpoint whose step is a multiple of this (0: none)", min=0)
    max_nonfinite: int = option(5, help="abort after this many consecutive steps with a NaN/inf loss or gradient",
                                min=1)
    loss_spike_factor: float = option(
        0.0, help="skip (and count) an update whose loss exceeds this multiple of the running mean loss; "
                  "0 disables", min=0.0)
    channels_last: bool = option(True, help="channels-last memory format on GPU")
    parallel: str = option("ddp", help="several processes: ddp (full copy of the networks on every process) or fsdp "
                                       "(the denoiser's weights, gradients, optimiser state and EMA sharded over the "
                                       "processes, for UNets too large to replicate; diffusion trainer only)",
                           choices=("ddp", "fsdp"))
    compile: bool = option(False, help="torch.compile the network (compile time reported apart)")
    compile_mode: str = option("default", help="torch.compile mode of train.compile: default, reduce-overhead (CUDA "
                                                "graphs: for small networks whose steps wait on kernel launches) or "
                                                "max-autotune-no-cudagraphs", choices=COMPILE_MODES)
    progress: bool = option(True, help="show a progress bar")
    max_minutes: float = option(0.0, help="stop (saving a checkpoint and the model) after this much wall time in "
                                          "this process; 0 = no limit", min=0.0)

    def __post_init__(self) -> None:
        check_schedule(self.lr_schedule, warmup=self.warmup_steps, total=self.decay_total)

    @property
    def decay_total(self) -> int:
        """The update at which a decaying schedule ends."""
        return self.decay_steps or self.steps
