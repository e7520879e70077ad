"""Peak memory and img/s of adapting the SD-1.x-sized UNet (859 M) at 64² latents: full fine-tuning and LoRA,
with and without gradient checkpointing and 8-bit AdamW, ldmkit beside diffusers' UNet2DConditionModel at the
same settings (its training examples: gradient checkpointing, bitsandbytes 8-bit Adam, peft LoRA on the
attention projections), in one call.

Each variant: a fresh network built on the device, bf16 autocast, ε-MSE on random latents and 77 random context
tokens, the median step of ``--iters`` after warm-up, ``torch.cuda.max_memory_allocated`` over those steps.
LoRA: rank ``--rank`` on the attention projections of both sides (ldmkit: ``lora.targets=[attention]``; diffusers:
peft on to_q/to_k/to_v/to_out.0), base weights frozen. At one rank the sides do not train the same number of
parameters: ldmkit adapts its fused q/k/v projection with one A shared by q, k and v (exported to diffusers as three
adapters with that A), diffusers three separate adapters; the table gives both counts. Raw results in
``finetune_memory.json`` / ``.md``. Only run as a CPU smoke test so far.

    python bench/finetune_memory.py --out $OUT                          # GPU (bitsandbytes carried as a wheel)
    python bench/finetune_memory.py --tiny --device cpu --out /tmp/b    # smoke test of the script
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Runner, environment, first_call, free_memory, md_table, median_seconds, peak_memory_gb  # noqa: E402
from models import build_unet, text_unet_config, unet_call  # noqa: E402

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def _ldmkit_lora(net, rank: int) -> None:
    from ldmkit.adapters.peft_layers import add_layers
    from ldmkit.adapters.targets import model_targets

    names = model_targets(net, torch.nn.Module(), ("attention",))["unet"]
    net.requires_grad_(False)
    add_layers(net, {n: (rank, float(rank)) for n in names}, "lora")
    for module in net.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if "lora_" in name:
                parameter.requires_grad_(True)


def _diffusers_lora(net, rank: int) -> None:
    from peft import LoraConfig

    net.requires_grad_(False)
    net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(ATTENTION), init_lora_weights="gaussian"))


def _optimizer(params, eight_bit: bool):
    if eight_bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-5)
    try:
        return torch.optim.AdamW(params, lr=1e-5, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(params, lr=1e-5)


def measure(impl: str, cfg, *, lora: bool, checkpointing: bool, eight_bit: bool, batch: int, size: int, rank: int,
            device: torch.device, iters: int) -> dict[str, Any]:
    free_memory(device)
    if impl == "ldmkit" and checkpointing:
        import dataclasses

        cfg = dataclasses.replace(cfg, gradient_checkpointing=True)
    net = build_unet(impl, cfg, device).train()
    if impl == "diffusers" and checkpointing:
        net.enable_gradient_checkpointing()
    if lora:
        (_ldmkit_lora if impl == "ldmkit" else _diffusers_lora)(net, rank)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = _optimizer(params, eight_bit)
    call = unet_call(impl, net)
    z = torch.randn(batch, cfg.in_channels, size, size, device=device)
    eps, t = torch.randn_like(z), torch.randint(0, 1000, (batch,), device=device)
    context = torch.randn(batch, 77, cfg.context_dim, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.mse_loss(call(z, t, context).float(), eps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    first_call(step, device)  # optimizer states allocated; the peak leaves out cuDNN's one-off algorithm search
    seconds = median_seconds(step, device, warmup=1, iters=iters)
    return {"trainable": sum(p.numel() for p in params), "img_s": batch / seconds, "step_ms": seconds * 1e3,
            "peak_mem_gb": peak_memory_gb(device)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/finetune-memory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="latent side")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny UNets on the CPU (smoke test)")
    parser.add_argument("--budget-s", type=float, default=540)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = text_unet_config(args.tiny)
    size, batch = (8, 2) if args.tiny else (args.size, args.batch)
    impls = ["ldmkit"]
    try:
        import diffusers  # noqa: F401
        import peft  # noqa: F401

        impls.append("diffusers")
    except ImportError:
        pass
    eight_bit_ok = device.type == "cuda"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        eight_bit_ok = False
    run = Runner(Path(args.out), "finetune_memory", args.budget_s,
                 {"env": environment(device), "batch": batch, "latent": size, "rank": args.rank},
                 write_markdown=markdown)
    variants = [("full", False, False, False), ("full+ckpt", False, True, False), ("full+ckpt+8bit", False, True, True),
                ("lora", True, False, False), ("lora+ckpt", True, True, False)]
    for name, lora, checkpointing, eight_bit in variants:
        if eight_bit and not eight_bit_ok:
            run.skip(f"train/{name}", "8-bit AdamW needs CUDA and bitsandbytes")
            continue
        for impl in impls:
            run.item(("train", name, impl), 60, lambda impl=impl, lora=lora, checkpointing=checkpointing,
                     eight_bit=eight_bit: measure(impl, cfg, lora=lora, checkpointing=checkpointing,
                                                  eight_bit=eight_bit, batch=batch, size=size, rank=args.rank,
                                                  device=device, iters=args.iters))
    run.save()
    return 0


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, by_impl in results.get("train", {}).items():
        for impl, r in by_impl.items():
            rows.append([name, impl, r.get("trainable"), r.get("peak_mem_gb"), r.get("img_s"), r.get("error")])
    return md_table(["variant", "side", "trainable parameters", "peak GB", "img/s", "error"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
