"""Variants of ldmkit's compiled training step, timed side by side in one call: what the profile suggested.

The profile of the compiled SD-1.x training step (docs/results/performance.md) left ~95 copy kernels per step
around the attention calls and ~6% of the step with the GPU idle. Variants, each compiled afresh:

  default      torch.compile, the SDPA backend torch picks (cuDNN attention on H100)
  flash-first  the same, with flash attention first in SDPA's priority list (it takes the [B, N, heads, d]
               layout the projections produce, where cuDNN attention may want its inputs copied)
  cudagraphs   torch.compile(mode="reduce-overhead"): forward and backward replayed as CUDA graphs
  max-autotune torch.compile(mode="max-autotune-no-cudagraphs"): inductor times Triton templates against cuBLAS
               and cuDNN for the matrix products and convolutions, and takes the fastest
  float8       the transformer blocks' linear layers (attention projections, feed-forward: the ones
               ``--quantize`` converts for sampling) trained in float8 with dynamic scaling (torchao
               ``convert_to_float8_training``; compute capability 8.9 or more), then compiled as ``default``

Writes train_variants.json / .md to --out, with the same timing method as gpu_vs_diffusers.py.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from measure import Runner, environment, fast_cuda_settings, free_memory, md_table
from models import build_unet, text_unet_config, unet_call
from train_step import make_train_step, time_train_step

VARIANTS = ("default", "flash-first", "cudagraphs", "max-autotune", "float8")
MODES = {"cudagraphs": "reduce-overhead", "max-autotune": "max-autotune-no-cudagraphs"}
NAME = "train_variants"


def attention_priority(variant: str) -> contextlib.AbstractContextManager:
    if variant != "flash-first":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def float8_training(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with its transformer blocks' linear layers swapped for torchao's float8 training linears."""
    from torchao.float8 import convert_to_float8_training  # the benchmark's optional dependency (quant extra)

    from ldmkit.pipelines.quantize import transformer_linears

    chosen = set(transformer_linears(net))
    return convert_to_float8_training(net, module_filter_fn=lambda module, name: name in chosen)


def no_compile_caches() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
    with contextlib.suppress(AttributeError):  # the AOTAutograd cache exists in recent torch versions only
        stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
    return stack


def measure(variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    free_memory(device)
    cfg = text_unet_config(args.tiny)
    net = build_unet("ldmkit", cfg, device).train().to(memory_format=torch.channels_last)
    if variant == "float8":
        net = float8_training(net)
    mode = MODES.get(variant, "default")
    model = torch.compile(net, backend=args.compile_backend,
                          mode=mode if args.compile_backend == "inductor" else None)
    step = make_train_step(unet_call("ldmkit", model), net.parameters(), cfg, args.size, args.batch, args.tokens,
                           device, channels_last=True)
    # Each variant compiles from scratch: a cached graph would carry the previous variant's attention backend
    # (the choice is made while tracing) and hide the compile time.
    with attention_priority(variant), no_compile_caches():
        out = time_train_step(step, args.batch, device, compiled=True, warmup=args.warmup, iters=args.iters,
                              profile=args.profile, profile_steps_n=1 if args.tiny else 3)
    if "profile" in out:
        out["profile"].pop("kernels")  # the groups and top kernels are enough here
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    rows, base = [], (results.get("default") or {}).get("img_s")
    for variant in VARIANTS:
        r = results.get(variant)
        if not isinstance(r, dict):
            continue
        p = r.get("profile", {})
        rows.append([variant, r.get("img_s"), None if not (base and r.get("img_s")) else r["img_s"] / base,
                     r.get("compile_s"), r.get("peak_mem_gb"), p.get("groups_ms", {}).get("layout & copies"),
                     p.get("groups_ms", {}).get("attention"), p.get("idle_share"), r.get("error")])
    return (f"# ldmkit compiled training step, variants — {meta.get('card')}\n\ntorch {meta.get('torch')}; command: "
            f"`{meta.get('command')}`; wall {meta.get('wall_s')} s.\n\n" + md_table(
                ["variant", "img/s", "vs default", "compile s", "peak GB", "copies ms", "attention ms", "GPU idle",
                 "error"], rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/train_variants")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--size", type=int, default=32, help="latent side")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny UNet, 2 iterations (smoke test on CPU)")
    p.add_argument("--profile", action="store_true", help="also profile each variant's step")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--budget-s", type=float, default=560.0)
    args = p.parse_args(argv)
    args.tokens, args.warmup, args.iters = (8, 1, 2) if args.tiny else (77, 3, 10)
    device = torch.device(args.device)
    fast_cuda_settings(device)
    meta = environment(device)
    meta["command"] = " ".join(["python", "bench/train_variants.py", *(argv or sys.argv[1:])])
    run = Runner(Path(args.out), NAME, args.budget_s, meta, markdown)
    for variant in args.variants:
        if variant == "cudagraphs" and device.type != "cuda":
            run.skip(variant, "CUDA graphs need a CUDA device")
            continue
        if variant == "float8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
            run.skip(variant, "float8 training needs a GPU of compute capability 8.9 or more")
            continue
        run.item((variant,), 0 if args.tiny else 170, lambda variant=variant: measure(variant, args, device))
    run.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
