"""``ctsr upscale``: super-resolve your own images ×4 with a trained CTSR model, at one or several control values t.

    ctsr upscale photo.jpg photo_sr.png --ckpt runs/stage2/ctsr.safetensors --t 0.3
    ctsr upscale photos/ photos_sr/ --ckpt ctsr.safetensors --t 0 0.5 1     # photos_sr/<name>_t0.5.png, …

The work is :func:`ctsr.inference.upscale.upscale_paths`; this module is its command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr upscale",
        "Super-resolve images ×4 with a trained CTSR model at one or several control values t "
        "(0 = realness end, 1 = fidelity end). Any image size (tiled); existing outputs are kept unless --overwrite.")
    p.add_argument("input", type=Path, help="an image file, or a folder (searched recursively)")
    p.add_argument("output", type=Path, help="output file (for one input file) or folder; never inside INPUT")
    options.add_ckpt(p)
    p.add_argument("--t", type=float, nargs="+", default=None, metavar="T",
                   help="control value(s) in [0, 1]; several write <name>_t<T>.<ext> each. Default: the t recorded "
                   "in the model file by `ctsr select-t` (printed), else 0")
    options.add_upscaler_options(p)
    p.add_argument("--format", default="png", choices=["png", "keep"],
                   help="format of files written into a folder: png (default) or keep the input's")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality when writing those formats (default 95)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.inference.upscale import upscale_paths

    return upscale_paths(**vars(args))
