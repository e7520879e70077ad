"""CPU sampling time of two model sizes, fp32 vs bf16 autocast and 1 thread vs all cores.

Models (random weights: the timing does not depend on what they learned):

  demo      the models of ``ldm demo``, shapes read from configs/diffusion/synthetic-text.yaml and
            configs/autoencoder/synthetic-kl-f4.yaml: 9 prompts (every shape × colour), 25 DPM-Solver++(2M)
            steps, guidance 4, 32² images, as the demo samples one grid row
  ldm8-256  a small LDM at 256²: the paper's kl-f8 first stage (32×32×4 latents) and a small UNet
            (``--unet-channels``, default 64), one unconditional sample, 25 steps

Each configuration is sampled once to warm up, then ``--repeats`` times; the median is reported, with the
share of the time spent decoding. Writes ``cpu_sampling.json`` and ``cpu_sampling.md`` under ``--out``::

    python bench/cpu_sampling.py --out bench/results
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Runner, environment, get, md_table, median_seconds

NAME = "cpu_sampling"
PRECISIONS = ("fp32", "bf16")


def demo_pipeline(tiny: bool):
    """The demo's text-conditional LDM with random weights, and the prompts the demo samples."""
    from ldmkit.autoencoders import build_autoencoder
    from ldmkit.cli.demo import demo_prompts
    from ldmkit.config import load_config
    from ldmkit.training.autoencoder_task import AutoencoderExperiment
    from ldmkit.training.diffusion_task import DiffusionExperiment

    ae_cfg = load_config(AutoencoderExperiment, "synthetic-kl-f4", group="autoencoder").model
    experiment = load_config(DiffusionExperiment, "synthetic-text", group="diffusion")
    prompts = demo_prompts()[: 2 if tiny else None]
    return _pipeline(build_autoencoder(ae_cfg), experiment.unet, experiment.conditioner, experiment.schedule,
                     experiment.data.resolution, captions=prompts), prompts


def small_ldm_pipeline(tiny: bool, unet_channels: int):
    """A small unconditional LDM-8 at 256² (64² when tiny) with the paper's kl-f8 first stage."""
    from ldmkit.autoencoders import build_autoencoder
    from ldmkit.autoencoders.config import AutoencoderConfig
    from ldmkit.autoencoders.presets import autoencoder_preset
    from ldmkit.conditioning import ConditionerConfig
    from ldmkit.denoisers.unet_config import UNetConfig
    from ldmkit.diffusion.schedules import ScheduleConfig

    if tiny:
        ae_cfg = AutoencoderConfig(kind="kl", base_channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                                   latent_channels=4, mid_attention=False)
        unet = UNetConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                          num_head_channels=8)
    else:
        ae_cfg = autoencoder_preset("kl-f8")[0]
        unet = UNetConfig(model_channels=unet_channels, channel_mult=(1, 2, 4), num_res_blocks=2,
                          attention_resolutions=(2, 4), num_head_channels=32)
    return _pipeline(build_autoencoder(ae_cfg), unet, ConditionerConfig(kind="none"), ScheduleConfig(),
                     64 if tiny else 256)


def _pipeline(autoencoder, unet_cfg, cond_cfg, schedule_cfg, resolution: int, captions=None):
    """A LatentDiffusionPipeline whose UNet widths follow the autoencoder and conditioner, as training sets them."""
    from ldmkit.conditioning import build_conditioner
    from ldmkit.denoisers.unet import UNet
    from ldmkit.diffusion.schedules import NoiseSchedule
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines.text2img import LatentDiffusionPipeline

    conditioner = build_conditioner(cond_cfg, captions=captions)
    z = autoencoder.latent_channels
    cfg = dataclasses.replace(unet_cfg, in_channels=z, out_channels=z, context_dim=conditioner.context_dim,
                              vector_dim=conditioner.vector_dim, concat_channels=conditioner.concat_channels)
    latent = resolution // autoencoder.downsample_factor
    return LatentDiffusionPipeline(LatentDiffusionModel(
        unet=UNet(cfg).eval().requires_grad_(False), schedule=NoiseSchedule(schedule_cfg),
        conditioner=conditioner.eval().requires_grad_(False), autoencoder=autoencoder.eval().requires_grad_(False),
        latent_size=(latent, latent)))


def measure(pipe, prompts: list[str] | None, *, steps: int, guidance: float, precision: str, threads: int,
            repeats: int) -> dict[str, Any]:
    """Median seconds of one ``pipe(...)`` call (sampling + decoding) and of decoding alone."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    pipe.precision = precision
    try:
        count = len(prompts) if prompts else 1
        call = lambda: pipe(prompts, n=None if prompts else 1, steps=steps, guidance=guidance,
                            batch_size=count, output="tensor", progress=False)
        seconds = median_seconds(call, torch.device("cpu"), warmup=1, iters=repeats)
        z = torch.randn(count, pipe.autoencoder.latent_channels, *pipe.latent_size)
        decode_s = median_seconds(lambda: pipe.decode(z), torch.device("cpu"), warmup=0, iters=repeats)
    finally:
        torch.set_num_threads(previous)
    size = pipe.image_size
    return {"images": count, "image_size": f"{size[0]}x{size[1]}", "steps": steps, "guidance": guidance,
            "seconds": seconds, "seconds_per_image": seconds / count, "decode_share": min(1.0, decode_s / seconds)}


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    parts = [f"# CPU sampling — {meta.get('card')}, {meta.get('cpu_count')} cores\n",
             f"torch {meta.get('torch')}; command: `{meta.get('command')}`; wall {meta.get('wall_s')} s.\n\n"]
    rows = []
    for model, variants in results.get("models", {}).items():
        for key, r in variants.items():
            if isinstance(r, dict) and "seconds" in r:
                rows.append([model, r["image_size"], r["images"], r["steps"], r["precision"], r["threads"],
                             r["seconds"], r["seconds_per_image"], f"{100 * r['decode_share']:.0f}%"])
            elif isinstance(r, dict) and "error" in r:
                rows.append([model, key, None, None, None, None, None, None, r["error"]])
    parts.append(md_table(["model", "image", "images", "steps", "precision", "threads", "s / call", "s / image",
                           "decode share"], rows))
    for model, ratios in results.get("speedups", {}).items():
        parts.append(f"- {model}: " + ", ".join(f"{k} ×{v:.2f}" for k, v in ratios.items()) + "\n")
    for key in ("skipped", "errors"):
        if results.get(key):
            parts.append(f"\n{key}:\n" + "".join(f"- {e['item']}: {e.get('reason') or e.get('error')}\n"
                                                  for e in results[key]))
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="directory for cpu_sampling.json / .md")
    p.add_argument("--models", nargs="+", choices=("demo", "ldm8-256"), default=["demo", "ldm8-256"])
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--threads", nargs="+", type=int, default=None,
                   help="thread counts to compare (default: 1 and all cores)")
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++(2M) steps")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (median)")
    p.add_argument("--unet-channels", type=int, default=64, help="model_channels of the small 256² LDM's UNet")
    p.add_argument("--tiny", action="store_true", help="tiny models, 2 steps, 1 repeat (tests)")
    p.add_argument("--budget-s", type=float, default=3600.0, help="skip configurations past this many seconds")
    args = p.parse_args(argv)
    steps, repeats = (2, 1) if args.tiny else (args.steps, args.repeats)
    cores = torch.get_num_threads()
    threads = args.threads or sorted({1, cores})
    device = torch.device("cpu")
    meta = environment(device)
    meta.update(command=" ".join(["python", "bench/cpu_sampling.py", *(argv or sys.argv[1:])]),
                cpu_count=os.cpu_count(), default_threads=cores, tiny=args.tiny)
    run = Runner(Path(args.out), NAME, args.budget_s, meta, markdown)
    torch.manual_seed(0)
    for model in args.models:
        if model == "demo":
            pipe, prompts = demo_pipeline(args.tiny)
            guidance = 4.0
        else:
            pipe, prompts = small_ldm_pipeline(args.tiny, args.unet_channels), None
            guidance = 1.0
        run.set(("models", model, "unet_params"), sum(p.numel() for p in pipe.unet.parameters()))
        for precision in args.precisions:
            for n in threads:
                def one(pipe=pipe, prompts=prompts, guidance=guidance, precision=precision, n=n) -> dict[str, Any]:
                    result = measure(pipe, prompts, steps=steps, guidance=guidance, precision=precision, threads=n,
                                     repeats=repeats)
                    return dict(result, precision=precision, threads=n)

                run.item(("models", model, f"{precision}_t{n}"), 0.0, one)
        ratios = {}
        for n in threads:
            fp32, bf16 = (get(run.results, "models", model, f"{p}_t{n}", "seconds") for p in PRECISIONS)
            if fp32 and bf16:
                ratios[f"bf16_vs_fp32_t{n}"] = fp32 / bf16
        for precision in args.precisions:
            one, many = (get(run.results, "models", model, f"{precision}_t{n}", "seconds") for n in (1, threads[-1]))
            if one and many and threads[-1] != 1:
                ratios[f"{precision}_t{threads[-1]}_vs_t1"] = one / many
        run.set(("speedups", model), ratios)
    run.save()
    print(f"wrote {Path(args.out) / (NAME + '.json')} and .md in {run.elapsed():.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
