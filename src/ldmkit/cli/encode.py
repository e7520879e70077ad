"""``ldm encode``: pre-compute what training would compute again and again.

- ``ldm encode --autoencoder DIR --data PRESET [key=value …] --out DIR``: latents of a data set (resumable; under
  ``torchrun`` every process encodes its share of the shards);
- ``ldm encode --verify --out DIR``: check every shard of a latent cache against its recorded SHA-256;
- ``ldm encode --text --data PRESET [--prompts FILE] --out FILE.safetensors``: the frozen text encoder's states
  of every caption (and of extra prompts, one per line), for ``conditioner.pretrained.states_file``.
"""

from __future__ import annotations

import argparse

from ldmkit.cli.common import check_counts

HELP = "encode a data set into latents (or captions into text states)"
DESCRIPTION = ("Encode a data set with a trained autoencoder into a latent cache (KL: posterior mean and std; "
               "rerunning resumes; under torchrun every process encodes its share), or with --text its captions "
               "with the frozen text encoder. See docs/latent-cache.md.")


def _encode_text(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.conditioning.prompt_states import write_prompt_states
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset, dataset_captions
    from ldmkit.errors import ConfigError, DataError
    from ldmkit.runtime import pick_device
    from ldmkit.training.run_dir import check_writable

    prompts: list[str] = []
    if args.data is not None:
        data_cfg = load_config(DataConfig, args.data, args.overrides, group="data")
        for split in args.split.split(","):
            prompts += dataset_captions(build_dataset(data_cfg, split=split.strip()))
    if args.prompts is not None:
        try:
            prompts += [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read prompts from {args.prompts} ({exc})") from None
    if not prompts:
        raise ConfigError("nothing to encode: give --data PRESET (its captions) and/or --prompts FILE")
    out = Path(args.out)
    check_writable(out.parent)
    conditioner = build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))
    conditioner = conditioner.to(pick_device(args.device))
    write_prompt_states(out, prompts, conditioner, batch_size=args.batch_size, progress=True)
    print(f"states of {len(set(prompts) | {''})} prompts written to {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ldmkit.data.latents import verify_latent_cache

    print(f"{verify_latent_cache(args.out)} shards of {args.out} have the SHA-256 they were written with")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.text:
        check_counts(args, "batch_size")
        return _encode_text(args)
    if args.verify:
        return _verify(args)
    import dataclasses
    from pathlib import Path

    import torch

    from ldmkit.autoencoders import load_autoencoder
    from ldmkit.config import load_config, to_dict
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.data.latents import autoencoder_record, write_latent_cache
    from ldmkit.errors import ConfigError
    from ldmkit.io import read_model_dir
    from ldmkit.runtime import autocast_dtype, is_main_process, pick_device
    from ldmkit.training.distributed import local_device, process_group
    from ldmkit.training.run_dir import check_writable

    if args.autoencoder is None:
        raise ConfigError("--autoencoder DIR is required to encode latents (or pass --text to encode captions)")
    check_counts(args, "batch_size", "shard_size")
    check_counts(args, "num_workers", minimum=0)
    device = local_device(pick_device(args.device))  # under torchrun: this rank's GPU
    info = read_model_dir(args.autoencoder, kind="autoencoder")
    data_cfg = load_config(DataConfig, args.data, args.overrides, group="data")
    data_cfg = dataclasses.replace(data_cfg, flip=False)  # latents of the images as they are
    if data_cfg.buckets.enabled:
        from ldmkit.errors import ConfigError

        raise ConfigError("a latent cache holds latents of one shape: encode with buckets.enabled=false, or train "
                          "on the images (latents: null) to use aspect-ratio buckets")
    dataset = build_dataset(data_cfg, split=args.split)
    check_writable(Path(args.out))
    dtype = autocast_dtype(device, args.precision)
    with process_group(device):
        autoencoder = load_autoencoder(args.autoencoder, device=device).eval()

        def encode(images: torch.Tensor):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                moments = autoencoder.encode_distribution(images.to(device))  # [B, c, h, w] each
            std = moments.std if autoencoder.config.kind == "kl" else None
            return moments.mean, std

        meta = {"autoencoder": autoencoder_record(info), "data": to_dict(data_cfg), "split": args.split,
                "precision": str(dtype or torch.float32).removeprefix("torch.")}
        out = write_latent_cache(args.out, dataset, encode, shard_size=args.shard_size, batch_size=args.batch_size,
                                 meta=meta, num_workers=args.num_workers)
    if is_main_process():
        print(f"latents of {len(dataset)} images written to {out}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--autoencoder", default=None, help="autoencoder model directory")
    parser.add_argument("--text", action="store_true",
                        help="encode captions (--data) and prompts (--prompts) with the frozen text encoder into "
                             "one .safetensors file for conditioner.pretrained.states_file")
    parser.add_argument("--verify", action="store_true",
                        help="check every shard of the cache --out against the SHA-256 recorded when it was written")
    parser.add_argument("--prompts", default=None, help="with --text: a text file of extra prompts, one per line")
    parser.add_argument("--data", default=None, help="a data preset from configs/data/ or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="data config overrides, e.g. resolution=64")
    parser.add_argument("--split", default="train", help="train or test (with --text: a comma list, e.g. train,val)")
    parser.add_argument("--out", required=True, help="output directory of the latent cache")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=4096, help="latents per shard file")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
