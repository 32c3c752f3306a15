"""``ctsr score``: score any folder of SR images with the suite's protocol (OSEDiff's, i.e. pyiqa's metrics) and
write the run tables' format, so another method's released outputs stand in the same table as CTSR's sweep.

    ctsr score results/osediff/RealSR datasets/RealSR/test_HR --out results/RealSR --name OSEDiff
    ctsr score runs/eval/images/test/t=0.2 datasets/RealSR/test_HR --out results/RealSR --name CTSR --t 0.2
    ctsr score my_outputs/ --metrics niqe musiq maniqa clipiqa --out results/mine     # no HR: no-reference only

SR and HR files are paired by name as the paired test sets are (``ctsr.data.datasets.pair_key``: the stem without
``_HR``/``_LR4``/``_x4``… markers, case-insensitive); every HR needs its SR and every SR its HR, and the two images
of a pair must have the same size (else an error names both files). Images are scored one at a time at full size;
FID is between the SR set and the HR set. The table in ``--out`` (``metrics.md/csv/json``) gets one row per
(``--name``, ``--t``); a row of the same name and t is replaced, other rows are kept when they were scored with
the same protocol settings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ctsr.checkpoints import check_writable
from ctsr.data.datasets import pair_key
from ctsr.data.images import IMAGE_EXTENSIONS, UnreadableImage, list_images, read_image
from ctsr.errors import ConfigError, DataError, check, shown
from ctsr.evaluation.tables import Row, Table, read_table, write_table
from ctsr.metrics import DEFAULT_METRICS, METRIC_NAMES, NO_REFERENCE, MetricSuite


def _keyed(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ConfigError(f"{what}: folder '{folder}' does not exist")
    files = list_images(folder)
    if not files:
        raise ConfigError(f"{what}: no images in '{folder}' (extensions {', '.join(IMAGE_EXTENSIONS)})")
    keyed: dict[str, Path] = {}
    for f in files:
        k = pair_key(f)
        if k in keyed:
            raise DataError(f"{what}: '{keyed[k]}' and '{f}' have the same name key '{k}'; keep one of them")
        keyed[k] = f
    return keyed


def pair_files(sr_dir: str | Path, hr_dir: str | Path) -> list[tuple[Path, Path]]:
    """[(sr, hr)] matched by :func:`pair_key`, sorted by name; any file left without its partner is an error."""
    sr, hr = _keyed(Path(sr_dir), "SR_DIR"), _keyed(Path(hr_dir), "HR_DIR")
    no_sr, no_hr = sorted(set(hr) - set(sr)), sorted(set(sr) - set(hr))
    if no_sr or no_hr:
        parts = []
        if no_sr:
            parts.append(f"{len(no_sr)} HR image(s) without an SR image, e.g. '{hr[no_sr[0]]}'")
        if no_hr:
            parts.append(f"{len(no_hr)} SR image(s) without an HR image, e.g. '{sr[no_hr[0]]}'")
        raise DataError(f"SR_DIR '{sr_dir}' and HR_DIR '{hr_dir}' do not pair up by name: " + "; ".join(parts))
    return [(sr[k], hr[k]) for k in sorted(sr)]


def _read(path: Path) -> torch.Tensor:
    try:
        return read_image(path)[None]
    except UnreadableImage as err:
        raise DataError(f"image unreadable: {err}") from None


def score_folder(sr_dir: str | Path, hr_dir: str | Path | None = None, metrics: list[str] | tuple[str, ...] | None = None,
                 color_space: str = "y", crop_border: int = 0, weights: str = "pretrained",
                 device: str | torch.device = "cpu") -> tuple[dict[str, float], MetricSuite, int]:
    """({metric: mean over images}, the suite, number of images) for the SR images of ``sr_dir`` against
    ``hr_dir`` (None: no-reference metrics only)."""
    if metrics is None:
        metrics = list(DEFAULT_METRICS) if hr_dir is not None else list(NO_REFERENCE)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    check(not unknown, "--metrics", f"unknown {unknown}; choose from {list(METRIC_NAMES)}")
    if hr_dir is None:
        needs = [m for m in metrics if m not in NO_REFERENCE]
        check(not needs, "--metrics", f"{needs} need HR images: give HR_DIR, or score only the no-reference "
                                      f"metrics {list(NO_REFERENCE)}")
        pairs = [(f, None) for f in sorted(_keyed(Path(sr_dir), "SR_DIR").values())]
    else:
        pairs = pair_files(sr_dir, hr_dir)
    suite = MetricSuite(metrics, color_space, crop_border, weights).to(device)  # weights checked before reading
    for sr_path, hr_path in pairs:
        sr = _read(sr_path).to(device)
        hr = None if hr_path is None else _read(hr_path).to(device)
        if hr is not None and sr.shape != hr.shape:
            raise DataError(f"size mismatch: SR '{sr_path}' is {tuple(sr.shape[-2:])}, HR '{hr_path}' is "
                            f"{tuple(hr.shape[-2:])} (height, width)")
        suite.update(sr, hr)
    return suite.compute(), suite, len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ctsr score",
        description="Score a folder of SR images with the suite's protocol (OSEDiff's test_metrics.py: pyiqa) and "
                    "add the row to the table in --out.",
    )
    parser.add_argument("sr_dir", metavar="SR_DIR", help="folder of SR images (searched recursively)")
    parser.add_argument("hr_dir", metavar="HR_DIR", nargs="?", default=None,
                        help="folder of HR images, paired by name; leave out for no-reference metrics only")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help=f"metric names (default with HR_DIR: {' '.join(DEFAULT_METRICS)}; without: "
                             f"{' '.join(NO_REFERENCE)}); lpips_vgg on request")
    parser.add_argument("--out", required=True, help="folder of the table (metrics.md/csv/json), created if needed")
    parser.add_argument("--name", default=None, help="the row's method name (default: SR_DIR's folder name)")
    parser.add_argument("--t", type=float, default=None, help="the row's t (a CTSR output folder of one t)")
    parser.add_argument("--split", default=None, help="what was scored, e.g. RealSR-test (recorded in the table)")
    parser.add_argument("--color-space", default="y", choices=("y", "rgb"))
    parser.add_argument("--crop-border", type=int, default=0)
    parser.add_argument("--metric-weights", default="pretrained", choices=("pretrained", "random"),
                        help="random: test-only networks with random weights (scores meaningless)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--stem", default="metrics", help="the table's file name (metrics)")
    args = parser.parse_args(argv)
    from ctsr.inference.upscale import resolve_device

    name = args.name or Path(args.sr_dir).resolve().name
    check(bool(name) and "," not in name, "--name", f"a non-empty name without commas, got {name!r}")
    check(args.t is None or 0 <= args.t <= 1, "--t", f"must lie in [0, 1], got {args.t}")
    check_writable(args.out, "--out")  # a read-only or unwritable table folder fails now, not after the scoring
    values, suite, n = score_folder(args.sr_dir, args.hr_dir, args.metrics, args.color_space, args.crop_border,
                                    args.metric_weights, resolve_device(args.device))
    settings = {"color_space": suite.color_space, "crop_border": suite.crop_border, "weights": suite.weights,
                "quantize": suite.quantize}
    note = f"{name}{'' if args.t is None else f' (t={args.t:g})'}: {n} images of '{args.sr_dir}', `ctsr score`."
    new = Table([Row(name, args.t, values)], settings, f"metrics of {name}", [note], split=args.split)
    existing = read_table(args.out, args.stem)
    table = new if existing is None else existing.merge(new)
    if existing is not None:
        table.title = existing.title
    paths = write_table(args.out, table, args.stem)
    print(f"{shown(name)}" + ("" if args.t is None else f" t={args.t:g}") + f" ({n} images): "
          + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    print(f"protocol: {suite.protocol()}")
    print(f"table: {shown(paths[1])}", file=sys.stderr)
    return 0
