"""``ctsr bench``: speed and memory of one-step ×4 SR, the bare diffusers graph against the project's upscale path,
measured in the same run (:mod:`ctsr.inference.bench`); this module is its command line."""
from __future__ import annotations

import argparse

from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr bench",
        "Speed and memory of one-step ×4 SR: the bare diffusers graph against the project's upscale path, measured "
        "in the same run (ratios: an absolute time says little across machines).")
    p.add_argument("--size", default="sd21", choices=["sd21", "tiny"],
                   help="sd21 (default): SD 2.1-base architecture, random init; tiny: the test models (checks the "
                   "script)")
    options.add_device(p)
    options.add_precision(p)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per row, after warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per row (default 2; compiled rows: at least 2)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--t", type=float, nargs="+", default=[0.0, 0.5], dest="ts", metavar="T",
                   help="control values (default 0 0.5)")
    p.add_argument("--resolution", type=int, default=None, help="output side (default 512; tiny: 64)")
    p.add_argument("--large", type=int, default=None,
                   help="output side of the tiled large-image row, 0: skip (default 2048; tiny: 0)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None,
                   help="also the torch.compile rows (default on CUDA; on a CPU compiling takes minutes)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager rows only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.inference.bench import run_bench

    return run_bench(**vars(args))
