"""``ldm train autoencoder|diffusion --config PRESET [key.sub=value …]``."""

from __future__ import annotations

import argparse

from ldmkit.cli.common import add_config_arguments, add_group, add_verb


def _train_autoencoder(args: argparse.Namespace) -> int:
    from ldmkit.config import load_config
    from ldmkit.data import build_dataset
    from ldmkit.training.autoencoder_task import AutoencoderExperiment, AutoencoderTask
    from ldmkit.training.loop import train

    experiment = load_config(AutoencoderExperiment, args.config, args.overrides, group="autoencoder")
    dataset = build_dataset(experiment.data, split="train")
    train(AutoencoderTask(experiment, dataset), experiment.train, dataset, experiment)
    return 0


def _train_diffusion(args: argparse.Namespace) -> int:
    from ldmkit.training.diffusion_task import run_diffusion_training

    run_diffusion_training(args.config, args.overrides)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    verbs = add_group(subparsers, "train", "train the first stage or the latent diffusion model")
    ae = add_verb(verbs, "autoencoder", "train a KL/VQ autoencoder with L1 + LPIPS + PatchGAN (paper §3.1); "
                  "rerunning the same command resumes", _train_autoencoder)
    add_config_arguments(ae, "autoencoder")
    dm = add_verb(verbs, "diffusion", "train a latent diffusion model (paper §3.2-3.3) on cached or on-the-fly "
                  "latents; rerunning the same command resumes", _train_diffusion)
    add_config_arguments(dm, "diffusion")
