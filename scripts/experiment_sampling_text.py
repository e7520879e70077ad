"""Quality against cost of samplers and of a distilled student on the emoji text model: FD-EffLite0 against the
held-out Fluent emoji at NFE ∈ {1, 2, 4, 8, 12, 25, 50}, with wall time per image.

The model is ``fluent-emoji-64-text`` (Fluent Emoji 3D at 64², frozen MiniLM per-token states as cross-attention
context, on the 16×16×3 latents of ``fluent-emoji-64-kl-f4``), the measurement that of ``experiment_sampling.py``
(same rows, same plot, same NFE count: a guided step is one batched evaluation of both halves; Heun takes
⌈(NFE + 1) / 2⌉ steps; the student is sampled with ``lcm`` at w = ``--guidance``, an LCM-LoRA at guidance 1).

Two steps, because the GPU machine has no network and takes at most 64 MiB of inputs per call:

``prepare --to DIR`` (here): all 3,374 Fluent emoji at 64² as the loader gives them (RGB on white, lossless WebP)
under ``DIR/data``, the MiniLM states of every caption and grid prompt (``DIR/prompts.safetensors``: MiniLM's
weights do not fit), LPIPS-AlexNet (the first stage's perceptual loss, as in ``experiment_concept.py``: VGG16's
weights would not fit) and EfficientNet-Lite0, float16, under ``DIR/assets`` (installed by ``run`` where missing).

``run --carry DIR --out OUT`` (GPU): the first stage (``--ae-minutes``), the teacher (``--teacher-minutes``; or
``--teacher MODEL_DIR``), a full consistency student (``ldm distill``'s code, w-conditioned, ``--student-minutes``;
or ``--student MODEL_DIR``) and, with ``--lora-rank``, an LCM-LoRA (``--lora-minutes``); then ``grids.png`` (a
prompt per column: student at 1, 2, 4 steps, LCM-LoRA at 1, 2, 4, teacher at 4 and 25 DPM-Solver++(2M) steps), then
for each arm and NFE ``--n`` samples for the held-out captions (cycled) scored against the held-out images.
``results.json`` and ``sampling.png`` are written after every arm; ``--budget-s`` (seconds since the start of
``run``) stops the measurement before a row that would not finish in time, keeping every row so far. The teacher's
samplers come first, their trailing-ladder twins (``--trailing-up-to``) last.

    python scripts/experiment_sampling_text.py prepare --to .carry/sampling-text   # here: 43 MiB (states 18,
                                                                                # Fluent 12, EffLite0 9, LPIPS 5)
    tar czf .carry/tar/sampling-text.tar.gz -C .carry sampling-text    # one file: the carry counts disk use
    # GPU call from the repository root (carry the tar), about 510 s with these settings:
    export LDMKIT_HOME=/tmp/ldmkit PYTHONPATH=$PWD/src:/tmp/site:$PWD/scripts PYTHONUNBUFFERED=1
    mkdir -p /tmp/st0 && tar xzf .carry/tar/sampling-text.tar.gz -C /tmp/st0
    python3 scripts/device_assets.py unpack /tmp/st0/sampling-text/assets
    python3 scripts/experiment_sampling_text.py run --carry /tmp/st0/sampling-text --out $OUT --work /tmp/st \\
        --ae-minutes 1 --teacher-minutes 3.25 --student-minutes 1 --n 1000 --budget-s 505
    python scripts/experiment_sampling_text.py run --tiny --out /tmp/st    # CPU smoke test (about 20 s)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from experiment_concept import QUIET, TINY_UNET, emoji_set, last_step, train_first_stage, write_set
from experiment_emoji_text import NEW_COMPOSITIONS, held_out_prompts
from experiment_sampling import NFES, plot, save_grids, steps_for

#: The teacher's samplers, most wanted first (a call cut short by --budget-s still measures those).
TEACHER_SAMPLERS = ("dpm++2m", "unipc", "ddim", "euler", "heun")
TINY = dict(n=8, nfe=[1, 2, 4], samplers=["dpm++2m", "heun"], trailing_up_to=2, lora_rank=2)  # every arm, small
CARRIED_ASSETS = ("lpips", "efficientnet-lite0")


# --------------------------------------------------------------------------------------------- data


def split_sets(root: Path | None = None, captions: str = "name"):
    """(train, val) of the text model's data (the ``fluent-emoji-64`` preset: 10% held out, seed 0), from ``root``
    (a carried copy) if given, with ``captions`` (``data.emoji_captions``)."""
    from ldmkit.config import load_config
    from ldmkit.data import DataConfig, build_dataset

    cfg = load_config(DataConfig, "fluent-emoji-64", [f"emoji_captions={captions}"], group="data")
    if root is not None:
        cfg = dataclasses.replace(cfg, path=str(root))
    return build_dataset(cfg, split="train"), build_dataset(cfg, split="val")


def captions(dataset) -> list[str]:
    return [dataset.caption(i) for i in range(len(dataset))]


def grid_prompts(val, count: int = 4) -> list[str]:
    """``count`` held-out captions and ``count`` new compositions (prompts that are not emoji names)."""
    return held_out_prompts(val, count) + list(NEW_COMPOSITIONS[:count])


def prepare(to: Path, tiny: bool) -> None:
    from device_assets import pack  # scripts/ is on sys.path when a script runs

    from ldmkit.conditioning import ConditionerConfig, build_conditioner
    from ldmkit.conditioning.prompt_states import PromptStates, write_prompt_states

    fluent = emoji_set("fluent-emoji-3d")  # every emoji (the split is made again from the carried copy)
    keep = list(range(0, len(fluent), 60)) if tiny else list(range(len(fluent)))
    root = to / "data" / "fluent-emoji-3d"
    write_set("fluent-emoji-3d", fluent, root, keep)  # checks that the copy loads to the same tensors
    train, val = split_sets(root)
    if not tiny:  # the carried copy must split exactly as the original does
        original_train, original_val = split_sets()
        if (captions(train), captions(val)) != (captions(original_train), captions(original_val)):
            raise SystemExit(f"the copy in {root} does not split as the original set does")
        for i in range(0, len(val), 17):
            assert torch.equal(val[i]["image"], original_val[i]["image"]), f"held-out image {i} differs"
    prompts = captions(train) + captions(val) + grid_prompts(val)
    encoder = build_conditioner(ConditionerConfig(kind="pretrained_text", drop_prob=0.0))
    states = write_prompt_states(to / "prompts.safetensors", prompts, encoder, progress=not tiny)
    pack(["lpips"], to / "assets", ["vgg16.safetensors"])
    pack(["efficientnet-lite0"], to / "assets", [])
    size = sum(p.stat().st_size for p in to.rglob("*") if p.is_file())
    print(f"prepared {to}: {size / 2**20:.1f} MiB ({len(train)} training, {len(val)} held-out emoji, "
          f"{len(PromptStates(states))} prompt states)")


def install_assets(carry: Path) -> None:
    """Install the carried assets (float16 → float32) into $LDMKIT_HOME where they are missing."""
    from device_assets import unpack

    from ldmkit.assets import require
    from ldmkit.errors import AssetMissingError

    missing = []
    for name in CARRIED_ASSETS:
        try:
            require(name)
        except AssetMissingError:
            missing.append(name)
    if missing and (carry / "assets").is_dir():
        unpack(carry / "assets")


# --------------------------------------------------------------------------------------------- the run


def train_models(args: argparse.Namespace, carry: Path, work: Path, results: dict, save) -> dict[str, Path | None]:
    """First stage, teacher, student and LCM-LoRA (each unless given), timing each."""
    from ldmkit.training.diffusion_task import run_diffusion_training
    from ldmkit.training.distill_task import run_distillation

    tiny, workers = args.tiny, 0 if args.tiny else args.workers
    states = carry / "prompts.safetensors"
    cpu = ["train.device=cpu"] if tiny else []

    def timed(name: str, began: float, run: Path | None = None) -> None:
        results["timings"][f"{name}_seconds"] = round(time.perf_counter() - began, 1)
        if run is not None:
            results["steps"][name] = last_step(run)
        save()

    teacher = args.teacher
    if teacher is None:
        began = time.perf_counter()
        autoencoder = train_first_stage(work, carry, args.ae_minutes, tiny, workers)
        timed("autoencoder", began, work / "ae")
        began = time.perf_counter()
        budget = ["train.steps=3"] if tiny else [f"train.max_minutes={args.teacher_minutes}", "train.steps=1000000",
                                                 "train.checkpoint_every=1000000"]
        teacher = run_diffusion_training("fluent-emoji-64-text", [
            f"autoencoder={autoencoder}", f"train.out={work / 'teacher'}",
            f"data.path={carry / 'data' / 'fluent-emoji-3d'}",
            f"conditioner.pretrained.states_file={states}", *budget, *QUIET, f"train.num_workers={workers}",
            *(TINY_UNET if tiny else [])])
        timed("teacher", began, work / "teacher")
        results["teacher_config"] = (work / "teacher" / "config.yaml").read_text()

    def distil(name: str, minutes: float, extra: list[str]) -> Path:
        began = time.perf_counter()
        run = work / name
        budget = ["train.steps=2", "train.batch_size=4", "skip=100"] if tiny else [
            f"train.max_minutes={minutes}", "train.steps=1000000", f"train.batch_size={args.student_batch}"]
        run_distillation([f"model={teacher}", f"train.out={run}", "guidance_min=1",
                          f"guidance_max={max(args.guidance, 1.0) + 2}", "train.checkpoint_every=1000000", *QUIET,
                          f"train.num_workers={workers}", *budget, *cpu, *extra])
        timed(name, began, run)
        return run / "model"

    student = args.student or distil("student", args.student_minutes, [])
    adapter = None
    if args.lora_rank:
        lora = distil("lcm-lora", args.lora_minutes, [f"lora.rank={args.lora_rank}", "lora.name=lcm",
                                                      "lora.targets=[attention,convolutions]", "train.lr=1e-4"])
        adapter = lora / "adapters" / "lcm.safetensors"
    return {"teacher": Path(teacher), "student": Path(student), "adapter": adapter}


def jobs_of(args: argparse.Namespace, adapter: Path | None) -> list[tuple[str, int]]:
    """(arm, NFE) in measuring order: the students, the teacher's samplers, then their trailing-ladder twins."""
    from ldmkit import samplers

    arms = ["student (lcm)"] + ["lcm-lora (lcm)"] * (adapter is not None) + list(args.samplers)
    arms += [f"{name} (trailing)" for name in args.samplers
             if args.trailing_up_to and samplers.get(name).default_spacing == "karras"]
    jobs = []
    for arm in arms:
        sampler = "lcm" if arm.endswith("(lcm)") else arm.removesuffix(" (trailing)")
        for nfe in args.nfe:
            if (sampler == "lcm" and nfe > 8) or (arm.endswith("(trailing)") and nfe > args.trailing_up_to):
                continue  # a consistency student is meant for 1–4 (8) steps
            if steps_for(sampler, nfe) is not None:
                jobs.append((arm, nfe))
    return jobs


def measure(args: argparse.Namespace, models: dict, reference, prompts: list[str], started: float, results: dict,
            save) -> None:
    """The FD rows; stops before a row that the budget cannot fit (predicted from the rows so far)."""
    from ldmkit import samplers
    from ldmkit.evaluation import build_feature_extractor
    from ldmkit.evaluation.generation import evaluate_generation
    from ldmkit.pipelines import load_pipeline

    rows = results["rows"]
    pipes: dict[str, object] = {}
    extractor = None  # built once, not per row
    # The most wall seconds per NFE of a guided row of NFE ≥ 8 so far: a row costs about that times its NFE (the
    # fixed cost of decoding and features, and the first call's warm-up, would inflate the rate of a short row).
    per_nfe = 0.0
    jobs = jobs_of(args, models["adapter"])
    for index, (arm, nfe) in enumerate(jobs):
        sampler = "lcm" if arm.endswith("(lcm)") else arm.removesuffix(" (trailing)")
        spacing = "trailing" if arm.endswith("(trailing)") else None
        steps = steps_for(sampler, nfe)
        if args.budget_s is not None and time.perf_counter() - started + per_nfe * nfe > args.budget_s:
            print(f"budget of {args.budget_s:.0f}s: stopping before {arm} at NFE {nfe} "
                  f"({len(jobs) - index} rows left)", flush=True)
            results["complete"] = False
            results["left_out"] = [f"{a} @ {n}" for a, n in jobs[index:]]
            break
        if arm not in pipes:
            if arm == "lcm-lora (lcm)":
                pipe = load_pipeline(models["teacher"])
                pipe.load_lora(models["adapter"])
            elif arm == "student (lcm)":
                pipe = load_pipeline(models["student"])
            else:
                pipe = pipes.get("teacher") or load_pipeline(models["teacher"])
                pipes["teacher"] = pipe
            pipes[arm] = pipe
        if extractor is None:
            extractor = build_feature_extractor(reference.feature, device=pipes[arm].device)
        guidance = 1.0 if arm.startswith("lcm-lora") else args.guidance  # the LoRA folded its guidance in
        began = time.perf_counter()
        result = evaluate_generation(pipes[arm], reference, n=args.n, prompts=prompts, sampler=sampler, steps=steps,
                                     spacing=spacing, guidance=guidance, metrics=("fd",), feature=extractor,
                                     batch_size=min(args.n, 500), progress=False)
        wall = time.perf_counter() - began
        if not arm.endswith("(lcm)") and nfe >= 8:
            per_nfe = max(per_nfe, wall / nfe)
        fd = next(v for k, v in result["metrics"].items() if k.startswith("FD"))
        rows.append({"sampler": arm, "nfe": nfe, "steps": steps, "fd": fd, "guidance": guidance,
                     "spacing": spacing or samplers.get(sampler).default_spacing,
                     "seconds_per_image": result["sampling_seconds"] / args.n, "wall_seconds": round(wall, 2)})
        print(json.dumps(rows[-1]), flush=True)
        if index + 1 == len(jobs) or jobs[index + 1][0] != arm:  # an arm done: save and plot
            save()
            plot(rows, args.out / "sampling.png")
        if arm == "student (lcm)" and (index + 1 == len(jobs) or jobs[index + 1][0] != arm):
            pipes.pop(arm)  # the student's weights are not needed again
    save()
    plot(rows, args.out / "sampling.png")


def run(args: argparse.Namespace) -> None:
    from ldmkit.evaluation.evaluate import compute_reference_stats, evaluate_images

    started = time.perf_counter()
    carry = args.carry.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or args.out / "runs").resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.tiny:
        install_assets(carry)
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()},
                     "n": args.n, "guidance": args.guidance, "timings": {}, "steps": {}, "complete": True,
                     "rows": []}

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    models = train_models(args, carry, work, results, save)
    results.update(teacher=str(models["teacher"]), student=str(models["student"]),
                   lcm_lora=str(models["adapter"]) if models["adapter"] is not None else None,
                   training_seconds=round(time.perf_counter() - started, 1))

    began = time.perf_counter()
    train, val = split_sets(carry / "data" / "fluent-emoji-3d")
    prompts = grid_prompts(val)
    results["grid_prompts"] = prompts
    save_grids(models["student"], models["teacher"], models["adapter"], args.guidance, {"prompt": prompts},
               args.out / "grids.png")
    results["timings"]["grids_seconds"] = round(time.perf_counter() - began, 1)

    began = time.perf_counter()

    def batches(dataset, indices):
        for lo in range(0, len(indices), 500):
            yield torch.stack([dataset[i]["image"] for i in indices[lo:lo + 500]])

    reference = compute_reference_stats(batches(val, list(range(len(val)))), "efflite0",
                                        source=f"fluent-emoji-64 val split ({len(val)} held-out emoji)",
                                        progress=False)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.n].tolist()
    floor = evaluate_images(batches(train, order), reference, metrics=("fd",), progress=False)
    results["reference"] = f"fluent-emoji-64 val split: {len(val)} held-out emoji, prompts their captions cycled"
    results["real_floor"] = {"description": f"{len(order)} training images vs the held-out images",
                             "fd": next(v for k, v in floor["metrics"].items() if k.startswith("FD"))}
    results["timings"]["reference_seconds"] = round(time.perf_counter() - began, 1)
    save()

    began = time.perf_counter()
    measure(args, models, reference, captions(val), started, results, save)
    results["timings"]["measure_seconds"] = round(time.perf_counter() - began, 1)
    results["timings"]["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps({k: results[k] for k in ("device", "timings", "steps", "complete", "real_floor")}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="(here) the data, prompt states and weights the GPU run needs")
    p.add_argument("--to", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="every 60th emoji only (for the smoke test)")
    r = sub.add_parser("run", help="(GPU) train, distil, sample, score; --tiny: a CPU smoke test of the script")
    r.add_argument("--carry", type=Path, help="what prepare wrote (--tiny: made in a temporary folder)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=None, help="where the runs go (default OUT/runs); keep them out of "
                                                           "a size-limited OUT")
    r.add_argument("--teacher", type=Path, default=None, help="a trained emoji text model directory (else the "
                                                              "first stage and the teacher are trained here)")
    r.add_argument("--student", type=Path, default=None, help="a distilled student model directory")
    r.add_argument("--ae-minutes", type=float, default=1.0)
    r.add_argument("--teacher-minutes", type=float, default=3.25)
    r.add_argument("--student-minutes", type=float, default=1.0)
    r.add_argument("--student-batch", type=int, default=64, help="images per distillation step")
    r.add_argument("--lora-rank", type=int, default=0, help="rank of an LCM-LoRA arm (0: none; 16 costs about "
                                                            "--lora-minutes + 10 s of training and 5 s of measuring)")
    r.add_argument("--lora-minutes", type=float, default=0.75)
    r.add_argument("--budget-s", type=float, default=None, help="stop measuring (keeping every row so far) before "
                                                                "a row that would end past this many seconds")
    r.add_argument("--n", type=int, default=1000, help="scored samples per row")
    r.add_argument("--guidance", type=float, default=2.0)
    r.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    r.add_argument("--samplers", nargs="+", default=list(TEACHER_SAMPLERS))
    r.add_argument("--trailing-up-to", type=int, default=12, help="also run the karras-ladder samplers on the "
                                                                  "trailing ladder up to this NFE (0: never), last")
    r.add_argument("--workers", type=int, default=12, help="data-loader workers of the training runs")
    r.add_argument("--tiny", action="store_true", help="tiny networks, a few steps, on the CPU (smoke test)")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.to, args.tiny)
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if args.tiny:
            for key, value in TINY.items():
                setattr(args, key, value)
            if args.carry is None:
                args.carry = Path(scratch) / "carry"
                prepare(args.carry, True)
        elif args.carry is None:
            parser.error("run needs --carry (what prepare wrote), or --tiny")
        if args.work is None and args.tiny:
            args.work = Path(scratch) / "runs"
        run(args)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
