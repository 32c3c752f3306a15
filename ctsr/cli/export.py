"""``ctsr export``: a stage-2 checkpoint as one ``.safetensors`` file (:func:`ctsr.models.export.export_checkpoint`);
this module is its command line."""
from __future__ import annotations

import argparse

from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr export",
        "Write a stage-2 checkpoint as one safetensors file (stage-1 LoRA + stage-2 LoRA + the config that rebuilds "
        "it), loadable with ControllableSR.load — no Lightning needed.")
    p.add_argument("ckpt", help="stage-2 checkpoint (runs/<name>/checkpoints/last.ckpt), or the run folder "
                   "runs/<name> (its newest checkpoint by recorded step)")
    p.add_argument("out", help="output .safetensors file")
    options.add_base_overrides(p, where="checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--half", action="store_true",
                   help="store the weights in float16 (half the size; loaded back into float32)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.models.export import export_checkpoint

    return export_checkpoint(**vars(args))
