"""Levers for one image: the SD-1.x UNet at batch 2 (one prompt with classifier-free guidance), 64² latents,
CUDA graphs, in compiler variants timed side by side in one call with the peer's best.

At batch 2 the UNet runs at a few per cent of the card's matmul rate: many small kernels, each too short to fill
the GPU, and CUDA graphs already remove their launch cost. What is left to try is in the compiler:

  graphs             ldmkit's fast path (``optimize_network``: bf16, channels-last, ``reduce-overhead``)
  graphs+freezing    the same with inductor's ``freezing``: weights become constants, folded and laid out once
  graphs+coordinate  the same with ``coordinate_descent_tuning``: each generated kernel's launch shape searched
  max-autotune       ``mode="max-autotune"``: GEMM and convolution templates benchmarked (slow to compile)
  diffusers          the peer's recipe (bf16, fused QKV, channels-last, ``reduce-overhead``)

Each variant compiles afresh (no inductor caches). Writes infer_variants.json / .md to --out: evaluations/s,
ms, compile seconds, each against ``graphs`` and against ``diffusers`` (the same call only).

    python bench/infer_variants.py --out $OUT                         # GPU, about 6 minutes
    python bench/infer_variants.py --tiny --device cpu --compile-backend eager --out /tmp/v   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from measure import Runner, environment, fast_cuda_settings, first_call, free_memory, md_table, median_seconds
from models import build_unet, peer_fast_path, text_unet_config, unet_call
from train_variants import no_compile_caches

VARIANTS = ("graphs", "graphs+freezing", "graphs+coordinate", "max-autotune", "diffusers")
NAME = "infer_variants"
#: Rough seconds of one variant on an H200 (compile included), for the budget check.
ESTIMATE_S = {"max-autotune": 240}


def compiler_settings(variant: str) -> contextlib.AbstractContextManager:
    if variant == "graphs+freezing":
        return torch._inductor.config.patch(freezing=True)
    if variant == "graphs+coordinate":
        return torch._inductor.config.patch(coordinate_descent_tuning=True)
    return contextlib.nullcontext()


def build(variant: str, cfg, device: torch.device, backend: str):
    from ldmkit.pipelines.text2img import optimize_network

    impl = "diffusers" if variant == "diffusers" else "ldmkit"
    net = build_unet(impl, cfg, device).eval().requires_grad_(False)
    fast = device.type == "cuda"
    if impl == "diffusers":
        return impl, peer_fast_path(net, bf16=fast, backend=backend)
    mode = "max-autotune" if variant == "max-autotune" else "reduce-overhead"
    return impl, optimize_network(net, mode=mode, backend=backend, bf16_weights=fast)


def measure(variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    free_memory(device)
    cfg = text_unet_config(args.tiny)
    size, tokens = (8, 8) if args.tiny else (64, 77)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(2, cfg.in_channels, size, size, device=device, dtype=dtype).to(memory_format=torch.channels_last)
    t = torch.full((2,), 500, device=device)
    context = torch.randn(2, tokens, cfg.context_dim, device=device, dtype=dtype)
    with compiler_settings(variant), no_compile_caches(), torch.no_grad():
        impl, net = build(variant, cfg, device, args.compile_backend)
        call = unet_call(impl, net)
        out: dict[str, Any] = {"batch": 2, **first_call(lambda: call(x, t, context), device, compiled=True)}
        seconds = median_seconds(lambda: call(x, t, context), device, warmup=args.warmup, iters=args.iters)
    out.update(evals_s=1 / seconds, ms=seconds * 1e3)
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    base = (results.get("graphs") or {}).get("evals_s")
    peer = (results.get("diffusers") or {}).get("evals_s")
    rows = []
    for variant in VARIANTS:
        r = results.get(variant)
        if not isinstance(r, dict):
            continue
        rate = r.get("evals_s")
        rows.append([variant, rate, r.get("ms"), None if not (base and rate) else rate / base,
                     None if not (peer and rate) else rate / peer, r.get("compile_s"), r.get("error")])
    return (f"# One image: UNet at batch 2, compiler variants — {meta.get('card')}\n\ntorch {meta.get('torch')}; "
            f"command: `{meta.get('command')}`; wall {meta.get('wall_s')} s.\n\n" + md_table(
                ["variant", "evals/s", "ms", "vs graphs", "vs diffusers", "compile s", "error"], rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/infer_variants")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny UNet, few iterations (smoke test on CPU)")
    p.add_argument("--compile-backend", default="inductor", help="'eager' only traces (smoke tests)")
    p.add_argument("--budget-s", type=float, default=560.0)
    args = p.parse_args(argv)
    args.warmup, args.iters = (1, 2) if args.tiny else (5, 50)
    device = torch.device(args.device)
    fast_cuda_settings(device)
    meta = environment(device)
    meta["command"] = " ".join(["python", "bench/infer_variants.py", *(argv or sys.argv[1:])])
    run = Runner(Path(args.out), NAME, args.budget_s, meta, markdown)
    if "diffusers" in args.variants:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            args.variants = [v for v in args.variants if v != "diffusers"]
            run.skip("diffusers", "diffusers is not installed")
    for variant in args.variants:
        estimate = 0 if args.tiny else ESTIMATE_S.get(variant, 75)
        run.item((variant,), estimate, lambda variant=variant: measure(variant, args, device))
    run.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
