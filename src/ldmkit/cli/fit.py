"""``ldm fit FOLDER --out RUN``: from a folder of images to a trained, evaluated LDM in one command.

Surveys the folder, prints a plan (``ldmkit.fit.plan``; ``--dry-run`` stops there, after writing RUN/plan.json),
then runs the stages in RUN/ and writes RUN/model and RUN/report.html. Rerunning the same command resumes;
see docs/fit.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ldmkit.errors import ConfigError

HELP = "folder of images -> trained, evaluated LDM in one command (plan, train, evaluate, report)"
DESCRIPTION = ("Survey FOLDER, print a plan chosen from the data, the device and --time (docs/fit.md), then train "
               "the autoencoder, encode the latents, train the diffusion model, evaluate it on a held-out split "
               "and write RUN/model and RUN/report.html. Rerunning the same command resumes.")

_TIME = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def parse_time(text: str) -> float:
    """``2h``, ``90m``, ``1h30m``, ``45s`` or a plain number of minutes → seconds."""
    text = text.strip().lower().replace(" ", "")
    try:
        return float(text) * 60
    except ValueError:
        pass
    match = _TIME.match(text)
    if not text or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a time; write e.g. 2h, 90m, 1h30m or 45s")
    h, m, s = (float(g or 0) for g in match.groups())
    return 3600 * h + 60 * m + s


def _relaunch(args: argparse.Namespace) -> bool:
    """With ``--gpus N > 1`` outside torchrun, replace this process by ``torchrun --nproc-per-node N``."""
    if args.gpus < 1:
        raise ConfigError(f"--gpus {args.gpus} is not a number of GPUs; give 1 or more")
    if args.gpus == 1 or "LOCAL_RANK" in os.environ:
        return False
    import torch

    available = torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    if available < args.gpus:
        raise ConfigError(f"--gpus {args.gpus} asks for more accelerators than this machine has ({available}); "
                          "lower --gpus")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.gpus),
               "-m", "ldmkit.cli.main", "fit", *args.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return True  # not reached


def _argv(args: argparse.Namespace) -> list[str]:
    """This command's own arguments, for the torchrun relaunch."""
    out = [args.folder, "--out", args.out, "--time", f"{args.time}s", "--gpus", str(args.gpus),
           "--device", args.device]
    for flag, value in (("--autoencoder", args.autoencoder), ("--init-from", args.init_from),
                        ("--stop-after", args.stop_after)):
        if value:
            out += [flag, value]
    if args.conditioning:
        out.append(f"--{args.conditioning}")
    for flag in ("dry_run", "restart"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    return out + (["--set", *args.overrides] if args.overrides else [])


def run(args: argparse.Namespace) -> int:
    args.argv = _argv(args)
    if _relaunch(args):
        return 0
    from ldmkit.fit.command import fit

    fit(folder=args.folder, out=Path(args.out), budget_seconds=args.time, conditioning=args.conditioning,
        gpus=args.gpus, device=args.device, autoencoder=args.autoencoder or "", init_from=args.init_from or "",
        overrides=list(args.overrides), dry_run=args.dry_run, restart=args.restart, stop_after=args.stop_after)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder of images (sub-folders: classes; .txt beside an image or a "
                                       "manifest.csv/jsonl: captions)")
    parser.add_argument("--out", required=True, help="run directory RUN")
    cond = parser.add_mutually_exclusive_group()
    cond.add_argument("--captions", dest="conditioning", action="store_const", const="captions",
                      help="condition on captions (every image must have one)")
    cond.add_argument("--labels", dest="conditioning", action="store_const", const="labels",
                      help="condition on class labels (sub-folders or a manifest label column)")
    cond.add_argument("--unconditional", dest="conditioning", action="store_const", const="none",
                      help="condition on nothing (default: captions if every image has one, else labels if "
                           "every image has a class, else nothing)")
    parser.add_argument("--time", type=parse_time, default=parse_time("2h"), metavar="DURATION",
                        help="time budget, e.g. 2h, 90m, 1h30m (default 2h)")
    parser.add_argument("--gpus", type=int, default=1, metavar="N", help="train on N GPUs of this machine "
                        "(restarts itself under torchrun)")
    parser.add_argument("--autoencoder", default=None, metavar="DIR",
                        help="reuse this autoencoder model directory (checked against bicubic) instead of training one")
    parser.add_argument("--init-from", default=None, metavar="MODEL",
                        help="start the diffusion model from this LDM model directory's weights (its networks "
                             "and autoencoder are kept)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, write RUN/plan.json and stop")
    parser.add_argument("--restart", action="store_true", help="start RUN over when its plan has changed")
    parser.add_argument("--stop-after", default=None, metavar="STAGE",
                        choices=("autoencoder", "latents", "diffusion", "model", "evaluation"),
                        help="stop after this stage (rerun to continue)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="key.sub=value",
                        help="change the plan, e.g. --set ldm.steps=2000 unet.model_channels=64 (keys of the plan "
                             "in RUN/plan.json)")
