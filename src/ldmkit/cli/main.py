"""The ``ldm`` command: ``ldm <group> <verb> [options]``.

Each group lives in its own module with an ``add_parser(subparsers)`` function; handlers import the
heavy parts of the library lazily so ``ldm --help`` stays instant. A user mistake (any
:class:`~ldmkit.errors.LdmkitError`) is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ldmkit import __version__
from ldmkit.errors import LdmkitError

# Modules of ldmkit.cli, each adding one command group; the order is the order of `ldm --help`.
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
        importlib.import_module(f"ldmkit.cli.{name}").add_parser(subparsers)
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


if __name__ == "__main__":
    sys.exit(main())
