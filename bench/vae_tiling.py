"""Decoding large images in bounded memory: the SD VAE decoder at 1024² and 2048², whole and tiled, ldmkit vs
diffusers 0.42.1, side by side in one call.

For each size and side: peak device memory (``torch.cuda.max_memory_allocated`` after a reset) and the median
decode time of one image (bf16 weights, batch 1), whole and tiled. Both sides tile with the same geometry:
64-cell latent tiles (512² pixels) overlapping by a quarter (diffusers' ``enable_tiling()`` defaults;
ldmkit's ``LatentDiffusionModel.decode(tile=(64, 64), overlap=16)``, which every pipeline uses after
``tile_decoding(64)`` and ``--decode-tile 64``). ``tiled_vs_whole`` is the mean absolute difference of the
tiled from the whole image (random weights: a measure of the seams, not of quality).

    python bench/vae_tiling.py --out $OUT                        # GPU, ~3 min
    python bench/vae_tiling.py --tiny --device cpu --out /tmp/b  # smoke test of the script
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Runner, environment, first_call, free_memory, md_table, median_seconds, peak_memory_gb  # noqa: E402
from models import build_vae, vae_config  # noqa: E402


def _ldmkit_decoder(vae: torch.nn.Module, device: torch.device, tile_latent: int):
    """decode(z, tiled) through the model object every ldmkit pipeline decodes with."""
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.diffusion.schedules import NoiseSchedule
    from ldmkit.model import LatentDiffusionModel

    anchor = torch.nn.Linear(1, 1).to(device)  # the model's device comes from its network
    model = LatentDiffusionModel(unet=anchor, schedule=NoiseSchedule(),
                                 conditioner=build_conditioner(ConditionerConfig(kind="none")),
                                 autoencoder=vae, latent_size=(64, 64))
    tile = (tile_latent, tile_latent)
    return lambda z, tiled: model.decode(z, tile=tile, overlap=tile_latent // 4) if tiled else model.decode(z)


def _diffusers_decoder(vae: torch.nn.Module, tile_latent: int):
    vae.tile_latent_min_size = tile_latent  # the SD VAE's own config says 512² pixel tiles; set them alike
    vae.tile_sample_min_size = tile_latent * 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_overlap_factor = 0.25

    def decode(z: torch.Tensor, tiled: bool) -> torch.Tensor:
        (vae.enable_tiling if tiled else vae.disable_tiling)()
        return vae.decode(z, return_dict=False)[0].float().clamp(-1, 1)

    return decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results/vae-tiling")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="image sides in pixels")
    parser.add_argument("--tiny", action="store_true", help="a tiny VAE and small images (script smoke test)")
    parser.add_argument("--budget-s", type=float, default=480)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = [64, 128] if args.tiny else args.sizes
    tile_latent = 16 if args.tiny else 64
    impls = ["ldmkit"]
    try:
        import diffusers  # noqa: F401

        impls.append("diffusers")
    except ImportError:
        pass
    cfg = vae_config(args.tiny)
    f = cfg.downsample_factor
    run = Runner(Path(args.out), "vae_tiling", args.budget_s, {"env": environment(device), "sizes": sizes,
                                                                 "tile_latent": tile_latent,
                                                                 "overlap_latent": tile_latent // 4},
                 write_markdown=markdown)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for size in sizes:
        for impl in impls:
            def measure(impl: str = impl, size: int = size) -> dict[str, Any]:
                free_memory(device)
                torch.manual_seed(0)
                vae = build_vae(impl, cfg, device).eval().requires_grad_(False).to(dtype)
                decode = (_ldmkit_decoder(vae, device, tile_latent) if impl == "ldmkit"
                          else _diffusers_decoder(vae, tile_latent))
                z = torch.randn(1, cfg.latent_channels, size // f, size // f, device=device, dtype=dtype)
                out: dict[str, Any] = {}
                images = {}
                with torch.no_grad():
                    for tiled in (False, True):
                        key = "tiled" if tiled else "whole"
                        try:
                            first_call(lambda: decode(z, tiled), device)  # the peak leaves out one-off costs
                            images[key] = decode(z, tiled).float()
                            out[f"{key}_peak_gb"] = peak_memory_gb(device)
                            out[f"{key}_ms"] = 1e3 * median_seconds(lambda: decode(z, tiled), device, warmup=1,
                                                                    iters=3)
                        except torch.OutOfMemoryError:
                            out[f"{key}_error"] = "out of memory"
                            free_memory(device)
                if len(images) == 2:
                    out["tiled_vs_whole"] = float((images["tiled"] - images["whole"]).abs().mean())
                return out

            run.item(("decode", str(size), impl), 60, measure)
    run.save()
    return 0


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for size, by_impl in sorted(results.get("decode", {}).items(), key=lambda kv: int(kv[0])):
        for impl, r in by_impl.items():
            rows.append([f"{size}²", impl, r.get("whole_peak_gb", r.get("whole_error")), r.get("whole_ms"),
                         r.get("tiled_peak_gb", r.get("tiled_error")), r.get("tiled_ms"), r.get("tiled_vs_whole")])
    return md_table(["image", "side", "whole: peak GB", "whole: ms", "tiled: peak GB", "tiled: ms",
                     "tiled vs whole |Δ|"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
