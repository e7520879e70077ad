"""Quality against cost of every sampler and of a distilled student: FD-EffLite0 against the held-out split at
NFE ∈ {1, 2, 4, 8, 12, 25, 50}, with wall time per image, on the Fashion-MNIST class model.

One call: train the teacher (or take ``--teacher DIR``), distil a student (``ldm distill``'s code; or take
``--student DIR``) and an LCM-LoRA adapter of the teacher (``--lora-rank``, 0: none; sampled at guidance 1, the
guidance it folded in), then for each sampler and each NFE sample ``--n`` images (classes cycled, guidance
``--guidance``) and score them. NFE counts network evaluations per image: a guided step of the teacher costs
one batched evaluation of the conditional and unconditional halves, counted here as one, as peers count it;
Heun-type samplers take ⌈(NFE + 1) / 2⌉ steps. Writes ``results.json`` (a row per sampler × NFE) and
``sampling.png`` after every sampler, so an interrupted call keeps what it measured.

    python scripts/experiment_sampling.py --out $OUT --work /tmp/sampling --ae-minutes 1 --teacher-minutes 2
    python scripts/experiment_sampling.py --out $OUT --autoencoder .carry/ae --teacher-minutes 3 --student-minutes 3
    python scripts/experiment_sampling.py --out /tmp/s --tiny          # CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from experiment_quality import first_stage
from ldmkit import samplers
from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.evaluation.evaluate import compute_reference_stats
from ldmkit.evaluation.generation import evaluate_generation
from ldmkit.io.images import make_grid, save_grid, to_unit
from ldmkit.pipelines import load_pipeline
from ldmkit.training.diffusion_task import DiffusionExperiment, run_diffusion_training
from ldmkit.training.distill_task import run_distillation

NFES = (1, 2, 4, 8, 12, 25, 50)
# The samplers the targets name come first, so a call cut short by --budget-s still measures them.
TEACHER_SAMPLERS = ("dpm++2m", "unipc", "dpm++3m", "ddim", "euler", "heun", "euler-a", "dpm++2m-sde", "plms")
TWO_EVALUATIONS = {"heun"}  # 2·steps − 1 evaluations per image


def steps_for(sampler: str, nfe: int) -> int | None:
    """Steps of ``sampler`` that cost ``nfe`` evaluations (None when it cannot: Heun at NFE 2 or less)."""
    if sampler in TWO_EVALUATIONS:
        steps = math.ceil((nfe + 1) / 2)
        return steps if nfe >= 3 else None
    return nfe


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = plt.get_cmap("tab20").colors
    ax.set_prop_cycle(color=colours[0::2] + colours[1::2])  # 10 strong colours, then their pale twins
    for name in dict.fromkeys(r["sampler"] for r in rows):
        points = sorted((r["nfe"], r["fd"]) for r in rows if r["sampler"] == name and r.get("fd") is not None)
        if points:
            ax.plot(*zip(*points), marker="o", label=name, lw=2.5 if name.endswith("(lcm)") else 1.2,
                    ls="--" if name.endswith("(trailing)") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per image (NFE)")
    ax.set_ylabel("FD-EffLite0 (lower is better)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(results: Path) -> None:
    """Draw ``sampling.png`` again beside a ``results.json`` (``--replot DIR``)."""
    plot(json.loads((results / "results.json").read_text())["rows"], results / "sampling.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default OUT/runs); "
                                                                "keep them out of a size-limited OUT")
    parser.add_argument("--autoencoder", type=Path, default=None, help="first stage of the teacher (else one is "
                                                                       "trained for --ae-minutes)")
    parser.add_argument("--ae-minutes", type=float, default=1.25)
    parser.add_argument("--budget-s", type=float, default=None, help="stop measuring (keeping every row so far) "
                                                                     "once this many seconds have passed")
    parser.add_argument("--teacher", type=Path, default=None, help="a trained teacher model directory")
    parser.add_argument("--student", type=Path, default=None, help="a distilled student model directory")
    parser.add_argument("--teacher-minutes", type=float, default=3.0)
    parser.add_argument("--student-minutes", type=float, default=3.0)
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the LCM-LoRA arm (0: none)")
    parser.add_argument("--lora-minutes", type=float, default=3.0)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--samplers", nargs="+", default=list(TEACHER_SAMPLERS))
    parser.add_argument("--trailing-up-to", type=int, default=12, help="also run the karras-ladder samplers on "
                        "the trailing ladder up to this NFE (0: never): a karras ladder of n steps spends its last "
                        "evaluation on σ_min → 0")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the synthetic set (smoke test)")
    parser.add_argument("--replot", action="store_true", help="only draw OUT/sampling.png from OUT/results.json")
    args = parser.parse_args()
    if args.replot:
        return replot(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "runs"
    started = time.perf_counter()
    tiny = ["data.source=synthetic", "data.resolution=16", "data.synthetic.count=32", "data.synthetic.supersample=1",
            "data.channels=3", "conditioner.num_classes=16", "unet.model_channels=8", "unet.channel_mult=[1,2]",
            "unet.num_res_blocks=1", "unet.attention_resolutions=[]", "unet.num_head_channels=null",
            "unet.num_heads=2", "train.batch_size=4", "train.device=cpu"] if args.tiny else []
    run_opts = ["train.progress=false", "train.image_every=0", "train.log_every=100", "train.checkpoint_every=100000",
                "train.steps=1000000"]
    if args.tiny and args.autoencoder is None:
        from ldmkit.autoencoders import AutoencoderConfig, build_autoencoder, save_autoencoder

        args.autoencoder = save_autoencoder(work / "ae", build_autoencoder(AutoencoderConfig(kind="identity")))
    elif args.autoencoder is None and args.teacher is None:
        args.autoencoder = first_stage(work, args.ae_minutes)
    teacher = args.teacher
    if teacher is None:
        run = work / "teacher"
        run_diffusion_training("fashion-mnist-class", [f"autoencoder={args.autoencoder}", *tiny, *run_opts,
                                                       f"train.out={run}", f"train.max_minutes={args.teacher_minutes}"])
        teacher = run / "model"
    student = args.student
    if student is None:
        run = work / "student"
        run_distillation([f"model={teacher}", f"train.out={run}", f"train.max_minutes={args.student_minutes}",
                          "guidance_min=1", f"guidance_max={max(args.guidance, 1.0) + 2}", *run_opts,
                          *([o for o in tiny if o.startswith("train.")])])
        student = run / "model"
    adapter = None
    if args.lora_rank:
        run = work / "lcm-lora"
        run_distillation([f"model={teacher}", f"train.out={run}", f"train.max_minutes={args.lora_minutes}",
                          f"lora.rank={args.lora_rank}", "lora.name=lcm", "lora.targets=[attention,convolutions]",
                          "train.lr=1e-4", "guidance_min=1", f"guidance_max={max(args.guidance, 1.0) + 2}", *run_opts,
                          *([o for o in tiny if o.startswith("train.")])])
        adapter = run / "model" / "adapters" / "lcm.safetensors"
    trained_seconds = time.perf_counter() - started
    experiment = load_config(DiffusionExperiment, "fashion-mnist-class", [f"autoencoder={args.autoencoder}", *tiny],
                             group="diffusion")
    test_set = build_dataset(experiment.data, split="test" if not args.tiny else "val")
    count = len(test_set)
    reference = compute_reference_stats(
        (torch.stack([test_set[i]["image"] for i in range(lo, min(lo + 500, count))]) for lo in range(0, count, 500)),
        "efflite0", source="held-out split", progress=False)
    labels = [i % experiment.conditioner.num_classes for i in range(args.n)]
    rows: list[dict] = []
    jobs = [("student (lcm)", student)] + [("lcm-lora (lcm)", teacher)] * (adapter is not None)
    for name in args.samplers:
        jobs.append((name, teacher))
        if args.trailing_up_to and samplers.get(name).default_spacing == "karras":
            jobs.append((f"{name} (trailing)", teacher))
    out_of_time = False
    for name, directory in jobs:
        if out_of_time:
            break
        pipe = load_pipeline(directory)
        guidance = args.guidance
        if name.startswith("lcm-lora"):
            pipe.load_lora(adapter)
            guidance = 1.0  # the guided teacher step is folded into the adapter
        sampler = "lcm" if name.endswith("(lcm)") else name.removesuffix(" (trailing)")
        spacing = "trailing" if name.endswith("(trailing)") else None
        for nfe in args.nfe:
            if sampler == "lcm" and nfe > 8:
                continue  # a consistency student is meant for 1–4 (8) steps
            if spacing and nfe > args.trailing_up_to:
                continue
            steps = steps_for(sampler, nfe)
            if steps is None:
                continue
            if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                print(f"budget of {args.budget_s:.0f}s spent: stopping before {name} at NFE {nfe}", flush=True)
                out_of_time = True
                break
            began = time.perf_counter()
            result = evaluate_generation(pipe, reference, n=args.n, class_labels=labels, sampler=sampler, steps=steps,
                                         spacing=spacing, guidance=guidance, metrics=("fd",),
                                         batch_size=min(args.n, 500), progress=False)
            fd = next(v for k, v in result["metrics"].items() if k.startswith("FD"))
            rows.append({"sampler": name, "nfe": nfe, "steps": steps, "fd": fd, "guidance": guidance,
                         "spacing": spacing or samplers.get(sampler).default_spacing,
                         "seconds_per_image": result["sampling_seconds"] / args.n,
                         "wall_seconds": round(time.perf_counter() - began, 2)})
            print(json.dumps(rows[-1]), flush=True)
        (args.out / "results.json").write_text(json.dumps({
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "teacher": str(teacher), "student": str(student),
            "lcm_lora": str(adapter) if adapter is not None else None, "n": args.n,
            "guidance": args.guidance, "training_seconds": round(trained_seconds, 1),
            "complete": not out_of_time, "rows": rows}, indent=2))
        plot(rows, args.out / "sampling.png")
    classes = list(range(min(experiment.conditioner.num_classes, 10)))
    save_grids(student, teacher, adapter, args.guidance, {"class_label": classes}, args.out / "grids.png")


def save_grids(student: Path, teacher: Path, adapter: Path | None, guidance: float, condition: dict,
               path: Path) -> None:
    """One row per arm, one column per item of ``condition`` (``{"class_label": [...]}`` or ``{"prompt": [...]}``;
    seed 0), each at the guidance its FD rows use: the w-conditioned student and the LCM-LoRA (guidance 1, folded
    in) at 1, 2 and 4 steps, the teacher at 4 and 25 DPM-Solver++(2M) steps."""
    columns = len(next(iter(condition.values())))
    arms = [(student, None, "lcm", n, guidance) for n in (1, 2, 4)]
    arms += [(teacher, adapter, "lcm", n, 1.0) for n in (1, 2, 4)] if adapter is not None else []
    arms += [(teacher, None, "dpm++2m", n, guidance) for n in (4, 25)]
    rows = []
    for directory, lora, sampler, steps, scale in arms:
        pipe = load_pipeline(directory)
        if lora is not None:
            pipe.load_lora(lora)
        rows.append(pipe(**condition, seed=0, sampler=sampler, steps=steps, guidance=scale, output="tensor",
                         progress=False).cpu())
    save_grid(make_grid(to_unit(torch.cat(rows)), nrow=columns), path)


if __name__ == "__main__":
    main()
