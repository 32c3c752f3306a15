"""``ctsr push``: publish a trained model on the Hugging Face Hub with a generated model card
(:func:`ctsr.models.hub.publish`); this module is its command line."""
from __future__ import annotations

import argparse
from pathlib import Path

from ctsr.choices import SD21_BASE_LICENSE
from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr push",
        "Publish a trained CTSR model on the Hugging Face Hub: the exported file, a config.json and a generated "
        "model card (base model, OSEDiff file, teachers, training steps, the run's t-sweep table, the metric "
        "protocol, the licence). Load it back with --ckpt owner/name.")
    p.add_argument("file", help="an exported .safetensors (`ctsr export`) or a stage-2 .ckpt")
    p.add_argument("repo_id", help="the Hub repo, owner/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", "--branch", dest="revision", default=None,
                   help="upload to this branch (created from main if missing); default main")
    p.add_argument("--license", default=SD21_BASE_LICENSE,
                   help=f"licence field of the model card (default {SD21_BASE_LICENSE}, SD 2.1-base's)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--token", default=None, help="Hub token (default: the one of `hf auth login`, or HF_TOKEN)")
    p.add_argument("--dry-run", action="store_true", help="write the folder (see --out) and upload nothing")
    p.add_argument("--out", type=Path, default=None,
                   help="write the folder here instead of uploading (implies --dry-run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.models.hub import publish

    return publish(**vars(args))
