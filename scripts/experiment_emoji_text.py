"""The text-conditional LDM on Fluent Emoji 3D 64² with frozen MiniLM context, from images to scored samples.

Three steps, because the GPU machine has no network and takes at most 64 MiB of inputs per call:

``prepare --to DIR`` (here): the emoji images as the data loader gives them at 64² (RGB on white, lossless
WebP — the same pixels, 11 MB instead of 26), the LPIPS weights, and the MiniLM states of every caption
and of the sampled prompts (``ldm encode --text``), so MiniLM's weights need not travel.

``run --carry DIR --out OUT`` (GPU): ``ldm train autoencoder`` (fluent-emoji-64-kl-f4), ``ldm train
diffusion`` (fluent-emoji-64-text with ``pretrained.states_file``), grids for held-out captions and for new
compositions, and ``--n`` samples for held-out captions written as WebP shards.

``score --samples OUT --out JSON`` (here, with EfficientNet-Lite0): FD-EffLite0 of the samples against the
held-out real images, next to the real-vs-real floor (training images vs held-out images).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import torch

#: Prompts that are not emoji names: new combinations of words the captions do contain.
NEW_COMPOSITIONS = ("blue apple", "cat with sunglasses", "purple pizza", "green ghost", "red snowman",
                    "smiling sun with sunglasses", "yellow rocket", "blue heart with stars")
GRID_SEEDS = 4


def _datasets():
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset

    cfg = load_config(DataConfig, "fluent-emoji-64", [], group="data")
    return cfg, build_dataset(cfg, split="train"), build_dataset(cfg, split="val")


def held_out_prompts(val, count: int = 8) -> list[str]:
    """``count`` captions of held-out emoji, evenly spaced over the split (deterministic)."""
    captions = sorted({val.caption(i) for i in range(len(val))})
    step = len(captions) / count
    return [captions[int(i * step)] for i in range(count)]


def _pack_lpips(to: Path) -> None:
    from device_assets import pack  # scripts/ is on sys.path when a script runs

    pack(["lpips"], to, ["alexnet.safetensors", "LICENSE"])


def _encode_prompts(to: Path, train, val) -> None:
    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.conditioning.prompt_states import write_prompt_states

    prompts = [train.caption(i) for i in range(len(train))] + [val.caption(i) for i in range(len(val))]
    prompts += list(NEW_COMPOSITIONS)
    encoder = build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))
    write_prompt_states(to / "prompts.safetensors", prompts, encoder, progress=True)


def _check_same_pixels(to: Path, train) -> None:
    """The carried 64² images must load to exactly the tensors the original 256² renders give."""
    import dataclasses

    from ldmkit.data import build_dataset

    copy = build_dataset(dataclasses.replace(train.cfg, path=str(to / "fluent-emoji-3d")), split="train")
    assert len(copy) == len(train)
    for i in range(0, len(train), 97):
        assert torch.equal(copy[i]["image"], train[i]["image"]), f"image {i} differs after packing"


def run(carry: Path, out: Path, ae_minutes: float, ldm_minutes: float, n: int, steps: int, guidance: float,
        fd_guidance: float, workers: int) -> None:
    from ldmkit.cli.main import main as ldm
    from ldmkit.io.images import make_grid, save_grid, to_unit
    from ldmkit.pipelines import load_pipeline

    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/emoji-text")
    quiet = ["train.progress=false", "train.log_every=200", "train.image_every=0", f"train.num_workers={workers}"]
    timings = {}
    started = time.perf_counter()
    if ldm(["train", "autoencoder", "--config", "fluent-emoji-64-kl-f4", f"train.out={work}/ae",
            f"train.max_minutes={ae_minutes}", "train.steps=100000", *quiet]):
        raise SystemExit("autoencoder training failed")
    timings["autoencoder_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    states = carry / "prompts.safetensors"
    if ldm(["train", "diffusion", "--config", "fluent-emoji-64-text", f"autoencoder={work}/ae/model",
            f"train.out={work}/ldm", f"train.max_minutes={ldm_minutes}", "train.steps=1000000",
            f"conditioner.pretrained.states_file={states}", *quiet]):
        raise SystemExit("diffusion training failed")
    timings["diffusion_seconds"] = round(time.perf_counter() - started, 1)
    steps_done = {name: max(int(p.name.split("-")[1]) for p in (work / name / "checkpoints").glob("step-*"))
                  for name in ("ae", "ldm")}

    _, train, val = _datasets()
    pipe = load_pipeline(work / "ldm" / "model")
    sample = dict(steps=steps, guidance=guidance, sampler="dpm++2m", output="tensor", progress=False)
    held_out = held_out_prompts(val)
    for name, prompts in (("heldout", held_out), ("new", list(NEW_COMPOSITIONS))):
        rows = [pipe(prompt=prompts, seed=1000 * s, **sample) for s in range(GRID_SEEDS)]
        grid = torch.stack(rows, dim=1).flatten(0, 1)  # one row per prompt
        save_grid(make_grid(to_unit(grid), nrow=GRID_SEEDS), out / f"{name}.png")

    # n samples for the held-out captions (cycled), written as lossless WebP in two tar shards.
    val_captions = [val.caption(i) for i in range(len(val))]
    prompts = [val_captions[i % len(val_captions)] for i in range(n)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    scored = dict(sample, guidance=fd_guidance)
    images = torch.cat([pipe(prompt=prompts[lo:lo + 500], seed=lo, batch_size=500, **scored)
                        for lo in range(0, n, 500)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings["sampling_seconds"] = round(time.perf_counter() - started, 1)
    _write_shards(images, out, shards=2)
    results = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
        "timings": timings, "steps": steps_done, "samples": n, "sampler": "dpm++2m", "sampling_steps": steps,
        "guidance_grids": guidance, "guidance_scored": fd_guidance, "held_out_prompts": held_out,
        "new_prompts": list(NEW_COMPOSITIONS),
        "autoencoder_config": (work / "ae" / "config.yaml").read_text(),
        "diffusion_config": (work / "ldm" / "config.yaml").read_text(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("device", "timings", "steps")}, indent=1))


def _write_shards(images: torch.Tensor, out: Path, shards: int) -> None:
    from PIL import Image

    pixels = (to_unit_uint8(images)).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    per = -(-len(pixels) // shards)
    for s in range(shards):
        with tarfile.open(out / f"samples-{s}.tar", "w") as tar:
            for i in range(s * per, min((s + 1) * per, len(pixels))):
                buffer = io.BytesIO()
                Image.fromarray(pixels[i]).save(buffer, format="webp", lossless=True)
                info = tarfile.TarInfo(f"{i:05d}.webp")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)


def to_unit_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def read_shards(folder: Path) -> torch.Tensor:
    """[N, 3, H, W] in [-1, 1] from the samples-*.tar shards."""
    import numpy as np
    from PIL import Image

    images = []
    for shard in sorted(folder.glob("samples-*.tar")):
        with tarfile.open(shard) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                array = np.asarray(Image.open(tar.extractfile(member)).convert("RGB"))
                images.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    return torch.stack(images).float() / 127.5 - 1


def score(samples: Path, out: Path) -> None:
    from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images

    _, train, val = _datasets()

    def batches(dataset):
        for lo in range(0, len(dataset), 256):
            yield torch.stack([dataset[i]["image"] for i in range(lo, min(lo + 256, len(dataset)))])

    generated = read_shards(samples)
    reference = compute_reference_stats(batches(val), "efflite0", source="fluent-emoji-64 val", progress=True)
    floor = evaluate_images(batches(train), reference, progress=True)
    ours = evaluate_images((generated[lo:lo + 256] for lo in range(0, len(generated), 256)), reference, progress=True)
    result = {"reference": f"fluent-emoji-64 val split ({len(val)} held-out emoji)",
              "generated": {"num_images": ours["num_images"], "metrics": ours["metrics"]},
              "real_floor": {"description": f"all {len(train)} training images vs the held-out images",
                             "num_images": floor["num_images"], "metrics": floor["metrics"]}}
    out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--to", type=Path, required=True)
    p = sub.add_parser("run")
    p.add_argument("--carry", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ae-minutes", type=float, default=1.5)
    p.add_argument("--ldm-minutes", type=float, default=3.0)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0, help="guidance of the grids")
    p.add_argument("--fd-guidance", type=float, default=2.0, help="guidance of the scored samples")
    p.add_argument("--workers", type=int, default=8)
    p = sub.add_parser("score")
    p.add_argument("--samples", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        _, train, val = _datasets()
        prepare_images(args.to, train, val)
        _check_same_pixels(args.to, train)
        _pack_lpips(args.to)
        _encode_prompts(args.to, train, val)
    elif args.command == "run":
        run(args.carry, args.out, args.ae_minutes, args.ldm_minutes, args.n, args.steps, args.guidance,
            args.fd_guidance, args.workers)
    else:
        score(args.samples, args.out)


def prepare_images(to: Path, train, val) -> None:
    """The emoji at 64² as the loader gives them (RGB on white), lossless WebP, with the original emoji.json."""
    from PIL import Image

    from ldmkit.assets import require

    target = to / "fluent-emoji-3d"
    shutil.rmtree(target, ignore_errors=True)
    (target / "images").mkdir(parents=True)
    keep = ("unified", "non_qualified", "name", "short_name", "short_names", "category", "subcategory")
    entries = json.loads((Path(require("fluent-emoji-3d")) / "emoji.json").read_text())
    slim = [{k: e[k] for k in keep if k in e} | ({"skin_variations": {
        tone: {k: v[k] for k in ("unified", "non_qualified") if k in v} for tone, v in e["skin_variations"].items()}}
        if e.get("skin_variations") else {}) for e in entries]
    (target / "emoji.json").write_text(json.dumps(slim, separators=(",", ":")))  # only what the loader reads
    for dataset in (train, val):
        for i, entry in enumerate(dataset.entries):
            pixels = to_unit_uint8(dataset[i]["image"]).permute(1, 2, 0).numpy()  # [64, 64, 3]
            Image.fromarray(pixels).save(target / "images" / (Path(entry.path).stem + ".webp"), lossless=True)


if __name__ == "__main__":
    main()
