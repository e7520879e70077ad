"""The paper's tasks on one GPU in one call: super-resolution, inpainting (emoji and photos), semantic synthesis.

``prepare --to DIR`` (here): LPIPS weights, the Fluent Emoji 3D renders and natural photos: six from
scikit-image (short side 256 px) and twelve KDE wallpaper photographs (short sides 320 and 640 px) to train on,
scikit-image's chelsea and coffee held out; all under 64 MiB. ``--assets lpips`` packs what the photo
inpainting run alone needs.

``run --carry DIR --out OUT`` (GPU), every step through ldmkit's own commands and pipelines:

1. four autoencoders trained side by side (``ldm train autoencoder``): Fluent Emoji 3D 128² and 64² KL-f4,
   photo crops 64² KL-f4, synthetic scenes 64² KL-f4;
2. four LDMs trained side by side (``ldm train diffusion``): ×4 super-resolution 32²→128² (fluent-emoji-sr4),
   inpainting on emoji (fluent-emoji-64-inpaint) and on photo crops (same preset, photo data), semantic
   synthesis (synthetic-semantic);
3. evaluation on held-out data: SR PSNR/SSIM/LPIPS vs bicubic; inpainting PSNR in the hole and LPIPS vs a
   fill-with-mean baseline; semantic synthesis per-class accuracy of a colour segmentation of the outputs
   (next to real images and to samples for mismatched maps); a 1024² semantic sample; a 2048² tiled upscale.

Writes results.json and PNG grids to OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from photo_set import WALLPAPER_PHOTOS, WALLPAPERS  # the KDE photographs: for training only, each at two scales

TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")
HELD_OUT_PHOTOS = ("chelsea", "coffee")
WORK = Path(os.environ.get("TASKS_WORK", "/tmp/tasks"))
LDM = "import sys; from ldmkit.cli.main import main; sys.exit(main(sys.argv[1:]))"


# ------------------------------------------------------------------------------------------- prepare
def prepare(to: Path, assets: list[str]) -> None:
    import skimage.data
    from device_assets import pack  # scripts/ is on sys.path when a script runs
    from PIL import Image

    pack(assets, to, ["alexnet.safetensors", "LICENSE"])
    photos = to.parent / (to.name + "-photos")
    for split, names in (("train", TRAIN_PHOTOS), ("heldout", HELD_OUT_PHOTOS)):
        (photos / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            array = getattr(skimage.data, name)()
            array = array[0] if isinstance(array, tuple) else array  # stereo pairs: the left view
            image = Image.fromarray(array).convert("RGB")
            scale = 256 / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            image.save(photos / split / f"{name}.png")
    if not WALLPAPERS.is_dir():
        print(f"{WALLPAPERS} is missing: the photo model trains on {len(TRAIN_PHOTOS)} photos only "
              "(apt-get install plasma-workspace-wallpapers adds 12)")
    for name in WALLPAPER_PHOTOS if WALLPAPERS.is_dir() else ():
        largest = max((WALLPAPERS / name / "contents" / "images").iterdir(), key=lambda p: p.stat().st_size)
        image = Image.open(largest).convert("RGB")
        for side in (320, 640):
            scale = side / min(image.size)
            scaled = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            scaled.save(photos / "train" / f"wallpaper-{name}-{side}.jpg", quality=92)
    print(f"photos in {photos}")


# ------------------------------------------------------------------------------------------- helpers
#: The runs each task needs (autoencoder, then LDM); ``--tasks`` picks some of them.
TASKS = {"sr": ("ae-emoji128", "sr4"), "inpaint-emoji": ("ae-emoji64", "inpaint-emoji"),
         "inpaint-photo": ("ae-photo", "inpaint-photo"), "semantic": ("ae-synthetic", "semantic")}
SELECTED: set[str] = set()


def _ldm(args: list[str], log: Path) -> subprocess.Popen | None:
    if log.stem not in SELECTED:
        return None
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-c", LDM, *args], stdout=handle, stderr=subprocess.STDOUT)


def _wait(processes: dict[str, subprocess.Popen], logs: Path) -> None:
    failed = []
    for name, process in list(processes.items()):
        if process is None:
            del processes[name]
        elif process.wait():
            failed.append(name)
    for name in failed:
        print(f"--- {name} failed; last lines of its log:\n" + "\n".join(
            (logs / f"{name}.log").read_text().splitlines()[-25:]))
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def _steps_of(run: Path) -> int:
    return max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


def _photo_crops(photos: Path, split: str, count: int, seed: int) -> Path:
    """``count`` random 64² crops of the photos of ``split`` as PNGs (the training/evaluation set)."""
    from PIL import Image

    folder = WORK / "photo-crops" / split
    folder.mkdir(parents=True, exist_ok=True)
    images = [Image.open(p).convert("RGB") for p in sorted((photos / split).glob("*.[pj][np]g"))]
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        image = images[int(torch.randint(len(images), (), generator=g))]
        left = int(torch.randint(image.width - 64 + 1, (), generator=g))
        top = int(torch.randint(image.height - 64 + 1, (), generator=g))
        image.crop((left, top, left + 64, top + 64)).save(folder / f"{i:05d}.png")
    return folder


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------------- training
def train_all(photos: Path, ae_minutes: float, ldm_minutes: float, workers: int, tasks: tuple[str, ...]) -> dict:
    from ldmkit.config import load_config
    from ldmkit.training.diffusion_task import DiffusionExperiment

    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    train_crops = _photo_crops(photos, "train", 20000, seed=0)
    quiet = ["train.progress=false", "train.log_every=200", "train.image_every=0", f"train.num_workers={workers}"]
    photo_data = ["data.source=folder", f"data.path={train_crops}", "data.label_source=none", "data.resize=false",
                  "data.val_fraction=0.0", "data.flip=true", "data.resolution=64"]
    semantic = load_config(DiffusionExperiment, "synthetic-semantic", ["autoencoder=unused"], group="diffusion")
    from ldmkit.config import to_dict

    synthetic_ae = _write_yaml(WORK / "synthetic-ae.yaml", {
        "data": to_dict(semantic.data),
        "model": {"kind": "kl", "base_channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": 2,
                  "latent_channels": 3},
        "loss": {"perceptual_weight": 1.0, "disc_start": 100000},
        "train": {"out": str(WORK / "ae-synthetic"), "steps": 100000, "batch_size": 32, "lr": 2.0e-4},
    })
    budget = [f"train.max_minutes={ae_minutes}", "train.steps=100000"]
    started = time.perf_counter()
    autoencoders = {
        "ae-emoji128": _ldm(["train", "autoencoder", "--config", "fluent-emoji-128-kl-f4",
                             f"train.out={WORK}/ae-emoji128", *budget, *quiet], logs / "ae-emoji128.log"),
        "ae-emoji64": _ldm(["train", "autoencoder", "--config", "fluent-emoji-64-kl-f4",
                            f"train.out={WORK}/ae-emoji64", *budget, *quiet], logs / "ae-emoji64.log"),
        "ae-photo": _ldm(["train", "autoencoder", "--config", "fluent-emoji-64-kl-f4", f"train.out={WORK}/ae-photo",
                          *photo_data, *budget, *quiet], logs / "ae-photo.log"),
        "ae-synthetic": _ldm(["train", "autoencoder", "--config", str(synthetic_ae), *budget, *quiet],
                             logs / "ae-synthetic.log"),
    }
    _wait(autoencoders, logs)
    ae_seconds = time.perf_counter() - started
    budget = [f"train.max_minutes={ldm_minutes}", "train.steps=1000000"]
    started = time.perf_counter()
    ldms = {
        "sr4": _ldm(["train", "diffusion", "--config", "fluent-emoji-sr4", f"autoencoder={WORK}/ae-emoji128/model",
                     f"train.out={WORK}/sr4", *budget, *quiet], logs / "sr4.log"),
        "inpaint-emoji": _ldm(["train", "diffusion", "--config", "fluent-emoji-64-inpaint",
                               f"autoencoder={WORK}/ae-emoji64/model", f"train.out={WORK}/inpaint-emoji",
                               *budget, *quiet], logs / "inpaint-emoji.log"),
        "inpaint-photo": _ldm(["train", "diffusion", "--config", "fluent-emoji-64-inpaint",
                               f"autoencoder={WORK}/ae-photo/model", f"train.out={WORK}/inpaint-photo",
                               *photo_data, *budget, *quiet], logs / "inpaint-photo.log"),
        "semantic": _ldm(["train", "diffusion", "--config", "synthetic-semantic",
                          f"autoencoder={WORK}/ae-synthetic/model", f"train.out={WORK}/semantic", "train.batch_size=64",
                          *budget, *quiet], logs / "semantic.log"),
    }
    _wait(ldms, logs)
    ldm_seconds = time.perf_counter() - started
    runs = [*autoencoders, *ldms]
    return {"autoencoders_seconds": round(ae_seconds, 1), "ldms_seconds": round(ldm_seconds, 1),
            "steps": {name: _steps_of(WORK / name) for name in runs},
            "note": "the autoencoders, then the LDMs, each group trained as concurrent processes on one GPU"}


# ------------------------------------------------------------------------------------------- evaluation
def _images(dataset, limit: int | None = None) -> torch.Tensor:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([dataset[i]["image"] for i in range(n)])


def _sample(pipe, cond, seed: int, steps: int) -> torch.Tensor:
    """Latents for a batch of concat conditions (no main condition, so no guidance), decoded to [-1, 1]."""
    from ldmkit.pipelines.text2img import seeded_noise
    from ldmkit.samplers import SamplerOptions

    count = cond.batch_size
    grid = tuple(cond.concat.shape[-2:])
    noise = seeded_noise([seed + i for i in range(count)], (pipe.autoencoder.latent_channels, *grid))
    options = SamplerOptions(steps=steps, guidance=1.0, seed=seed)
    latents = pipe.sample_latents(cond.to(pipe.device), None, noise, options)
    return pipe.decode(latents).cpu()


def _batched(fn, *tensors: torch.Tensor, size: int = 128) -> torch.Tensor:
    return torch.cat([fn(*(t[lo:lo + size] for t in tensors), lo) for lo in range(0, len(tensors[0]), size)])


def _lpips_of(lpips, x: torch.Tensor, y: torch.Tensor) -> float:
    device = next(lpips.parameters()).device
    values = [lpips(x[lo:lo + 256].to(device), y[lo:lo + 256].to(device)).flatten().cpu()
              for lo in range(0, len(x), 256)]
    return round(float(torch.cat(values).mean()), 4)


def evaluate_sr(lpips, steps: int, out: Path, limit: int | None) -> dict:
    import dataclasses

    from ldmkit.conditioning.concat import low_res_concat
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.data.degradations import degrade_bicubic, resize_image
    from ldmkit.evaluation.reconstruction import psnr, ssim
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline

    cfg = load_config(DataConfig, "fluent-emoji-128", [], group="data")
    high = _images(build_dataset(dataclasses.replace(cfg, flip=False), split="val"), limit)  # [N, 3, 128, 128]
    low = degrade_bicubic(high, 4)  # [N, 3, 32, 32]
    bicubic = resize_image(low, (128, 128))
    pipe = load_pipeline(WORK / "sr4" / "model")
    sr = _batched(lambda lr, lo: _sample(pipe, low_res_concat(lr, (32, 32)), 10_000 + lo, steps), low)
    with torch.no_grad():
        recon = torch.cat([pipe.autoencoder.decode(pipe.autoencoder.encode(high[lo:lo + 128].to(pipe.device)))
                           .float().clamp(-1, 1).cpu() for lo in range(0, len(high), 128)])

    def scores(x):
        return {"psnr": round(float(psnr(x, high, quantize=True).mean()), 2),
                "ssim": round(float(ssim(x, high, quantize=True).mean()), 4), "lpips": _lpips_of(lpips, x, high)}

    rows = torch.stack([_nearest(low[:8]), bicubic[:8],
                        sr[:8], high[:8]], dim=1).flatten(0, 1)
    save_grid(make_grid(to_unit(rows), nrow=4), out / "sr.png")
    return {"images": len(high), "ldm_x4": scores(sr), "bicubic_x4": scores(bicubic),
            "autoencoder_reconstruction_ceiling": scores(recon), "sampler": "dpm++2m", "steps": steps,
            "grid": "sr.png: low-res 32² (nearest) | bicubic | LDM ×4 | original 128²"}


def _nearest(low: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(low, scale_factor=4, mode="nearest")


def evaluate_inpainting(name: str, pipe_dir: Path, images: torch.Tensor, lpips, steps: int, out: Path) -> dict:
    from ldmkit.conditioning.concat import masked_image_concat
    from ldmkit.data.masks import random_masks
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline

    pipe = load_pipeline(pipe_dir)
    mask_cfg = pipe.conditioner.config.concat.masks
    masks = random_masks(len(images), *images.shape[-2:], mask_cfg, generator=torch.Generator().manual_seed(1))
    decoded = _batched(lambda x, m, lo: _sample(pipe, masked_image_concat(x.to(pipe.device), m.to(pipe.device),
                                                                          pipe.autoencoder.encode), 20_000 + lo, steps),
                       images, masks)
    filled = masks * decoded + (1 - masks) * images  # the pipeline's pixel-space compositing
    known = (1 - masks)
    mean = (images * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp(min=1)
    baseline = masks * mean + known * images  # fill the hole with the mean colour of the known pixels

    def hole_psnr(x):
        mse = (((x - images) / 2) ** 2 * masks).sum((1, 2, 3)) / (masks.sum((1, 2, 3)) * 3).clamp(min=1)
        return round(float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean()), 2)

    rows = torch.stack([images[:8] * known[:8] + masks[:8], filled[:8], baseline[:8], images[:8]], dim=1)
    save_grid(make_grid(to_unit(rows.flatten(0, 1)), nrow=4), out / f"inpaint-{name}.png")
    return {"images": len(images), "mask_coverage_mean": round(float(masks.mean()), 3),
            "ldm": {"psnr_hole": hole_psnr(filled), "lpips": _lpips_of(lpips, filled, images)},
            "fill_with_mean": {"psnr_hole": hole_psnr(baseline), "lpips": _lpips_of(lpips, baseline, images)},
            "unmasked_max_abs_difference": float(((filled - images).abs() * known).max()),
            "sampler": "dpm++2m", "steps": steps,
            "grid": f"inpaint-{name}.png: input with hole (white) | LDM | fill with mean | original"}


def _foreground(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """[N, H, W] bool: pixels whose colour differs from the background colour (median of the border)."""
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    background = border.median(dim=2).values[:, :, None, None]  # [N, 3, 1, 1]
    return (images - background).abs().amax(dim=1) > threshold


def _per_class_accuracy(images: torch.Tensor, maps: torch.Tensor, names: list[str]) -> dict:
    """Fraction of each class's map pixels on the right side of a colour segmentation (background vs object)."""
    foreground = _foreground(images)
    result = {}
    for k, name in enumerate(names):
        where = maps == k
        if where.any():
            right = ~foreground[where] if k == 0 else foreground[where]
            result[name] = round(float(right.float().mean()), 3)
    return result


def evaluate_semantic(steps: int, out: Path, count: int, mosaic: int) -> dict:
    from ldmkit.conditioning.concat import semantic_concat
    from ldmkit.config import load_config
    from ldmkit.data.synthetic import segmentation_classes
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import SemanticSynthesisPipeline, load_pipeline
    from ldmkit.pipelines.semantic import map_palette
    from ldmkit.training.diffusion_task import DiffusionExperiment
    from ldmkit.data import build_dataset

    experiment = load_config(DiffusionExperiment, "synthetic-semantic", ["autoencoder=unused"], group="diffusion")
    val = build_dataset(experiment.data, split="val")
    samples = [val[i] for i in range(count)]
    real = torch.stack([s["image"] for s in samples])
    maps = torch.stack([s["segmentation"] for s in samples])  # [N, 64, 64]
    pipe = load_pipeline(WORK / "semantic" / "model")
    classes = pipe.conditioner.config.concat.semantic_classes
    names = list(segmentation_classes(experiment.data.synthetic))
    mode = pipe.conditioner.config.concat.semantic_resize
    generated = _batched(lambda m, lo: _sample(pipe, semantic_concat(m.to(pipe.device), classes, (16, 16), mode),
                                               30_000 + lo, steps), maps)
    shuffled = maps.roll(1, dims=0)  # each sample scored against another scene's map
    result = {"images": count, "classes": names,
              "ldm": _per_class_accuracy(generated, maps, names),
              "real_images": _per_class_accuracy(real, maps, names),
              "ldm_vs_mismatched_maps": _per_class_accuracy(generated, shuffled, names)}
    palette = torch.tensor(map_palette(), dtype=torch.float32).view(-1, 3)[:classes] / 127.5 - 1
    coloured = palette[maps[:8]].permute(0, 3, 1, 2)
    rows = torch.stack([coloured, generated[:8], real[:8]], dim=1).flatten(0, 1)
    save_grid(make_grid(to_unit(rows), nrow=3), out / "semantic.png")

    # One 1024² sample: a 16×16 mosaic of held-out scene maps, sampled convolutionally (paper §4.3.2).
    big = torch.cat([torch.cat(list(maps[r * mosaic:(r + 1) * mosaic]), dim=1) for r in range(mosaic)], dim=0)
    semantic = SemanticSynthesisPipeline.from_pipeline(pipe)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    image = semantic(big, steps=steps, seed=7, output="tensor", progress=False)
    seconds = time.perf_counter() - started
    save_grid(to_unit(image[0]), out / "semantic-1024.png")
    result["sample_1024"] = {"size": list(image.shape[-2:]), "seconds": round(seconds, 1),
                             "peak_memory_gib": _peak_gib(),
                             "accuracy_per_64px_tile": _per_class_accuracy(_tiles(image[0]), _tiles(big), names)}
    return result


def _tiles(x: torch.Tensor, size: int = 64) -> torch.Tensor:
    """[C, H, W] or [H, W] → [N, C, size, size] or [N, size, size]: the mosaic's scenes again."""
    lead = x.shape[:-2]
    x = x.unflatten(-2, (-1, size)).unflatten(-1, (-1, size))  # [..., H/s, s, W/s, s]
    x = x.movedim(-3, -2).flatten(-4, -3)  # [..., N, s, s]
    return x.movedim(-3, 0) if lead else x


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def upscale_2048(steps: int, out: Path, mosaic: int) -> dict:
    """A 512² low-res mosaic of held-out emoji upscaled ×4 to 2048² with tiled sampling and decoding."""
    import dataclasses

    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.data.degradations import degrade_bicubic
    from ldmkit.io.images import save_grid, to_unit
    from ldmkit.pipelines import UpscalePipeline

    cfg = load_config(DataConfig, "fluent-emoji-128", [], group="data")
    val = build_dataset(dataclasses.replace(cfg, flip=False), split="val")
    side = mosaic
    low = degrade_bicubic(_images(val, side * side), 4)  # [side², 3, 32, 32]
    mosaic = torch.cat([torch.cat(list(low[r * side:(r + 1) * side]), dim=2) for r in range(side)], dim=1)  # [3, 512, 512]
    pipe = UpscalePipeline.load(WORK / "sr4" / "model")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    image = pipe(mosaic[None], steps=steps, seed=3, tile="auto", tile_batch=16, output="tensor", progress=False)
    seconds = time.perf_counter() - started
    save_grid(to_unit(image[0, :, :1024, :1024]), out / "upscale-2048-crop.png")
    return {"input": list(mosaic.shape[-2:]), "output": list(image.shape[-2:]), "seconds": round(seconds, 1),
            "peak_memory_gib": _peak_gib(), "tile": "auto (the trained 32×32 latent)",
            "file": "upscale-2048-crop.png: the top-left 1024² quarter of the 2048² output"}


def run(carry: Path, out: Path, ae_minutes: float, ldm_minutes: float, steps: int, workers: int,
        semantic_count: int, limit: int | None, mosaic: int, skip_training: bool, tasks: tuple[str, ...]) -> None:
    SELECTED.update(run for task in tasks for run in TASKS[task])
    from ldmkit.autoencoders.lpips import LPIPS

    out.mkdir(parents=True, exist_ok=True)
    photos = carry.parent / (carry.name + "-photos")
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__}
    if not skip_training:
        results["training"] = train_all(photos, ae_minutes, ldm_minutes, workers, tasks)
    print(json.dumps(results.get("training"), indent=1), flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lpips = LPIPS.from_assets("vgg16").to(device).eval()
    started = time.perf_counter()
    if "sr" in tasks:
        results["super_resolution"] = evaluate_sr(lpips, steps, out, limit)
        results["upscale_2048"] = upscale_2048(steps, out, mosaic)
    import dataclasses

    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset

    emoji = load_config(DataConfig, "fluent-emoji-64", [], group="data")
    if "inpaint-emoji" in tasks:
        results["inpainting_emoji"] = evaluate_inpainting("emoji", WORK / "inpaint-emoji" / "model",
                                                          _images(build_dataset(emoji, split="val"), limit), lpips,
                                                          steps, out)
    if "inpaint-photo" in tasks:
        held_out = _photo_crops(photos, "heldout", 300, seed=1)
        crops = dataclasses.replace(emoji, source="folder", path=str(held_out), label_source="none", resize=False,
                                    val_fraction=0.0)
        results["inpainting_photo"] = evaluate_inpainting("photo", WORK / "inpaint-photo" / "model",
                                                          _images(build_dataset(crops, split="train"), limit), lpips,
                                                          steps, out)
    if "semantic" in tasks:
        results["semantic_synthesis"] = evaluate_semantic(steps, out, semantic_count, mosaic)
    results["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--to", type=Path, required=True)
    p.add_argument("--assets", nargs="+", default=["lpips", "fluent-emoji-3d"],
                   help="assets to pack (the photo inpainting run alone needs only lpips)")
    p = sub.add_parser("run")
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ae-minutes", type=float, default=1.7)
    p.add_argument("--ldm-minutes", type=float, default=3.5)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--semantic-count", type=int, default=512)
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many images per task (smoke runs)")
    p.add_argument("--mosaic", type=int, default=16, help="tiles per side of the 1024² map and the 512² low-res input")
    p.add_argument("--skip-training", action="store_true", help="evaluate the runs already in $TASKS_WORK")
    p.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=tuple(TASKS), help="which tasks to run")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.to, args.assets)
    else:
        run(args.carry, args.out, args.ae_minutes, args.ldm_minutes, args.steps, args.workers, args.semantic_count,
            args.limit, args.mosaic, args.skip_training, tuple(args.tasks))


if __name__ == "__main__":
    main()
