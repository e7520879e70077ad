"""One image as a person at the web demo waits for it: SD-1.x shapes at 512² (64² latents), one prompt with
classifier-free guidance (batch 2 through the UNet), 25 DPM-Solver++(2M) steps, ldmkit beside diffusers 0.42.1.

Per side, median of ``--iters`` after warm-up, CUDA events: the text encoder (CLIP ViT-L/14 text model from
transformers, the same module on both sides), one UNet evaluation at batch 2 (ldmkit: ``optimize_network`` with
CUDA graphs; diffusers: bf16, fused QKV, channels-last, ``torch.compile(mode="reduce-overhead")``), the 25-step
sampling loop (ldmkit: ``samplers.sample``; diffusers: ``DPMSolverMultistepScheduler`` driving its UNet the way its
pipeline does), the VAE decode of one 512² image (both decoders compiled on the GPU), and the three in sequence
(end to end). Random weights.

    python bench/latency.py --out $OUT                          # GPU, ~8 min (two UNet and two decoder compiles)
    python bench/latency.py --tiny --device cpu --out /tmp/b    # smoke test of the script (eager, tiny models)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Runner, environment, free_memory, md_table, median_seconds  # noqa: E402
from models import (build_unet, build_vae, peer_fast_path, text_unet_config, unet_call, vae_config,  # noqa: E402
                    vae_decode_call)

STEPS = 25


def _text_encoder(tiny: bool, device: torch.device):
    import transformers

    width, vocab = text_unet_config(tiny).context_dim, 1000 if tiny else 49408  # ViT-L/14's text tower
    config = transformers.CLIPTextConfig(hidden_size=width, intermediate_size=4 * width,
                                         num_attention_heads=2 if tiny else 12, num_hidden_layers=1 if tiny else 12,
                                         max_position_embeddings=77, vocab_size=vocab, bos_token_id=vocab - 2,
                                         eos_token_id=vocab - 1)
    return transformers.CLIPTextModel(config).to(device).eval().requires_grad_(False)


def _unet(impl: str, cfg, device: torch.device, fast: bool):
    from ldmkit.pipelines.text2img import optimize_network

    net = build_unet(impl, cfg, device).eval().requires_grad_(False)
    if impl == "ldmkit":
        return optimize_network(net, compile=fast, mode="reduce-overhead", channels_last=fast, bf16_weights=fast)
    return peer_fast_path(net) if fast else net


def _ldmkit_loop(call, steps: int):
    from ldmkit import samplers
    from ldmkit.conditioning.types import Conditioning
    from ldmkit.denoisers.wrapper import Denoiser
    from ldmkit.diffusion.schedules import NoiseSchedule

    schedule = NoiseSchedule()

    class Network(torch.nn.Module):
        def forward(self, x, t, cond):
            return call(x, t, cond.context)

    denoiser = Denoiser(Network(), schedule)
    options = samplers.SamplerOptions(sampler="dpm++2m", steps=steps, guidance=7.5)

    def run(noise, context, null):
        return samplers.sample(options, denoiser, noise, Conditioning(context=context), Conditioning(context=null))

    return run


def _diffusers_loop(call, steps: int):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            use_karras_sigmas=True)

    def run(noise, context, null):
        scheduler.set_timesteps(steps, device=noise.device)
        latents, both = noise, torch.cat([null, context])
        for t in scheduler.timesteps:
            prediction = call(torch.cat([latents] * 2), t.expand(2 * noise.shape[0]), both)
            uncond, cond = prediction.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
        return latents

    return run


def measure(impl: str, tiny: bool, device: torch.device, iters: int, fast: bool) -> dict[str, Any]:
    free_memory(device)
    cfg, vae_cfg = text_unet_config(tiny), vae_config(tiny)
    size = 8 if tiny else 64
    dtype = torch.bfloat16 if fast else torch.float32
    text = _text_encoder(tiny, device).to(dtype)
    call = unet_call(impl, _unet(impl, cfg, device, fast))
    vae = build_vae(impl, vae_cfg, device).eval().requires_grad_(False).to(dtype)
    decode = vae_decode_call(impl, vae)
    if fast:  # both sides' decoders compiled, as ldmkit's pipe.optimize() does (and diffusers' guide suggests)
        decode = torch.compile(decode)
    loop = (_ldmkit_loop if impl == "ldmkit" else _diffusers_loop)(call, STEPS)
    ids = torch.randint(0, text.config.vocab_size, (2, 77), device=device)
    noise = torch.randn(1, cfg.in_channels, size, size, device=device, dtype=dtype)
    x2, t2 = torch.cat([noise] * 2), torch.full((2,), 500, device=device)

    def encode():
        states = text(input_ids=ids).last_hidden_state  # [2, 77, D]: the prompt and the empty prompt
        return states[:1], states[1:]

    context, null = encode()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
        out = {"text_ms": 1e3 * median_seconds(encode, device, warmup=2, iters=iters),
               "unet_eval_ms": 1e3 * median_seconds(lambda: call(x2, t2, torch.cat([null, context])), device,
                                                    warmup=3, iters=iters * 4)}
        out["unet_it_s"] = 1e3 / out["unet_eval_ms"]
        out["sampling_ms"] = 1e3 * median_seconds(lambda: loop(noise, context, null), device, warmup=1, iters=iters)
        latents = loop(noise, context, null)
        out["decode_ms"] = 1e3 * median_seconds(lambda: decode(latents.to(dtype)), device, warmup=1, iters=iters)

        def end_to_end():
            c, u = encode()
            return decode(loop(noise, c, u).to(dtype))

        out["end_to_end_ms"] = 1e3 * median_seconds(end_to_end, device, warmup=1, iters=iters)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/latency")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--budget-s", type=float, default=570)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    fast = device.type == "cuda"  # bf16, channels-last, CUDA graphs: GPU only
    run = Runner(Path(args.out), "latency", args.budget_s, {"env": environment(device), "steps": STEPS,
                                                              "fast_path": fast}, write_markdown=markdown)
    impls = ["ldmkit"]
    try:
        import diffusers  # noqa: F401

        impls.append("diffusers")
    except ImportError:
        pass
    for impl in impls:
        run.item(("latency", impl), 270, lambda impl=impl: measure(impl, args.tiny, device, args.iters, fast))
    run.save()
    return 0


def markdown(results: dict[str, Any]) -> str:
    keys = ("text_ms", "unet_eval_ms", "unet_it_s", "sampling_ms", "decode_ms", "end_to_end_ms")
    rows = [[impl, *(r.get(k) for k in keys)] for impl, r in results.get("latency", {}).items()]
    return md_table(["side", "text encoder ms", "UNet eval ms (batch 2)", "UNet it/s", f"{STEPS} steps ms",
                     "decode ms", "end to end ms"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
