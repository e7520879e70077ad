"""``ldm train autoencoder|diffusion [--gpus N] --config PRESET [key.sub=value …]``."""

from __future__ import annotations

import argparse
import os
import sys

from ldmkit.cli.common import add_config_arguments, add_group, add_verb
from ldmkit.errors import ConfigError


def _launch_command(args: argparse.Namespace) -> list[str]:
    """The ``torchrun`` command that runs this same training on ``args.gpus`` processes of this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.gpus),
               "-m", "ldmkit.cli.main", "train", args.verb_name]
    if args.config is not None:
        command += ["--config", args.config]
    return command + list(args.overrides)


def _relaunch(args: argparse.Namespace) -> bool:
    """With ``--gpus N > 1`` outside torchrun, replace this process by ``torchrun --nproc-per-node N``."""
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus} is not a number of GPUs; give 1 or more")
    if args.gpus == 1 or "LOCAL_RANK" in os.environ:
        return False
    on_cpu = any(o.replace(" ", "") in ("train.device=cpu",) for o in args.overrides)
    if not on_cpu:
        import torch

        available = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
        if available < args.gpus:
            raise ConfigError(f"--gpus {args.gpus} asks for more accelerators than this machine has ({available}); "
                              "lower --gpus, or use torchrun for several machines (docs/distributed.md)")
    command = _launch_command(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return True  # not reached


def _train_autoencoder(args: argparse.Namespace) -> int:
    args.verb_name = "autoencoder"
    if _relaunch(args):
        return 0
    from ldmkit.config import load_config
    from ldmkit.data import build_dataset
    from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
    from ldmkit.training.loop import train

    experiment = load_config(AutoencoderExperiment, args.config, args.overrides, group="autoencoder")
    dataset = build_dataset(experiment.data, split="train")
    train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    args.verb_name = "diffusion"
    if _relaunch(args):
        return 0
    from ldmkit.training.diffusion_task import run_diffusion_training

    run_diffusion_training(args.config, args.overrides)
    return 0


def _add_gpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpus", type=int, default=1, metavar="N",
                        help="train data-parallel on N GPUs of this machine (restarts itself under torchrun; "
                             "train.batch_size is per GPU). For several machines run torchrun yourself: "
                             "see docs/distributed.md")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    verbs = add_group(subparsers, "train", "train the first stage or the latent diffusion model")
    ae = add_verb(verbs, "autoencoder", "train a KL/VQ autoencoder with L1 + LPIPS + PatchGAN (paper §3.1); "
                  "rerunning the same command resumes", _train_autoencoder)
    add_config_arguments(ae, "autoencoder")
    _add_gpus(ae)
    dm = add_verb(verbs, "diffusion", "train a latent diffusion model (paper §3.2-3.3) on cached or on-the-fly "
                  "latents; rerunning the same command resumes", _train_diffusion)
    add_config_arguments(dm, "diffusion")
    _add_gpus(dm)
