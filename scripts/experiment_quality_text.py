"""Time to quality of backbones and objectives on the emoji text model at equal GPU minutes: UNet-ε, UNet-v,
UNet-flow, DiT-ε and DiT-flow, each trained for the same wall time on one first stage, sampled and scored alike.

The model is ``fluent-emoji-64-text`` (Fluent Emoji 3D at 64², frozen MiniLM per-token states as cross-attention
context, 16×16×3 latents of ``fluent-emoji-64-kl-f4``); the DiT variants swap its UNet for DiT-S/2 (Table 1 of
the DiT paper: 12 blocks of width 384, 6 heads; 64 tokens here) with cross-attention to the same tokens; the flow
variants train rectified flow with logit-normal times (``experiment_quality.FLOW``). Everything else is the
preset's. Each variant is scored on samples of the **held-out captions** (the preset's 10% split, captions
cycled: prompts never trained on):

- FD-EffLite0, precision and recall against the held-out images, beside the real floor (training images against
  the same reference);
- **category accuracy**: a linear probe on EfficientNet-Lite0 features, fitted here on the training images'
  emoji categories (Smileys & Emotion, People & Body, Animals & Nature, …; its accuracy on the real held-out images
  is reported), applied to the samples: the share whose predicted category is their caption's emoji's. It says
  whether a held-out caption gives an emoji of the right kind.

Two carries. ``experiment_sampling_text.py prepare``'s holds the MiniLM states of the name captions (variants
"unet-eps", …). ``--prepare DIR`` writes one without states. It has MiniLM itself, cut to the word embeddings of
every caption style (``device_assets.py --vocabulary-of``), so captions are encoded on the device. Only that one
runs **caption variants**: "unet-eps:described" trains on and is prompted with ``data.emoji_captions=described``
("beating heart, heart, smileys and emotion"). The held-out emoji, seeds and scores stay those of the name
variant beside it. ``results.json`` (every variant's record) and ``grid-<variant>.png`` are written as each
variant finishes. ``--budget-s`` skips a variant that the time left cannot fit (predicted from the last one), so a
second call can do the rest with ``--variants``. A first stage retrained there is another one: compare within a
call, or carry ``--autoencoder``. ``--sweep 2 4 4@0.28:5.42`` then scores the first variant again at other
guidance scales, each optionally limited to an interval of noise levels, on the same seeds.

    python scripts/experiment_sampling_text.py prepare --to .carry/sampling-text    # here, once (43 MiB)
    tar czf .carry/tar/sampling-text.tar.gz -C .carry sampling-text
    # GPU call from the repository root (carry the tar):
    export LDMKIT_HOME=/tmp/ldmkit PYTHONPATH=$PWD/src:/tmp/site:$PWD/scripts PYTHONUNBUFFERED=1
    mkdir -p /tmp/st0 && tar xzf .carry/tar/sampling-text.tar.gz -C /tmp/st0
    python3 scripts/experiment_quality_text.py --carry /tmp/st0/sampling-text --out $OUT --work /tmp/qt \\
        --ae-minutes 1 --minutes 1.5 --variants unet-eps dit-flow unet-flow dit-eps --budget-s 560

    # caption styles and guidance (carry 45 MiB: Fluent 12, MiniLM cut 23, EffLite0 9, LPIPS-AlexNet 5)
    python scripts/experiment_quality_text.py --prepare .carry/quality-text
    tar czf .carry/tar/quality-text.tar.gz -C .carry quality-text
    mkdir -p /tmp/qc && tar xzf .carry/tar/quality-text.tar.gz -C /tmp/qc        # GPU call, same exports
    python3 scripts/device_assets.py unpack /tmp/qc/quality-text/assets
    python3 scripts/experiment_quality_text.py --carry /tmp/qc/quality-text --out $OUT --work /tmp/qt \\
        --ae-minutes 1 --minutes 2 --variants unet-eps:described unet-eps \\
        --sweep 2 4 6 4@0.28:5.42 3+p2 8+a0 --budget-s 560

    python scripts/experiment_quality_text.py --tiny --out /tmp/qt      # CPU smoke test (about a minute)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from experiment_concept import QUIET, TINY_UNET, emoji_set, last_step, train_first_stage, write_set
from experiment_emoji_text import NEW_COMPOSITIONS, held_out_prompts
from experiment_quality import FLOW
from experiment_sampling_text import install_assets, prepare, split_sets

DIT = ["backbone=dit", "dit.patch_size=2", "dit.hidden_size=384", "dit.depth=12", "dit.num_heads=6"]
VARIANTS: dict[str, list[str]] = {
    "unet-eps": [],
    "unet-v": ["schedule.prediction=v"],
    "unet-flow": FLOW,
    "dit-eps": DIT,
    "dit-flow": DIT + FLOW,
}
#: How captions read: a variant named "unet-eps:described" trains and is prompted with the described ones.
CAPTIONS = ("name", "described")
TINY_DIT = ["dit.hidden_size=32", "dit.depth=2", "dit.num_heads=2", "train.batch_size=8", "train.device=cpu"]
GRID_SEEDS = 4


# --------------------------------------------------------------------------------------------- features


@torch.no_grad()
def features_of(extractor, images: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    return torch.cat([extractor(images[lo:lo + batch].to(device)).float().cpu() for lo in range(0, len(images), batch)])


def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["image"] for it in items]), torch.tensor([int(it["label"]) for it in items])


def parse_variant(text: str) -> tuple[str, str]:
    """"dit-flow" → ("dit-flow", "name"); "unet-eps:described" → ("unet-eps", "described")."""
    name, _, captions = text.partition(":")
    captions = captions or "name"
    if name not in VARIANTS or captions not in CAPTIONS:
        raise SystemExit(f"unknown variant '{text}': one of {', '.join(VARIANTS)}, optionally with "
                         f":{' or :'.join(CAPTIONS)}")
    return name, captions


def prepare_encoder_carry(to: Path, tiny: bool) -> None:
    """The carry of runs that encode captions on the device (any caption style): the 64² Fluent emoji,
    MiniLM with only the word embeddings of every caption style, grid prompt and new composition
    (``device_assets.py --vocabulary-of``), LPIPS-AlexNet and EfficientNet-Lite0."""
    from device_assets import pack

    fluent = emoji_set("fluent-emoji-3d")
    root = to / "data" / "fluent-emoji-3d"
    write_set("fluent-emoji-3d", fluent, root, list(range(0, len(fluent), 60)) if tiny else list(range(len(fluent))))
    texts = list(NEW_COMPOSITIONS)
    for captions in CAPTIONS:
        train, val = split_sets(root, captions)
        texts += [train.caption(i) for i in range(len(train))] + [val.caption(i) for i in range(len(val))]
    listed = to / "vocabulary.txt"
    listed.write_text("\n".join(dict.fromkeys(texts)) + "\n", encoding="utf-8")
    pack(["minilm"], to / "assets", [], vocabulary_of=listed)
    pack(["lpips"], to / "assets", ["vgg16.safetensors"])
    pack(["efficientnet-lite0"], to / "assets", [])
    size = sum(p.stat().st_size for p in to.rglob("*") if p.is_file())
    print(f"prepared {to}: {size / 2**20:.1f} MiB")


# --------------------------------------------------------------------------------------------- the run


def sample_held_out(pipe, prompts: list[str], n: int, options: dict) -> torch.Tensor:
    """``n`` samples of ``prompts`` cycled, sample i with seed i (the same for every variant), [-1, 1] on the CPU."""
    listed = [prompts[i % len(prompts)] for i in range(n)]
    return torch.cat([pipe(prompt=listed[lo:lo + 500], seed=lo, batch_size=500, **options).cpu()
                      for lo in range(0, n, 500)])


def save_grid_of(pipe, prompts: list[str], options: dict, path: Path) -> None:
    """One row per prompt, ``GRID_SEEDS`` columns."""
    from ldmkit.io.images import make_grid, save_grid, to_unit

    columns = [pipe(prompt=prompts, seed=1000 * s, **options).cpu() for s in range(GRID_SEEDS)]
    save_grid(make_grid(to_unit(torch.stack(columns, dim=1).flatten(0, 1)), nrow=GRID_SEEDS), path)


def run(args: argparse.Namespace) -> None:
    from ldmkit.evaluation import LinearProbe, build_feature_extractor
    from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images
    from ldmkit.pipelines import load_pipeline
    from ldmkit.training.diffusion_task import run_diffusion_training

    started = time.perf_counter()
    tiny, carry = args.tiny, args.carry.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or args.out / "runs").resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not tiny:
        install_assets(carry)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    workers = 0 if tiny else args.workers
    summary: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
                     "timings": {}, "variants": {}, "skipped": {}}

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(summary, indent=2, default=str))

    began = time.perf_counter()
    autoencoder = args.autoencoder or train_first_stage(work, carry, args.ae_minutes, tiny, workers)
    summary["timings"]["autoencoder_seconds"] = round(time.perf_counter() - began, 1)
    if args.autoencoder is None:
        summary["autoencoder_steps"] = last_step(work / "ae")
    summary["autoencoder"] = str(autoencoder)

    # The reference, the floor and the category probe, from real images only.
    began = time.perf_counter()
    train_set, val_set = split_sets(carry / "data" / "fluent-emoji-3d")
    extractor = build_feature_extractor("efflite0", device=device)
    train_images, train_labels = stack(train_set)
    val_images, val_labels = stack(val_set)
    classes = len(train_set.class_names)
    probe = LinearProbe(features_of(extractor, train_images, device), train_labels, classes)
    summary["probe"] = {"classes": list(train_set.class_names),
                        "accuracy_on_held_out_real": probe.accuracy(features_of(extractor, val_images, device),
                                                                    val_labels),
                        "majority_class_share": float(torch.bincount(val_labels).max() / len(val_labels))}
    reference = compute_reference_stats([val_images], "efflite0", source=f"fluent-emoji-64 val split "
                                        f"({len(val_set)} held-out emoji)", progress=False)
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:args.n]
    floor = evaluate_images([train_images[order]], reference, metrics=("fd", "pr"), device=device)
    summary["real_floor"] = {"description": f"{len(order)} training images against the held-out images",
                             **floor["metrics"]}
    summary["timings"]["references_seconds"] = round(time.perf_counter() - began, 1)
    save()

    # The held-out emoji in each caption style (the split is by emoji, so the same items in the same order).
    held_out = {captions: split_sets(carry / "data" / "fluent-emoji-3d", captions)[1] for captions in CAPTIONS}
    prompts = {c: [held.caption(i) for i in range(len(held))] for c, held in held_out.items()}
    grids = {c: held_out_prompts(held, 6) + list(NEW_COMPOSITIONS[:4]) for c, held in held_out.items()}
    wanted = torch.tensor([int(val_labels[i % len(val_set)]) for i in range(args.n)])  # each sample's category
    options = dict(steps=3 if tiny else args.steps, guidance=args.guidance, sampler="dpm++2m", output="tensor",
                   progress=False)
    # Precomputed name-caption states where the carry has them, else MiniLM encodes on the device.
    states = carry / "prompts.safetensors"
    encoding = [f"conditioner.pretrained.states_file={states}"] if states.is_file() else []

    def score(pipe, sampling: dict, captions: str) -> dict:
        """FD/PR against the held-out images and the category accuracy of ``n`` held-out-caption samples."""
        sampled = time.perf_counter()
        images = sample_held_out(pipe, prompts[captions], args.n, sampling)
        seconds = time.perf_counter() - sampled
        return {"metrics": evaluate_images([images], reference, metrics=("fd", "pr"), device=device)["metrics"],
                "category_accuracy": probe.accuracy(features_of(extractor, images, device), wanted),
                "guidance": sampling["guidance"], "guidance_interval": sampling.get("guidance_interval"),
                "pag_scale": sampling.get("pag_scale", 0.0), "guidance_parallel": sampling.get("guidance_parallel", 1.0),
                "guidance_momentum": sampling.get("guidance_momentum", 0.0),
                "sampling_seconds": round(seconds, 1)}

    models_to_sweep: list[tuple[str, Path, dict, str]] = []
    last_cost = None
    for spec in args.variants:
        if args.budget_s and last_cost and time.perf_counter() - started + last_cost > args.budget_s:
            summary["skipped"][spec] = f"time budget: {last_cost:.0f} s more would pass {args.budget_s:.0f} s"
            save()
            continue
        name, captions = parse_variant(spec)
        variant_began = time.perf_counter()
        run_dir = work / spec.replace(":", "-")
        budget = ["train.steps=3"] if tiny else [f"train.max_minutes={args.minutes}", "train.steps=1000000",
                                                 "train.checkpoint_every=1000000"]
        tiny_net = (TINY_DIT if "dit" in name else TINY_UNET) if tiny else []
        if captions != "name" and encoding:
            raise SystemExit(f"variant {spec}: the carry's states are of name captions; prepare it with --prepare")
        overrides = [f"autoencoder={autoencoder}", f"train.out={run_dir}",
                     f"data.path={carry / 'data' / 'fluent-emoji-3d'}", f"data.emoji_captions={captions}", *encoding,
                     *VARIANTS[name], *args.overrides, *budget, *QUIET, f"train.num_workers={workers}", *tiny_net]
        model = run_diffusion_training("fluent-emoji-64-text", overrides)
        train_seconds = time.perf_counter() - variant_began
        pipe = load_pipeline(model)
        variant_options = {**options, **({"sampler": args.flow_sampler} if "flow" in name else {})}
        save_grid_of(pipe, grids[captions], variant_options, args.out / f"grid-{spec.replace(':', '-')}.png")
        record = {"variant": name, "captions": captions, "overrides": overrides, "training": {
                      "seconds": round(train_seconds, 1), "steps": last_step(run_dir),
                      "parameters": sum(p.numel() for p in pipe.unet.parameters())},
                  **score(pipe, variant_options, captions), "n": args.n, "sampler": variant_options["sampler"],
                  "steps": options["steps"], "grid_prompts": grids[captions]}
        summary["variants"][spec] = record  # one results file: few files come back from the device machine
        if spec == args.variants[0] and args.sweep:
            models_to_sweep.append((spec, model, variant_options, captions))
        last_cost = time.perf_counter() - variant_began
        summary["timings"][f"{spec}_seconds"] = round(last_cost, 1)
        save()
        print(json.dumps({spec: {k: record[k] for k in ("training", "metrics", "category_accuracy")}},
                         default=str), flush=True)
    # Guidance of the first variant: scale and interval on the same samples' seeds (item 5's guidance lever).
    for name, model, sampling, captions in models_to_sweep:
        pipe = load_pipeline(model)
        summary["sweep"] = {"variant": name, "settings": {}}
        cost = None
        for setting in args.sweep:
            if args.budget_s and cost and time.perf_counter() - started + cost > args.budget_s:
                summary["skipped"][f"sweep {setting}"] = f"time budget: {cost:.0f} s more would pass it"
                continue
            began = time.perf_counter()
            summary["sweep"]["settings"][setting] = score(pipe, {**sampling, **guidance_setting(setting)}, captions)
            cost = time.perf_counter() - began
            save()
    summary["timings"]["total_seconds"] = round(time.perf_counter() - started, 1)
    save()


def guidance_setting(text: str) -> dict:
    """"4" → scale 4 at every step; "4@0.28:5.42" → scale 4 where 0.28 < σ <= 5.42; "3+p2" → scale 3 and
    perturbed-attention guidance 2 (on the middle block); "8+a0+m-0.5" → scale 8 with adaptive projected
    guidance, the parallel part at weight 0 and momentum -0.5."""
    scales, _, interval = text.partition("@")
    scale, *extras = scales.split("+")
    setting: dict = {"guidance": float(scale)}
    names = {"p": "pag_scale", "a": "guidance_parallel", "m": "guidance_momentum"}
    for extra in extras:
        if extra[:1] not in names:
            raise SystemExit(f"unknown guidance setting '{extra}' in '{text}': +pS (PAG), +aW (APG's parallel "
                             "weight) or +mB (APG's momentum)")
        setting[names[extra[0]]] = float(extra[1:])
    if interval:
        lo, _, hi = interval.partition(":")
        setting["guidance_interval"] = (float(lo), float(hi))
    return setting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--carry", type=Path, help="what experiment_sampling_text.py prepare wrote (--tiny: made here)")
    p.add_argument("--out", type=Path, default=None, help="results folder (needed unless --prepare)")
    p.add_argument("--work", type=Path, default=None, help="the runs' directory (default OUT/runs)")
    p.add_argument("--prepare", type=Path, default=None, metavar="DIR",
                   help="here: write the carry of runs that encode captions on the device, then stop")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT[:CAPTIONS]",
                   help=f"of {', '.join(VARIANTS)}; ':described' trains and prompts with described captions")
    p.add_argument("--minutes", type=float, default=1.5, help="training wall time of each variant")
    p.add_argument("--ae-minutes", type=float, default=1.0)
    p.add_argument("--autoencoder", type=Path, default=None, help="reuse a first stage (else train one)")
    p.add_argument("--n", type=int, default=1000, help="scored samples per variant (held-out captions cycled)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sweep", nargs="*", default=[], metavar="S[+pP][+aW][@LO:HI]",
                   help="after the variants, score the first one again at these guidance settings: a scale, "
                        "optionally perturbed-attention guidance (3+p2), projected guidance (8+a0) and an interval "
                        "of noise levels (4@0.28:5.42)")
    p.add_argument("--flow-sampler", default="dpm++2m", help="sampler of the flow variants (flow-heun, euler, …)")
    p.add_argument("--budget-s", type=float, default=None, help="skip a variant that the seconds left since the "
                                                                "start cannot fit (predicted from the last one)")
    p.add_argument("--workers", type=int, default=12, help="data-loader workers of the training runs")
    p.add_argument("--tiny", action="store_true", help="tiny networks, a few steps, on the CPU (smoke test)")
    p.add_argument("overrides", nargs="*", help="config overrides applied to every variant")
    args = p.parse_args()
    if args.prepare is not None:
        prepare_encoder_carry(args.prepare, args.tiny)
        return
    if args.out is None:
        p.error("--out is needed (or --prepare DIR)")
    for spec in args.variants:
        parse_variant(spec)  # a typo fails before anything trains
    with tempfile.TemporaryDirectory() as scratch:
        if args.carry is None:
            if not args.tiny:
                p.error("--carry is needed (what experiment_sampling_text.py prepare wrote), or --tiny")
            args.carry = Path(scratch) / "carry"
            prepare(args.carry, True)
        if args.tiny:
            args.n = min(args.n, 16)
        run(args)


if __name__ == "__main__":
    main()
