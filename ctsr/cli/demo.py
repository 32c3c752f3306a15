"""``ctsr demo``: a local web page (gradio) with the control value t as a slider (:mod:`ctsr.inference.demo`); this
module is its command line. The upscaling options are those of ``ctsr upscale`` (:mod:`ctsr.cli.options`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ctsr.choices import DEFAULT_MAX_PIXELS
from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr demo",
        "A local web page with a t slider (0 = realness end, 1 = fidelity end): upload an image, see "
        "the LR and the ×4 result beside the bicubic upscale; moving the slider only decodes (z0 and the velocity "
        "are computed once per upload). Tiling, colour correction and their defaults are those of `ctsr upscale`.")
    options.add_ckpt(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest accepted upload in input pixels, width × height (default {DEFAULT_MAX_PIXELS} = "
                   "1024²); larger ones are refused with a message")
    p.add_argument("--t", type=float, default=None, dest="initial_t", metavar="T",
                   help="the slider's start (default: the model's selected t, else 0.5); with --screenshot: where "
                   "the slider is moved to (default 0.7)")
    options.add_upscaler_options(p.add_argument_group("upscaling (as `ctsr upscale`, same defaults)"))
    shot = p.add_argument_group("screenshot (docs; needs playwright and chromium)")
    shot.add_argument("--screenshot", type=Path, default=None, metavar="PNG",
                      help="do not serve: open the page in headless Chromium, upload --image, move the slider to "
                      "--t, write a screenshot of the page to PNG, exit")
    shot.add_argument("--image", type=Path, default=None, help="the image uploaded for --screenshot")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.inference.demo import serve

    return serve(**vars(args))
