"""The ``ldm`` command: ``ldm <group> <verb> [options]``.

Each command lives in its own module of ``ldmkit.cli``: a single command defines ``HELP``, optionally
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args)``; a group of verbs (``ldm data check``) defines
``add_parser(subparsers)`` instead. Handlers import the heavy parts of the library lazily so ``ldm --help``
stays instant. A user mistake (any
:class:`~ldmkit.errors.LdmkitError`) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ldmkit import __version__
from ldmkit.errors import LdmkitError

# Modules of ldmkit.cli, each adding one command or group; the order is the order of `ldm --help`.
GROUP_MODULES: tuple[str, ...] = ("demo", "fit", "data", "assets", "train", "encode", "sample", "img2img", "inpaint",
                                   "synthesize", "upscale", "distill", "lora", "ema", "eval", "report", "serve",
                                   "convert", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldm",
        description="ldmkit: latent diffusion models (Rombach et al., CVPR 2022) — train, sample, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"ldmkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name in GROUP_MODULES:
        module = importlib.import_module(f"ldmkit.cli.{name}")
        if hasattr(module, "add_parser"):  # a group of verbs
            module.add_parser(subparsers)
            continue
        command = subparsers.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        command.set_defaults(handler=module.run)
        module.add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # A group without a verb (`ldm data`) prints that group's help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    try:
        return int(handler(args) or 0)
    except LdmkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _release_distributed()


def _release_distributed() -> None:
    # Under torchrun the process group must die before interpreter shutdown (release_wrappers says why).
    distributed = sys.modules.get("ldmkit.training.distributed")
    if distributed is not None:
        distributed.release_wrappers()


if __name__ == "__main__":
    sys.exit(main())
