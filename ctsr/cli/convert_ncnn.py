"""``ctsr convert-ncnn``: Real-ESRGAN's RRDBNet from ncnn files to BasicSR's ``.pth`` layout
(:func:`ctsr.models.ncnn.write_rrdbnet_pth`); this module is its command line."""
from __future__ import annotations

import argparse

from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr convert-ncnn",
        "Convert a Real-ESRGAN RRDBNet ×4 model from ncnn files (.param + .bin) to a BasicSR-layout .pth "
        "({'params_ema': …}) that spandrel and `AnchoredTeacher(sr_model: FILE)` load. Files of another "
        "architecture are refused.")
    p.add_argument("param", help="the ncnn .param file (e.g. REALESRGAN_X4PLUS_UP4X.param)")
    p.add_argument("bin", help="the ncnn .bin file beside it")
    p.add_argument("out", help="the .pth to write (e.g. weights/RealESRGAN_x4plus.pth)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.models.ncnn import write_rrdbnet_pth

    arch = write_rrdbnet_pth(args.param, args.bin, args.out)
    print(f"wrote '{args.out}': RRDBNet ×{arch['scale']}, {arch['num_block']} blocks, {arch['num_feat']} features, "
          f"growth {arch['num_grow_ch']}")
    return 0
