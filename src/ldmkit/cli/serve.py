"""``ldm serve --model DIR [--host 127.0.0.1] [--port 7860] [--share] [--device auto]``: the web demo."""

from __future__ import annotations

import argparse

from ldmkit.cli.task_command import add_model_argument

HELP = "web demo of a model: generate, img2img, inpaint, upscale or synthesize in the browser"
DESCRIPTION = ("Serve a browser app for one model directory, with a tab per task the model supports (generation, "
               "image-to-image, inpainting, upscaling, semantic synthesis). Needs the ui extra: pip install "
               '"ldmkit[ui]". Nothing is sent anywhere unless --share is given.')


def run(args: argparse.Namespace) -> int:
    from ldmkit.serve.app import import_gradio

    import_gradio()  # a one-line error before the model loads when the extra is missing
    from ldmkit.serve.app import build_app, launch_app
    from ldmkit.serve.model import ServedModel

    model = ServedModel.load(args.model, device=args.device)
    demo = build_app(model)
    print(f"serving {model.describe()}")
    if args.share:
        print("--share: gradio's share servers relay the app through a temporary public link")
    launch_app(demo, host=args.host, port=args.port, share=args.share)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also make a temporary public link through gradio's share servers (off by default)")
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one, else the CPU), cpu, cuda "
                                                          "or cuda:N; on a GPU sampling runs under bf16 autocast")
