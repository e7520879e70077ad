"""``ldm report RUN``: rebuild RUN/report.html from what a training run directory holds."""

from __future__ import annotations

import argparse

HELP = "write RUN/report.html: curves, image grids, settings and hardware of a training run"
DESCRIPTION = ("Build one static page of a training run (the train.out of `ldm train autoencoder|diffusion`): "
               "loss, learning-rate and throughput plots, the latest image grids, the settings of every start and "
               'the hardware it ran on. Readable offline. Needs the report extra: pip install "ldmkit[report]".')


def run(args: argparse.Namespace) -> int:
    from ldmkit.report import write_report

    page = write_report(args.run)
    print(f"report written to {page}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run directory (train.out)")
