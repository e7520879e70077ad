"""Argument helpers shared by the command groups."""

from __future__ import annotations

import argparse
from typing import Callable


def add_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command group (``ldm data``) whose verbs are added to the returned sub-parsers."""
    group = subparsers.add_parser(name, help=help, description=help)
    group.set_defaults(group_parser=group, handler=None)
    return group.add_subparsers(dest="verb", metavar="<verb>")


def add_verb(verbs: argparse._SubParsersAction, name: str, help: str,
             handler: Callable[[argparse.Namespace], int | None]) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, group: str) -> None:
    """``--config PRESET|FILE`` and trailing ``key.sub=value`` overrides."""
    parser.add_argument("--config", default=None,
                        help=f"a preset name from configs/{group}/ or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override config values, e.g. train.lr=1e-4 data.resolution=64")
