"""ldmkit vs diffusers 0.42.1 on one card, side by side: throughput, FLOPs, memory, MFU, LDM cost claims.

Sections (``--only``; all by default, in this order, cheapest first):

  ceiling  bf16 matmul throughput (8192³): the MFU denominator
  check    parameters and forward FLOPs of both UNets (SD-1.x) and both VAEs (SD VAE): must be equal; a
           diffusers UNet converted to ldmkit gives its outputs (fp32 relative error)
  sync     host syncs per sampling step of every ldmkit sampler (CUDA sync-debug mode)
  infer    UNet evaluations/s at batch 16 (bf16 weights): eager, compiled, CUDA graphs; also the converted
           UNet (``converted``), which must run as fast as the native one, and with ``--quantize int8 fp8``
           ldmkit's with int8 / fp8 transformer GEMMs (``ldmkit+int8``, ``ldmkit+fp8``)
  train    training img/s (bf16 autocast, fused AdamW, ε-MSE, random data): eager, compiled; with --profile
           also kernel time by group, top kernels and GPU idle share of each timed step
  vae      VAE decode img/s at 512² batch 8 (bf16 weights): eager, compiled
  cost     paper §4.1: train/sample img/s at 256² in pixel space (f=1) vs latent f=4 / f=8, matched UNets,
           first-stage encode/decode cost included
  ddp      ldmkit training img/s at 1, 2, … processes (one GPU each); skipped with fewer than 2 GPUs

Every measurement is a separate item inside a wall-time budget (``--budget-s``): items that would pass it
are skipped and listed, a failing item (OOM, compile error) is recorded and the run goes on, and the JSON
(``gpu_vs_diffusers.json``) and markdown tables (``gpu_vs_diffusers.md``) under ``--out`` are rewritten
after every item. torch.compile times are reported (``compile_s``) and excluded from throughput.

A full run compiles the SD-1.x UNet about fourteen times (1-3 minutes each): more than one 9-minute call.
Split it (estimated H100 wall times; each call measures its own ceiling, so MFU stays within one call)::

    python bench/gpu_vs_diffusers.py --only ceiling check sync infer vae --out $OUT   # ~7 min
    python bench/gpu_vs_diffusers.py --only ceiling train --sizes 32 --profile --out $OUT   # ~7 min
    python bench/gpu_vs_diffusers.py --only ceiling train --sizes 64 --out $OUT       # ~6 min
    python bench/gpu_vs_diffusers.py --only ceiling cost --out $OUT                   # ~3 min
    python bench/gpu_vs_diffusers.py --only ddp --out $OUT    # on a 2-GPU machine, ~2 min

Each writes the same file names: give each call its own --out (or copy the files off) to keep them all.

``--quick`` times fewer iterations and samples fewer steps; ``--tiny --device cpu`` runs every section
end to end with tiny models (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (
    Runner,
    environment,
    fast_cuda_settings,
    first_call,
    free_memory,
    get,
    md_table,
    median_seconds,
    peak_memory_gb,
    reset_peak_memory,
    strict_fp32,
)
from models import (
    IMPLS,
    build_unet,
    build_vae,
    compare,
    converted_unet,
    count_params,
    cost_first_stage,
    cost_unet_config,
    forward_flops,
    peer_fast_path,
    text_unet_config,
    unet_call,
    unet_counts,
    vae_config,
    vae_decode_call,
    vae_decode_counts,
)
from profile_step import drop_annotations
from train_step import make_train_step, time_train_step

SECTIONS = ("ceiling", "check", "sync", "infer", "train", "vae", "cost", "ddp")
MODES = ("eager", "compiled", "cudagraphs")
NAME = "gpu_vs_diffusers"

# Rough H100 wall times (s) of one item, for the budget check: compiling the SD-1.x UNet for training
# takes 2-3 minutes (the peer's runs: 116-159 s), for inference about 1 (plain compile after CUDA graphs
# reuses the inductor cache).
ESTIMATES = {"ceiling": 10, "check": 15, "sync": 20, "infer_eager": 15, "infer_cudagraphs": 100,
             "infer_compiled": 50, "train_eager": 25, "train_compiled": 180, "vae_eager": 15,
             "vae_compiled": 60, "cost": 60, "ddp": 60}


@dataclass
class Settings:
    device: torch.device
    tiny: bool
    quick: bool
    sizes: list[int]
    impls: list[str]
    modes: list[str]
    backend: str
    channels_last: bool
    ceiling_tflops: float | None
    warmup: int = 3
    iters: int = 10
    tokens: int = 77
    train_batch: dict[int, int] = field(default_factory=dict)
    infer_batch: int = 16
    vae_image: int = 512
    vae_batch: int = 8
    cost_image: int = 256
    cost_train_batch: int = 8
    cost_sample_batch: int = 16
    cost_steps: int = 50
    ddp_size: int = 32
    ddp_batch: int = 128
    ddp_cpu: bool = False
    profile: bool = False
    profile_origins: bool = False
    quantize: list[str] = field(default_factory=list)

    def estimate(self, kind: str) -> float:
        return 0.0 if self.tiny else ESTIMATES[kind] * (0.7 if self.quick else 1.0)


# -------------------------------------------------------------------------------------------- sections
def section_ceiling(run: Runner, s: Settings) -> None:
    def measure() -> dict[str, Any]:
        n = 256 if s.tiny else 8192
        a = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
        b = torch.randn_like(a)
        seconds = median_seconds(lambda: a @ b, s.device, warmup=s.warmup, iters=max(s.iters, 10))
        return {"n": n, "bf16_matmul_tflops": 2 * n**3 / seconds / 1e12}

    result = run.item(("ceiling",), s.estimate("ceiling"), measure)
    if result and s.ceiling_tflops is None:
        s.ceiling_tflops = result["bf16_matmul_tflops"]


_COUNTS: dict[tuple[str, int], dict[str, int]] = {}


def unet_flops(s: Settings, impl: str, size: int) -> dict[str, int]:
    key = (impl, size)
    if key not in _COUNTS:
        _COUNTS[key] = unet_counts(impl, text_unet_config(s.tiny), size, s.tokens)
    return _COUNTS[key]


def section_check(run: Runner, s: Settings) -> None:
    for size in s.sizes:
        run.item(("check", "unet", f"lat{size}"), s.estimate("check"),
                 lambda size=size: compare({impl: unet_flops(s, impl, size) for impl in IMPLS}))
    run.item(("check", "converted", f"lat{s.sizes[0]}"), s.estimate("check"),
             lambda: converted_parity(s, s.sizes[0]))
    run.item(("check", "vae", f"px{s.vae_image}"), s.estimate("check"),
             lambda: compare({impl: vae_decode_counts(impl, vae_config(s.tiny), s.vae_image) for impl in IMPLS}))


def converted_parity(s: Settings, size: int) -> dict[str, Any]:
    """fp32 outputs of a diffusers UNet and of the ldmkit UNet converted from it, on the same inputs: the
    ``converted`` rows of the inference table time that network."""
    free_memory(s.device)
    cfg = text_unet_config(s.tiny)
    theirs, ours = (net.eval().requires_grad_(False) for net in converted_unet(cfg, s.device))
    g = torch.Generator(device=s.device).manual_seed(0)
    x = torch.randn(2, cfg.in_channels, size, size, device=s.device, generator=g)
    context = torch.randn(2, s.tokens, cfg.context_dim, device=s.device, generator=g)
    t = torch.tensor([10, 700], device=s.device)
    with torch.no_grad(), strict_fp32():
        want, got = unet_call("diffusers", theirs)(x, t, context), unet_call("converted", ours)(x, t, context)
    rel = float((got - want).norm() / want.norm().clamp(min=1e-12))
    return {"relative_error": rel, "params": count_params(ours), "exact_within_1e-5": rel <= 1e-5}


def mfu(s: Settings, flops_per_second: float) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the measured bf16 matmul ceiling (GPU only)."""
    if not s.ceiling_tflops or s.device.type != "cuda":
        return None
    return flops_per_second / 1e12 / s.ceiling_tflops


def _compile(s: Settings, fn: Callable, mode: str = "default") -> Callable:
    inductor = s.backend == "inductor"
    return torch.compile(fn, backend=s.backend, mode=mode if inductor else None)


def section_infer(run: Runner, s: Settings) -> None:
    """UNet evaluations/s at batch 16 with bf16 weights and inputs (8 prompts with classifier-free guidance)."""
    from ldmkit.pipelines.text2img import optimize_network

    cfg = text_unet_config(s.tiny)
    # CUDA graphs (the best row) before plain compile: the latter then reuses the inductor cache.
    for mode in [m for m in ("eager", "cudagraphs", "compiled") if m in s.modes]:
        if mode == "cudagraphs" and s.device.type != "cuda":
            run.skip(f"infer/*/{mode}", "CUDA graphs need a CUDA device")
            continue
        if mode == "cudagraphs" and s.backend != "inductor":
            run.skip(f"infer/*/{mode}", f"CUDA graphs come with the inductor backend, not '{s.backend}'")
            continue
        # "converted": the ldmkit UNet `ldm convert` makes of a diffusers one, on ldmkit's fast path too;
        # "ldmkit+KIND": ldmkit's with its transformer GEMMs quantized (--quantize; ldmkit.pipelines.quantize).
        impls = [*s.impls, "converted"] if "ldmkit" in s.impls and "diffusers" in s.impls else list(s.impls)
        impls += [f"ldmkit+{kind}" for kind in s.quantize if "ldmkit" in s.impls]
        for size in s.sizes:
            for impl in impls:
                first = impl == impls[0]
                estimate = s.estimate(f"infer_{mode}") * (len(impls) if first else 1)

                def measure(impl: str = impl, size: int = size, mode: str = mode) -> dict[str, Any]:
                    free_memory(s.device)
                    built, _, kind = impl.partition("+")
                    net = build_unet(built, cfg, s.device).eval().requires_grad_(False)
                    if impl != "diffusers":  # the library's own fast path (LatentDiffusionPipeline.optimize)
                        net = optimize_network(net, compile=mode != "eager", backend=s.backend,
                                               mode="reduce-overhead" if mode == "cudagraphs" else "default",
                                               channels_last=s.channels_last, quantize=kind or None)
                    else:  # the peer's tuned recipe: bf16, fused QKV, channels_last, torch.compile
                        compile_mode = {"eager": None, "cudagraphs": "reduce-overhead"}.get(mode, "default")
                        net = peer_fast_path(net, mode=compile_mode, channels_last=s.channels_last,
                                             backend=s.backend)
                    call = unet_call("diffusers" if impl == "diffusers" else "ldmkit", net)
                    b = s.infer_batch
                    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
                    x = torch.randn(b, cfg.in_channels, size, size, device=s.device,
                                    dtype=torch.bfloat16).to(memory_format=fmt)
                    t = torch.full((b,), 500, device=s.device)
                    context = torch.randn(b, s.tokens, cfg.context_dim, device=s.device, dtype=torch.bfloat16)
                    out: dict[str, Any] = {"batch": b}
                    with torch.no_grad():
                        out.update(first_call(lambda: call(x, t, context), s.device, compiled=mode != "eager"))
                        seconds = median_seconds(lambda: call(x, t, context), s.device,
                                                 warmup=max(s.warmup, 3), iters=max(s.iters, 10))
                    flops = unet_flops(s, "diffusers" if impl == "diffusers" else "ldmkit", size)["fwd_flops"] * b
                    out.update(evals_s=1 / seconds, ms=seconds * 1e3, mfu=mfu(s, flops / seconds),
                               peak_mem_gb=peak_memory_gb(s.device))
                    return out

                run.item(("infer", f"lat{size}", impl, mode), estimate, measure)
    free_memory(s.device)


def section_train(run: Runner, s: Settings) -> None:
    cfg = text_unet_config(s.tiny)
    for mode in [m for m in s.modes if m != "cudagraphs"]:
        for size in s.sizes:
            for impl in s.impls:
                first = impl == s.impls[0]
                estimate = s.estimate(f"train_{mode}") * (len(s.impls) if first else 1)

                def measure(impl: str = impl, size: int = size, mode: str = mode) -> dict[str, Any]:
                    free_memory(s.device)
                    net = build_unet(impl, cfg, s.device).train()
                    if s.channels_last:
                        net = net.to(memory_format=torch.channels_last)
                    model = _compile(s, net) if mode == "compiled" else net
                    batch = s.train_batch[size]
                    step = make_train_step(unet_call(impl, model), net.parameters(), cfg, size, batch, s.tokens,
                                           s.device, channels_last=s.channels_last)
                    out = time_train_step(step, batch, s.device, compiled=mode == "compiled", warmup=s.warmup,
                                          iters=s.iters, profile=s.profile, profile_steps_n=1 if s.tiny else 3,
                                          origins=s.profile_origins)
                    out["mfu"] = mfu(s, 3 * unet_flops(s, impl, size)["fwd_flops"] * out["img_s"])  # fwd + 2 × bwd
                    return out

                run.item(("train", f"lat{size}", impl, mode), estimate, measure)
    free_memory(s.device)


def section_vae(run: Runner, s: Settings) -> None:
    cfg = vae_config(s.tiny)
    f = cfg.downsample_factor
    for mode in [m for m in s.modes if m != "cudagraphs"]:
        for impl in s.impls:
            def measure(impl: str = impl, mode: str = mode) -> dict[str, Any]:
                free_memory(s.device)
                vae = build_vae(impl, cfg, s.device).eval().requires_grad_(False).to(torch.bfloat16)
                fmt = torch.channels_last if s.channels_last else torch.contiguous_format
                vae = vae.to(memory_format=fmt)
                decode = vae_decode_call(impl, vae)
                if mode == "compiled":
                    decode = _compile(s, decode)
                z = torch.randn(s.vae_batch, cfg.latent_channels, s.vae_image // f, s.vae_image // f,
                                device=s.device, dtype=torch.bfloat16).to(memory_format=fmt)
                out: dict[str, Any] = {"batch": s.vae_batch}
                with torch.no_grad():
                    out.update(first_call(lambda: decode(z), s.device, compiled=mode == "compiled"))
                    seconds = median_seconds(lambda: decode(z), s.device, warmup=s.warmup, iters=s.iters)
                out.update(img_s=s.vae_batch / seconds, ms=seconds * 1e3, peak_mem_gb=peak_memory_gb(s.device))
                return out

            run.item(("vae", impl, mode), s.estimate(f"vae_{mode}"), measure)
    free_memory(s.device)


def section_sync(run: Runner, s: Settings) -> None:
    """Host syncs inside the sampling loop: sync warnings at 2 and 6 steps; the difference / 4 per step."""
    if s.device.type != "cuda":
        run.skip("sync", "the sync-debug mode needs a CUDA device (tests check the loop on CPU)")
        return

    def measure() -> dict[str, Any]:
        from ldmkit import samplers
        from ldmkit.conditioning.types import Conditioning
        from ldmkit.denoisers.unet import UNet
        from ldmkit.denoisers.unet_config import UNetConfig
        from ldmkit.denoisers.wrapper import Denoiser
        from ldmkit.diffusion.schedules import NoiseSchedule

        torch.manual_seed(0)
        net = UNet(UNetConfig.preset("tiny-cond")).to(s.device).eval()
        denoiser = Denoiser(net, NoiseSchedule())
        b = 2
        cond = Conditioning(context=torch.randn(b, 5, 12, device=s.device), vector=torch.randn(b, 6, device=s.device),
                            concat=torch.randn(b, 2, 16, 16, device=s.device))
        uncond = Conditioning(context=torch.zeros(b, 5, 12, device=s.device), vector=torch.zeros(b, 6, device=s.device),
                              concat=cond.concat)
        noise = torch.randn(b, 4, 16, 16, device=s.device)

        def syncs(name: str, steps: int) -> int:
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    with torch.no_grad():
                        samplers.sample(samplers.SamplerOptions(sampler=name, steps=steps, guidance=3.0), denoiser,
                                        noise, cond, uncond, generator=torch.Generator().manual_seed(0))
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            return sum("synchroniz" in str(w.message) for w in caught)

        out = {}
        for name in samplers.names():
            syncs(name, 2)  # first call: lazy initialisation
            few, more = syncs(name, 2), syncs(name, 6)
            out[name] = {"syncs_2_steps": few, "syncs_6_steps": more, "per_step": (more - few) / 4}
        return out

    run.item(("sync",), s.estimate("sync"), measure)


def section_cost(run: Runner, s: Settings) -> None:
    """Paper §4.1 (Fig. 6 / inpainting study): training and sampling throughput at one image size for
    f = 1 (pixel space), 4 and 8 with the same UNet; latents cached for training (encode cost apart)."""
    from ldmkit.autoencoders import build_autoencoder
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.denoisers.unet import UNet
    from ldmkit.diffusion.schedules import NoiseSchedule
    from ldmkit.model import LatentDiffusionModel
    from ldmkit.pipelines.text2img import LatentDiffusionPipeline

    image = s.cost_image
    for f in (1, 4, 8):
        def measure(f: int = f) -> dict[str, Any]:
            free_memory(s.device)
            with torch.device(s.device):
                autoencoder = build_autoencoder(cost_first_stage(s.tiny, f))
                channels = autoencoder.latent_channels
                cfg = cost_unet_config(s.tiny, channels)
                net = UNet(cfg)
            latent = image // f
            if s.channels_last:
                net = net.to(memory_format=torch.channels_last)
                autoencoder = autoencoder.to(memory_format=torch.channels_last)
            flops = _cost_flops(cfg, latent)
            out: dict[str, Any] = {"f": f, "latent": f"{latent}x{latent}x{channels}", "unet_params": sum(
                p.numel() for p in net.parameters()), "unet_fwd_gflops": flops / 1e9}
            # training on cached latents
            b = s.cost_train_batch
            step = make_train_step(unet_call("ldmkit", net), net.parameters(), cfg, latent, b, 0, s.device,
                                   channels_last=s.channels_last)
            reset_peak_memory(s.device)
            seconds = median_seconds(step, s.device, warmup=max(1, s.warmup - 1), iters=max(3, s.iters // 2))
            out.update(train_img_s=b / seconds, train_peak_mem_gb=peak_memory_gb(s.device),
                       train_mfu=mfu(s, 3 * flops * b / seconds))
            # first-stage encoding of the training images (what caching the latents saves)
            x = torch.randn(b, 3, image, image, device=s.device).clamp(-1, 1)
            with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16):
                encode_s = median_seconds(lambda: autoencoder.encode(x), s.device, warmup=1, iters=3)
            out["encode_img_s"] = b / encode_s
            out["train_img_s_encoding_on_the_fly"] = b / (seconds + encode_s)
            # sampling: DDIM steps + decode, through the pipeline users call
            net.eval().requires_grad_(False)
            model = LatentDiffusionModel(unet=net, schedule=NoiseSchedule(),
                                         conditioner=build_conditioner(ConditionerConfig(kind="none")),
                                         autoencoder=autoencoder.eval().requires_grad_(False),
                                         latent_size=(latent, latent))
            pipe = LatentDiffusionPipeline(model, precision="bf16")
            n = s.cost_sample_batch
            sample = lambda: pipe(n=n, steps=s.cost_steps, sampler="ddim", guidance=1.0, batch_size=n,
                                  output="tensor", progress=False)
            sample_s = median_seconds(sample, s.device, warmup=1, iters=2 if not s.tiny else 1)
            z = torch.randn(n, channels, latent, latent, device=s.device)
            decode_s = median_seconds(lambda: pipe.decode(z), s.device, warmup=1, iters=3)
            out.update(sample_steps=s.cost_steps, sample_batch=n, sample_img_s=n / sample_s,
                       decode_share=decode_s / sample_s)
            return out

        run.item(("cost", f"f{f}"), s.estimate("cost"), measure)
    pixel = get(run.results, "cost", "f1")
    for f in (4, 8):
        latent = get(run.results, "cost", f"f{f}")
        if isinstance(pixel, dict) and isinstance(latent, dict) and "train_img_s" in pixel and "train_img_s" in latent:
            run.set(("cost", f"speedup_f{f}_vs_pixel"), {
                key: latent[key] / pixel[key] for key in ("train_img_s", "train_img_s_encoding_on_the_fly",
                                                          "sample_img_s")})
    run.save()
    free_memory(s.device)


def _cost_flops(cfg: Any, latent: int) -> int:
    """Forward FLOPs per sample of an unconditional ldmkit UNet on a ``latent``² input (meta device)."""
    from ldmkit.denoisers.unet import UNet

    with torch.device("meta"):
        net = UNet(cfg)
        x = torch.empty(1, cfg.in_channels, latent, latent)
        t = torch.zeros(1, dtype=torch.long)
    return forward_flops(lambda: net(x, t))


def section_ddp(run: Runner, s: Settings) -> None:
    from ddp_scaling import measure_world

    if s.device.type == "cuda":
        gpus = torch.cuda.device_count()
        if gpus < 2:
            run.set(("ddp",), {"skipped": f"{gpus} GPU visible; DDP scaling needs at least 2"})
            run.save()
            return
        worlds = [w for w in (1, 2, 4, 8) if w <= gpus]
    elif s.ddp_cpu:
        worlds = [1, 2]
    else:
        run.set(("ddp",), {"skipped": "CPU run; pass --ddp-cpu to exercise the launch with gloo"})
        run.save()
        return
    spec = {"device": s.device.type, "tiny": s.tiny, "size": s.ddp_size, "batch": s.ddp_batch, "tokens": s.tokens,
            "channels_last": s.channels_last, "warmup": s.warmup, "iters": s.iters,
            "timeout_s": 600 if s.tiny else 240}  # a multi-process run that hangs fails instead (tiny: CPU tests on busy cores)
    free_memory(s.device)  # the workers are fresh processes; give them the memory earlier sections cached
    for world in worlds:
        run.item(("ddp", f"world{world}"), s.estimate("ddp"), lambda world=world: measure_world(world, spec))
    one = get(run.results, "ddp", "world1", "img_s")
    for world in worlds[1:]:
        many = get(run.results, "ddp", f"world{world}", "img_s")
        if one and many:
            run.set(("ddp", f"world{world}", "speedup"), many / one)
            run.set(("ddp", f"world{world}", "efficiency"), many / one / world)
    run.save()


SECTION_FUNCTIONS = {"ceiling": section_ceiling, "check": section_check, "sync": section_sync,
                     "infer": section_infer, "train": section_train, "vae": section_vae, "cost": section_cost,
                     "ddp": section_ddp}


# -------------------------------------------------------------------------------------------- report
def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    header = (f"torch {meta.get('torch')}, diffusers {meta.get('diffusers')}, CUDA {meta.get('cuda')}; "
              f"command: `{meta.get('command')}`; wall {meta.get('wall_s')} s. "
              f"bf16 matmul ceiling: {_fmt(get(results, 'ceiling', 'bf16_matmul_tflops'))} TFLOP/s.\n")
    parts = [f"# ldmkit vs diffusers — {meta.get('card')}\n", header]
    check = results.get("check", {})
    rows = []
    for name, block in check.get("unet", {}).items():
        rows.append([f"UNet {name}", *_pair(block, "params"), *_pair(block, "fwd_flops", 1e9)])
    for name, block in check.get("vae", {}).items():
        rows.append([f"VAE decode {name}", *_pair(block, "params"), *_pair(block, "decode_flops", 1e9)])
    if rows:
        parts.append("\n## Parameters and FLOPs (per sample)\n\n" + md_table(
            ["model", "ldmkit params", "diffusers params", "equal", "ldmkit GFLOP", "diffusers GFLOP", "equal"], rows))
    rows = [[name, r.get("params"), r.get("relative_error"), r.get("exact_within_1e-5"), r.get("error")]
            for name, r in check.get("converted", {}).items()]
    if rows:
        parts.append("\n## A diffusers UNet converted to ldmkit (`converted` rows below): fp32 outputs\n\n"
                     + md_table(["latent", "params", "relative error", "≤ 1e-5", "error"], rows))
    for section, unit in (("infer", "evals_s"), ("train", "img_s")):
        rows = []
        for size, impls in results.get(section, {}).items():
            for impl, modes in impls.items():
                for mode, r in modes.items():
                    rows.append([size, impl, mode, r.get("batch"), r.get(unit), _pct(r.get("mfu")), r.get("compile_s"),
                                 r.get("peak_mem_gb"), r.get("error")])
        if rows:
            title = {"infer": "Inference: UNet evaluations/s (bf16 weights and inputs)",
                     "train": "Training img/s (bf16 autocast, fused AdamW, ε-MSE)"}[section]
            parts.append(f"\n## {title}\n\n" + md_table(
                ["latent", "impl", "mode", "batch", unit.replace("_", "/"), "MFU", "compile s", "peak GB", "error"],
                rows))
    parts.extend(profile_markdown(results.get("train", {})))
    rows = [[impl, mode, r.get("img_s"), r.get("compile_s"), r.get("peak_mem_gb"), r.get("error")]
            for impl, modes in results.get("vae", {}).items() for mode, r in modes.items()]
    if rows:
        parts.append("\n## VAE decode img/s (bf16 weights)\n\n" + md_table(
            ["impl", "mode", "img/s", "compile s", "peak GB", "error"], rows))
    cost = results.get("cost", {})
    rows = [[r.get("f"), r.get("latent"), r.get("unet_fwd_gflops"), r.get("train_img_s"),
             r.get("train_img_s_encoding_on_the_fly"), r.get("encode_img_s"), r.get("sample_img_s"),
             _pct(r.get("decode_share")), r.get("error")]
            for key, r in cost.items() if key.startswith("f") and isinstance(r, dict)]
    if rows:
        note = ("One UNet config at every f (LDM-4's: attention at its downsampling factors 2, 4, 8, i.e. 128², "
                "64², 32² tokens in pixel space at 256²); training on cached latents, and with the encoder run on "
                "the fly; sampling includes decoding.\n\n")
        parts.append("\n## Pixel vs latent space (paper §4.1), same UNet\n\n" + note + md_table(
            ["f", "UNet input", "GFLOP/fwd", "train img/s", "train img/s (encoding on the fly)", "encode img/s",
             "sample img/s", "decode share", "error"], rows))
        for key, r in cost.items():
            if key.startswith("speedup"):
                parts.append(f"- {key}: " + ", ".join(f"{k} ×{v:.2f}" for k, v in r.items()) + "\n")
    ddp = results.get("ddp", {})
    if "skipped" in ddp:
        parts.append(f"\n## DDP scaling\n\nskipped: {ddp['skipped']}\n")
    elif ddp:
        rows = [[r.get("world_size"), r.get("img_s"), r.get("speedup"), _pct(r.get("efficiency")), r.get("error")]
                for r in ddp.values() if isinstance(r, dict)]
        parts.append("\n## DDP scaling (ldmkit training)\n\n" + md_table(
            ["processes", "img/s", "speedup", "efficiency", "error"], rows))
    sync = results.get("sync", {})
    if sync and "error" not in sync:
        rows = [[name, r["syncs_2_steps"], r["syncs_6_steps"], r["per_step"]] for name, r in sync.items()
                if isinstance(r, dict) and "per_step" in r]
        parts.append("\n## Host syncs while sampling\n\n" + md_table(["sampler", "2 steps", "6 steps", "per step"],
                                                                     rows))
    for key in ("skipped", "errors"):
        if results.get(key):
            parts.append(f"\n## {key}\n\n" + "".join(f"- {e['item']}: {e.get('reason') or e.get('error')}\n"
                                                     for e in results[key]))
    return "".join(parts)


def profile_markdown(train: dict[str, Any]) -> list[str]:
    """Per profiled training step: ms per kernel group side by side, then each run's top kernels."""
    runs = {f"{size} {impl} {mode}": r["profile"] for size, impls in train.items() for impl, modes in impls.items()
            for mode, r in modes.items() if isinstance(r, dict) and "profile" in r}
    if not runs:
        return []
    groups = list(dict.fromkeys(g for p in runs.values() for g in p["groups_ms"]))
    rows = [[g, *(p["groups_ms"].get(g) for p in runs.values())] for g in groups]
    rows.append(["**kernels, total**", *(p["busy_ms"] for p in runs.values())])
    rows.append(["step wall time (profiled)", *(p.get("wall_ms") for p in runs.values())])
    rows.append(["GPU idle share", *(_pct(p.get("idle_share")) for p in runs.values())])
    parts = ["\n## Where a training step spends its time (ms per step, torch.profiler)\n\n"
             "Kernel time by group; the idle share is the wall time in which no kernel ran (host overhead, "
             "inflated by the profiler itself).\n\n" + md_table(["group", *runs], rows)]
    for name, p in runs.items():
        parts.append(f"\nTop kernels, {name}:\n\n" + md_table(
            ["kernel", "group", "ms/step", "calls/step"], [[k["name"], k["group"], k["ms"], k["calls"]]
                                                           for k in p["top"]]))
        if p.get("copy_origins"):
            parts.append(f"\nWhere the copies come from, {name}:\n\n" + md_table(
                ["op", "input shapes", "within", "caller", "ms/step", "calls/step"],
                [[o["op"], o["shapes"], o["within"], o["caller"], o["ms"], o["calls"]] for o in p["copy_origins"]]))
    return parts


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.0f}%"


def _pair(block: dict[str, Any], key: str, scale: float = 1.0) -> list[Any]:
    a, b = get(block, "ldmkit", key), get(block, "diffusers", key)
    fmt = (lambda v: None if v is None else (f"{v / scale:.4g}" if scale != 1 else f"{v:,}"))
    return [fmt(a), fmt(b), block.get(f"equal_{key}")]


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="directory for the JSON and markdown reports")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--sizes", nargs="+", type=int, default=None,
                   help="latent sizes for check/train/infer (default 32 64; tiny: 8 16)")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS), help="which side(s) to time")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="eager, compiled (torch.compile), cudagraphs (inference only)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a smoke test)")
    p.add_argument("--tiny", action="store_true", help="tiny models and few iterations (tests, CPU)")
    p.add_argument("--quick", action="store_true", help="fewer timed iterations and sampling steps")
    p.add_argument("--budget-s", type=float, default=510.0, help="skip items that would run past this many seconds")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (inductor; 'eager' only traces, for smoke tests)")
    p.add_argument("--contiguous", action="store_true", help="NCHW instead of channels-last tensors on both sides")
    p.add_argument("--ceiling-tflops", type=float, default=None,
                   help="MFU denominator when the ceiling section is not run")
    p.add_argument("--ddp-cpu", action="store_true", help="on CPU, run the DDP section with gloo (launch test)")
    p.add_argument("--rewrite-report", action="store_true",
                   help="measure nothing: take annotation ranges out of the stored profiles of the report in --out "
                        "(counted twice before they were filtered) and rewrite its files")
    p.add_argument("--quantize", nargs="+", default=[], choices=("int8", "int8-weight", "fp8"),
                   help="also time ldmkit's UNet with its transformer GEMMs quantized (infer; needs torchao)")
    p.add_argument("--profile", action="store_true",
                   help="also profile each timed training step (kernel time by group, top kernels, GPU idle share)")
    p.add_argument("--profile-origins", action="store_true",
                   help="with --profile: also where the copies come from (op, shapes, enclosing ops, caller)")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    device = torch.device(args.device)
    s = Settings(device=device, tiny=args.tiny, quick=args.quick, sizes=args.sizes or ([8, 16] if args.tiny else
                 [32, 64]), impls=args.impl, modes=args.modes, backend=args.compile_backend,
                 channels_last=not args.contiguous, ceiling_tflops=args.ceiling_tflops, ddp_cpu=args.ddp_cpu,
                 profile=args.profile or args.profile_origins, profile_origins=args.profile_origins,
                 quantize=args.quantize)
    s.train_batch = {32: 128, 64: 32}
    if args.quick:
        s.warmup, s.iters, s.cost_steps = 2, 5, 20
    if args.tiny:
        s.warmup, s.iters, s.tokens = 1, 2, 8
        s.train_batch = {}
        s.infer_batch, s.vae_image, s.vae_batch = 2, 32, 1
        s.cost_image, s.cost_train_batch, s.cost_sample_batch, s.cost_steps = 32, 2, 2, 2
        s.ddp_size, s.ddp_batch = 8, 2
    for size in s.sizes:  # other sizes: keep the work per step of the 64² batch of 32
        s.train_batch.setdefault(size, 2 if args.tiny else max(1, math.ceil(32 * 64**2 / size**2)))
    return s


def rewrite_report(out: Path) -> None:
    """Take the annotation ranges out of a stored report's profiles and rewrite its JSON and markdown."""
    path = out / f"{NAME}.json"
    results = json.loads(path.read_text())
    for impls in results.get("train", {}).values():
        for modes in impls.values():
            for r in modes.values():
                if isinstance(r, dict) and "profile" in r:
                    r["profile"] = drop_annotations(r["profile"])
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / f"{NAME}.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rewrite_report:
        rewrite_report(Path(args.out))
        return 0
    s = settings_from(args)
    fast_cuda_settings(s.device)
    meta = environment(s.device)
    meta.update(command=" ".join(["python", "bench/gpu_vs_diffusers.py", *(argv or sys.argv[1:])]), tiny=s.tiny,
                quick=s.quick, channels_last=s.channels_last, compile_backend=s.backend)
    with contextlib.suppress(ImportError):
        import diffusers

        meta["diffusers"] = diffusers.__version__
    run = Runner(Path(args.out), NAME, args.budget_s, meta, markdown)
    if "diffusers" in s.impls and "diffusers" not in meta:
        print("diffusers is not installed: timing ldmkit only", flush=True)
        s.impls = [i for i in s.impls if i != "diffusers"]
        run.skip("diffusers", "not installed")
        if "check" in args.only:
            run.skip("check", "the parameter/FLOP check compares with diffusers, which is not installed")
    # One static graph per latent size (as in the peer's runs), not a dynamic-shape graph after the second size.
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        for section in SECTIONS:  # fixed order: cheap sections first, whatever order --only lists
            if section in args.only and not (section == "check" and "diffusers" not in meta):
                SECTION_FUNCTIONS[section](run, s)
    run.save()
    unequal = [f"{name}: {key}" for group in run.results.get("check", {}).values() for name, block in group.items()
               for key, value in block.items() if key.startswith("equal_") and value is False]
    if unequal:
        print("ldmkit and diffusers differ in " + "; ".join(unequal), flush=True)
        return 1
    print(f"wrote {Path(args.out) / (NAME + '.json')} and .md in {run.elapsed():.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
