"""``ctsr select-t``: choose t on a validation t sweep by a stated rule and record it in the model file
(:func:`ctsr.evaluation.select_t.select_and_record`); this module is its command line."""
from __future__ import annotations

import argparse

from ctsr.choices import SELECTION_RULES, SWEEP_METHOD
from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr select-t",
        "Choose t on a validation t-sweep table by a stated rule and record it in the model file.")
    p.add_argument("table", help="folder holding metrics.json (a `ctsr validate` run of the t sweep)")
    p.add_argument("--model", required=True, help="the exported .safetensors model file to record the t in")
    p.add_argument("--rule", default="psnr-drop", choices=SELECTION_RULES,
                   help="psnr-drop (default): the most realistic t within --max-psnr-drop dB of the fidelity end; "
                   "weighted: the best weighted sum of fidelity and realness scores")
    p.add_argument("--max-psnr-drop", type=float, default=0.3, help="psnr-drop: dB allowed below the fidelity end")
    p.add_argument("--fidelity-weight", type=float, default=0.5, help="weighted: weight of the fidelity score")
    p.add_argument("--method", default=SWEEP_METHOD, help=f"whose rows to choose from (default {SWEEP_METHOD})")
    p.add_argument("--split", default=None, help="name of the validation split in the record "
                   "(default: the table's folder and split)")
    options.add_table_stem(p)
    p.add_argument("--dry-run", action="store_true", help="print the choice, do not write the model file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.evaluation.select_t import select_and_record

    return select_and_record(**vars(args))
