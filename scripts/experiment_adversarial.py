"""The first stage's adversarial stage for real: what the PatchGAN adds to L1 + LPIPS (paper §3.1, App. G).

One shared start, then two branches of equal steps from the same weights, so the loss is the only difference:

1. ``warm``: ``--preset`` trained with its reconstruction loss only (L1 + LPIPS, + KL or the VQ terms) for
   ``--warm-minutes``: its discriminator never starts (``loss.disc_start`` beyond the run).
2. from the warm weights (``train.init_from``; a fresh optimizer), ``--branch-steps`` more steps each of
   - ``l1-lpips``: the same loss;
   - ``patchgan``: the same loss plus the PatchGAN from the branch's first step (``loss.disc_start=0``, the
     preset's adaptive weight λ = ‖∇L_rec‖ / ‖∇L_adv‖ at the last decoder layer times ``loss.disc_weight``).

Each model is scored on the held-out split (the preset's data, ``--split``): PSNR and SSIM (8-bit levels), LPIPS
(the network of the perceptual loss), rFD-EffLite0 against the originals, the bicubic baseline beside them,
and **sharpness**: the variance of the Laplacian of the reconstructions over that of the originals (1 = as
sharp; blur is below 1). The discriminator's behaviour over the branch comes from its TensorBoard scalars:
``d_loss`` (hinge: 2 when it cannot tell, 0 when it tells every pixel apart), its mean logits on real and on
reconstructed images, and the generator's adversarial term ``g_adv``. Writes ``results.json``,
``reconstructions.png`` (rows: images; columns: original | warm | l1-lpips | patchgan | bicubic; enlarged
crops) and ``discriminator.png`` to ``--out``.

The photo set: train on random crops of ``photo_set.py --held-out``'s ``train/`` and score on every tile of
its ``held-out/`` photographs (no held-out photo is trained on at another scale)::

    python scripts/photo_set.py .carry/adv/photos --held-out chelsea coffee Kite Path       # here
    python3 scripts/experiment_adversarial.py --out $OUT/photos --work /tmp/adv-photos \\
        --preset fluent-emoji-128-kl-f4 --held-out .carry/adv/photos/held-out --warm-minutes 2 --branch-steps 1200 \\
        data.source=folder data.path=.carry/adv/photos/train data.label_source=none data.resize=false \\
        data.crop=random data.flip=true

Carrying (one device call): ``scripts/device_assets.py pack fluent-emoji-3d efficientnet-lite0 lpips --skip
vgg16.safetensors LICENSE`` (about 32 MiB): the perceptual loss and LPIPS run on AlexNet
(``loss.perceptual_net=alex``; VGG16's weights do not fit beside the data).

    python3 scripts/experiment_adversarial.py --out $OUT --work /tmp/adv --preset fluent-emoji-128-kl-f4 \\
        --warm-minutes 2 --branch-steps 1200
    python scripts/experiment_adversarial.py --tiny --out /tmp/adv      # CPU smoke test (about a minute)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from ldmkit.cli.main import main as ldm

QUIET = ["train.progress=false", "train.image_every=0", "train.log_every=25", "train.checkpoint_every=1000000"]
NEVER = 10**9  # a disc_start no run reaches
BRANCHES = {"l1-lpips": [f"loss.disc_start={NEVER}"], "patchgan": ["loss.disc_start=0"]}
TINY = ["model.base_channels=8", "model.channel_mult=[1,2]", "model.num_res_blocks=1", "train.batch_size=4",
        "train.device=cpu"]
DISCRIMINATOR_TAGS = ("d_loss", "logits_real", "logits_fake", "g_adv")


def last_step(run: Path) -> int:
    return max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


def train(name: str, args: argparse.Namespace, overrides: list[str]) -> dict:
    run = args.work / name
    began = time.perf_counter()
    code = ldm(["train", "autoencoder", "--config", args.preset, f"train.out={run}", *QUIET,
                f"train.num_workers={0 if args.tiny else args.workers}", f"loss.perceptual_net={args.perceptual}",
                *(TINY if args.tiny else []), *args.overrides, *overrides])
    if code:
        raise SystemExit(f"training {name} failed with status {code}")
    seconds = time.perf_counter() - began
    return {"seconds": round(seconds, 1), "steps": last_step(run), "overrides": overrides,
            "config": yaml.safe_load((run / "config.yaml").read_text())}


# --------------------------------------------------------------------------------------------- scores


def held_out_tiles(folder: Path, side: int) -> torch.Tensor:
    """[N, 3, side, side] in [-1, 1]: every whole non-overlapping tile of every image in ``folder``, row by row."""
    import numpy as np
    from PIL import Image

    tiles = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)  # [3, H, W]
        for top in range(0, pixels.shape[1] - side + 1, side):
            for left in range(0, pixels.shape[2] - side + 1, side):
                tiles.append(pixels[:, top:top + side, left:left + side])
    if not tiles:
        raise SystemExit(f"--held-out {folder}: no image of at least {side} px a side")
    return torch.stack(tiles).float() / 127.5 - 1


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] → [N]: the variance of the 3×3 Laplacian of each image's grey levels."""
    grey = images.mean(dim=1, keepdim=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device)
    return torch.nn.functional.conv2d(grey, kernel[None, None]).flatten(1).var(dim=1)


@torch.no_grad()
def reconstruct(autoencoder, images: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    out = []
    for lo in range(0, len(images), batch):
        x = images[lo:lo + batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(autoencoder.decode(autoencoder.encode(x)).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def score(model_dir: Path, images: torch.Tensor, lpips, features, device: torch.device) -> dict:
    from ldmkit.autoencoders import load_autoencoder
    from ldmkit.evaluation.reconstruction_eval import evaluate_reconstruction

    autoencoder = load_autoencoder(model_dir, device=device).eval()
    result = evaluate_reconstruction(autoencoder, [images[lo:lo + 64] for lo in range(0, len(images), 64)],
                                     lpips=lpips, features=features, device=device, examples=0)
    recon = reconstruct(autoencoder, images, device)
    sharpness = float(laplacian_variance(recon).mean() / laplacian_variance(images).mean())
    return {"metrics": result["metrics"], "sharpness": sharpness, "num_images": result["num_images"],
            "reconstructions": recon}


def discriminator_curves(run: Path) -> dict[str, list[list[float]]]:
    """{tag: [[step, value], …]} of the discriminator's scalars in ``run``'s TensorBoard files."""
    from ldmkit.report.run_record import read_scalars

    curves = {}
    for tag, points in read_scalars(run / "tb").items():
        name = tag.rsplit("/", 1)[-1]
        if name in DISCRIMINATOR_TAGS:
            curves[name] = [[p.step, p.value] for p in points]
    return curves


def plot_discriminator(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_logits) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, ax in (("d_loss", ax_loss), ("g_adv", ax_loss), ("logits_real", ax_logits),
                     ("logits_fake", ax_logits)):
        if curves.get(name):
            steps, values = zip(*curves[name])
            ax.plot(steps, values, label=name)
    ax_loss.axhline(2.0, color="gray", ls=":", lw=1, label="hinge d_loss when it cannot tell")
    ax_loss.set_xlabel("step of the patchgan branch")
    ax_logits.set_xlabel("step of the patchgan branch")
    ax_logits.set_ylabel("mean discriminator logit")
    for ax in (ax_loss, ax_logits):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_comparison(columns: list[torch.Tensor], path: Path, rows: int = 6, crop: int = 48) -> None:
    """Rows of images, one column per model; the centre ``crop`` enlarged ×3 under each full image."""
    from ldmkit.io.images import make_grid, save_grid, to_unit

    tiles = []
    for i in range(min(rows, len(columns[0]))):
        for column in columns:
            tiles.append(column[i])
    full = torch.stack(tiles)  # [rows * columns, C, H, W]
    h, w = full.shape[-2:]
    c = min(crop, h, w)
    top, left = (h - c) // 2, (w - c) // 2
    zoomed = torch.nn.functional.interpolate(full[..., top:top + c, left:left + c], size=(h, w), mode="nearest")
    pairs = torch.stack([full, zoomed], dim=1).unflatten(0, (-1, len(columns)))  # [rows, columns, 2, C, H, W]
    grid = pairs.permute(0, 2, 1, 3, 4, 5).flatten(0, 2)  # a row of full images, then a row of their crops
    save_grid(make_grid(to_unit(grid), nrow=len(columns)), path)


# --------------------------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> None:
    from ldmkit.autoencoders.lpips import LPIPS
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset
    from ldmkit.evaluation import build_feature_extractor
    from ldmkit.evaluation.reconstruction_eval import bicubic_roundtrip, bicubic_size

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
                     "training": {}, "scores": {}}

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    budget = ["train.steps=4"] if args.tiny else [f"train.max_minutes={args.warm_minutes}", "train.steps=1000000"]
    results["training"]["warm"] = train("warm", args, [f"loss.disc_start={NEVER}", *budget])
    save()
    steps = 4 if args.tiny else args.branch_steps
    for name, extra in BRANCHES.items():
        results["training"][name] = train(name, args, [f"train.init_from={args.work / 'warm' / 'model'}",
                                                       f"train.steps={steps}", *extra])
        save()
    results["discriminator"] = discriminator_curves(args.work / "patchgan")

    data = results["training"]["warm"]["config"]["data"]
    if args.held_out is not None:  # photos: every whole tile of the held-out photographs
        images = held_out_tiles(args.held_out, data["resolution"])
    else:  # score on the data settings the runs trained with
        data_file = args.work / "data.yaml"
        data_file.write_text(yaml.safe_dump(data))
        held_out = build_dataset(load_config(DataConfig, data_file), split=args.split)
        images = torch.stack([held_out[i]["image"] for i in range(len(held_out))])
    images = images[:args.eval_limit or len(images)]
    results["held_out_images"] = len(images)
    lpips = LPIPS.from_assets(args.perceptual)
    features = build_feature_extractor("efflite0", device=device)
    columns = [images]
    for name in ("warm", *BRANCHES):
        scored = score(args.work / name / "model", images, lpips, features, device)
        columns.append(scored.pop("reconstructions"))
        results["scores"][name] = scored
        save()
    config = results["training"]["warm"]["config"]["model"]
    f = 2 ** (len(config["channel_mult"]) - 1)
    size = bicubic_size(images.shape[-2], images.shape[-1], f, config["latent_channels"], images.shape[1])
    columns.append(bicubic_roundtrip(images, size).clamp(-1, 1))
    results["bicubic_sharpness"] = float(laplacian_variance(columns[-1]).mean() / laplacian_variance(images).mean())
    results["columns"] = ["original", "warm", *BRANCHES, "bicubic"]
    save_comparison(columns, args.out / "reconstructions.png")
    plot_discriminator(results["discriminator"], args.out / "discriminator.png")
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps({name: {"psnr": s["metrics"]["autoencoder"].get("psnr"),
                             "lpips": s["metrics"]["autoencoder"].get("lpips"),
                             "sharpness": s["sharpness"]} for name, s in results["scores"].items()}, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=None, help="the runs' directory (default OUT/runs)")
    p.add_argument("--preset", default="fluent-emoji-128-kl-f4", help="an autoencoder preset (configs/autoencoder)")
    p.add_argument("--warm-minutes", type=float, default=3.0, help="the shared start, reconstruction loss only")
    p.add_argument("--branch-steps", type=int, default=1500, help="steps of each branch")
    p.add_argument("--perceptual", default="alex", choices=("alex", "vgg16"), help="LPIPS network of the loss and "
                                                                                  "of the scores")
    p.add_argument("--split", default="val", help="held-out split of the preset's data")
    p.add_argument("--held-out", type=Path, default=None, help="score on the tiles of these images instead (a "
                                                               "folder: photo_set.py --held-out)")
    p.add_argument("--eval-limit", type=int, default=0, help="held-out images scored (0: all)")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--tiny", action="store_true", help="tiny networks, a few steps, on the CPU (smoke test)")
    p.add_argument("overrides", nargs="*", help="config overrides of every run")
    args = p.parse_args()
    args.work = args.work or args.out / "runs"
    if args.tiny:
        args.eval_limit = args.eval_limit or 8
    run(args)


if __name__ == "__main__":
    main()
