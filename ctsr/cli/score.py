"""``ctsr score``: score any folder of SR images with the suite's protocol into the run tables' format
(:func:`ctsr.evaluation.score.score_to_table`); this module is its command line."""
from __future__ import annotations

import argparse

from ctsr.choices import DEFAULT_METRICS, NO_REFERENCE
from ctsr.cli import options


def build_parser() -> argparse.ArgumentParser:
    p = options.parser(
        "ctsr score",
        "Score a folder of SR images with the suite's protocol (OSEDiff's test_metrics.py: pyiqa) and add the row "
        "to the table in --out.")
    p.add_argument("sr_dir", metavar="SR_DIR", help="folder of SR images (searched recursively)")
    p.add_argument("hr_dir", metavar="HR_DIR", nargs="?", default=None,
                   help="folder of HR images, paired by name; leave out for no-reference metrics only")
    p.add_argument("--metrics", nargs="+", default=None,
                   help=f"metric names (default with HR_DIR: {' '.join(DEFAULT_METRICS)}; without: "
                        f"{' '.join(NO_REFERENCE)}); lpips_vgg on request")
    p.add_argument("--out", required=True, help="folder of the table (metrics.md/csv/json), created if needed")
    p.add_argument("--name", default=None, help="the row's method name (default: SR_DIR's folder name)")
    p.add_argument("--t", type=float, default=None,
                   help="the row's t (a CTSR output folder of one t); a folder of `ctsr upscale` outputs "
                        "<name>_t<T>: scores the files of this t, paired by the name without _t<T>")
    p.add_argument("--sr-suffix", default=None,
                   help="pair SR files by their name without this suffix (only files that carry it), e.g. _sr")
    p.add_argument("--split", default=None, help="what was scored, e.g. RealSR-test (recorded in the table)")
    p.add_argument("--color-space", default="y", choices=("y", "rgb"),
                   help="PSNR/SSIM on the Y channel (default, as OSEDiff) or on RGB")
    p.add_argument("--crop-border", type=int, default=0, help="pixels cropped off each side before PSNR/SSIM (0)")
    p.add_argument("--metric-weights", default="pretrained", choices=("pretrained", "random"),
                   help="random: test-only networks with random weights (scores meaningless)")
    options.add_device(p)
    options.add_table_stem(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctsr.evaluation.score import score_to_table

    return score_to_table(**vars(args))
