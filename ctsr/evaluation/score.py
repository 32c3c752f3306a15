"""``ctsr score``: score any folder of SR images with the suite's protocol (OSEDiff's, i.e. pyiqa's metrics) and
write the run tables' format, so another method's released outputs stand in the same table as CTSR's sweep.

    ctsr score results/osediff/RealSR datasets/RealSR/test_HR --out results/RealSR --name OSEDiff
    ctsr score runs/eval/images/test/t=0.2 datasets/RealSR/test_HR --out results/RealSR --name CTSR --t 0.2
    ctsr score my_outputs/ --metrics niqe musiq maniqa clipiqa --out results/mine     # no HR: no-reference only

SR and HR files are paired by name as the paired test sets are (``ctsr.data.datasets.pair_key``: the stem without
``_HR``/``_LR4``/``_x4``… markers, case-insensitive); every HR needs its SR and every SR its HR, and the two images
of a pair must have the same size (else an error names both files). ``ctsr upscale``'s outputs ``<name>_t<T>``
pair by the name without ``_t<T>`` (``--t T`` picks one t of a folder holding several; ``--sr-suffix S`` removes
any other suffix); how the files were paired is printed. Images are scored one at a time at full size; an image
smaller than a metric accepts (:data:`ctsr.metrics.suite.MIN_SIZES`) is skipped for that metric with one warning
line; FID is between the SR set and the HR set (2 pairs or more). The table in ``--out`` (``metrics.md/csv/json``) gets one row per
(``--name``, ``--t``); a row of the same name and t is replaced, other rows are kept when they were scored with
the same protocol settings.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ctsr.checkpoints import check_writable
from ctsr.data.datasets import pair_key
from ctsr.data.images import IMAGE_EXTENSIONS, UnreadableImage, list_images, read_image
from ctsr.errors import ConfigError, DataError, check, shown
from ctsr.evaluation.tables import Row, Table, read_table, write_table
from ctsr.metrics import DEFAULT_METRICS, METRIC_NAMES, NO_REFERENCE, MetricSuite

# `ctsr upscale … --t 0 0.5` writes <name>_t0.png, <name>_t0.5.png (ctsr.inference.upscale.t_suffix)
_T_SUFFIX = re.compile(r"_t(\d+(?:\.\d+)?(?:e-?\d+)?)$")


def _images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{what}: folder '{shown(folder)}' does not exist")
    files = list_images(folder)
    if not files:
        raise ConfigError(f"{what}: no images in '{shown(folder)}' (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _keyed(files: list[Path], what: str, suffix: str = "") -> dict[str, Path]:
    """{pair key: file}, the key of each stem without ``suffix`` (an SR suffix such as ``_t0.5``)."""
    keyed: dict[str, Path] = {}
    for f in files:
        k = pair_key(f.with_name(f.stem[: len(f.stem) - len(suffix)] + f.suffix) if suffix else f)
        if k in keyed:
            raise DataError(f"{what}: '{shown(keyed[k])}' and '{shown(f)}' have the same name key '{shown(k)}'; "
                            f"keep one of them")
        keyed[k] = f
    return keyed


def sr_suffix_of(files: list[Path], t: float | None = None, sr_suffix: str | None = None) -> tuple[str, str]:
    """(the suffix to remove from SR stems, how it was found): ``sr_suffix`` as given; ``_t<T>`` of ``t`` when the
    files carry it (``ctsr upscale`` outputs); the one ``_t<T>`` every file carries; else none. Files of several
    t without ``--t``: an error listing the t values. :func:`upscale_t` tells the t of such a suffix."""
    if sr_suffix is not None:
        return sr_suffix, f"SR suffix '{shown(sr_suffix)}' removed (--sr-suffix)"
    found = {}
    for f in files:
        m = _T_SUFFIX.search(f.stem)
        if m:
            found.setdefault(float(m.group(1)), m.group(0))
    if t is not None:
        suffix = f"_t{t:g}"
        if any(f.stem.endswith(suffix) for f in files):
            return suffix, f"SR suffix '{suffix}' removed (`ctsr upscale` outputs of --t {t:g})"
        return "", "by name"
    tagged = [f for f in files if _T_SUFFIX.search(f.stem)]
    if len(found) == 1 and len(tagged) == len(files):
        value, suffix = next(iter(found.items()))
        return suffix, f"SR suffix '{suffix}' removed (`ctsr upscale` outputs of t = {value:g})"
    if len(found) > 1:
        values = ", ".join(f"{v:g}" for v in sorted(found))
        raise ConfigError(f"SR_DIR holds `ctsr upscale` outputs of several t ({values}: <name>_t<T>): score one t "
                          f"at a time with --t T (its files are paired by the name without _t<T>), or give "
                          f"--sr-suffix")
    return "", "by name"


def upscale_t(suffix: str) -> float | None:
    """The t of a ``ctsr upscale`` suffix ``_t<T>``, None for any other suffix."""
    m = _T_SUFFIX.fullmatch(suffix) if suffix else None
    return float(m.group(1)) if m else None


def pair_files(sr_dir: str | Path, hr_dir: str | Path, t: float | None = None, sr_suffix: str | None = None
               ) -> list[tuple[Path, Path]]:
    """[(sr, hr)] matched by :func:`pair_key`, sorted by name (:func:`match_files`)."""
    return match_files(sr_dir, hr_dir, t, sr_suffix)[0]


def match_files(sr_dir: str | Path, hr_dir: str | Path, t: float | None = None, sr_suffix: str | None = None
                ) -> tuple[list[tuple[Path, Path]], str, str]:
    """([(sr, hr)] matched by :func:`pair_key`, sorted by name; how they were paired; the suffix removed from the SR
    names). SR stems may carry a suffix to remove first (:func:`sr_suffix_of`: ``--sr-suffix``, or ``ctsr
    upscale``'s ``_t<T>``); SR files without it are left out when there is one. Any HR image left without its SR
    image, or an SR image without its HR image, is an error naming an example."""
    sr_files, hr_files = _images(Path(sr_dir), "SR_DIR"), _images(Path(hr_dir), "HR_DIR")
    hr = _keyed(hr_files, "HR_DIR")
    if sr_suffix is None and t is None and set(_keyed(sr_files, "SR_DIR")) == set(hr):
        suffix, how = "", "by name"
    else:
        suffix, how = sr_suffix_of(sr_files, t, sr_suffix)
    chosen = [f for f in sr_files if f.stem.endswith(suffix)] if suffix else sr_files
    if suffix and not chosen:
        raise ConfigError(f"--sr-suffix: no SR file name in '{shown(sr_dir)}' ends in '{shown(suffix)}' (e.g. "
                          f"'{shown(sr_files[0].name)}')")
    sr = _keyed(chosen, "SR_DIR", suffix)
    no_sr, no_hr = sorted(set(hr) - set(sr)), sorted(set(sr) - set(hr))
    if no_sr or no_hr:
        parts = []
        if no_sr:
            parts.append(f"{len(no_sr)} HR image(s) without an SR image, e.g. '{shown(hr[no_sr[0]])}'")
        if no_hr:
            parts.append(f"{len(no_hr)} SR image(s) without an HR image, e.g. '{shown(sr[no_hr[0]])}'")
        raise DataError(f"SR_DIR '{shown(sr_dir)}' and HR_DIR '{shown(hr_dir)}' do not pair up {how}: "
                        + "; ".join(parts) + " (names pair without _HR/_LR4/_x4 markers; `ctsr upscale` outputs "
                        "<name>_t<T>: give --t T or --sr-suffix)")
    left = len(sr_files) - len(chosen)
    how = f"{how}" + (f"; {left} SR file(s) without it left out" if left else "")
    return [(sr[k], hr[k]) for k in sorted(sr)], how, suffix


def _read(path: Path) -> torch.Tensor:
    try:
        return read_image(path)[None]
    except UnreadableImage as err:
        raise DataError(f"image unreadable: {err}") from None


def score_folder(sr_dir: str | Path, hr_dir: str | Path | None = None, metrics: list[str] | tuple[str, ...] | None = None,
                 color_space: str = "y", crop_border: int = 0, weights: str = "pretrained",
                 device: str | torch.device = "cpu", t: float | None = None, sr_suffix: str | None = None,
                 warn=None) -> tuple[dict[str, float], MetricSuite, int]:
    """({metric: mean over images}, the suite, number of images) for the SR images of ``sr_dir`` against
    ``hr_dir`` (None: no-reference metrics only). ``t``/``sr_suffix``: which SR files, and how their names pair
    (:func:`pair_files`). An image smaller than a metric accepts is skipped for that metric (``suite.skipped``),
    FID needs 2 pairs or more; ``warn(line)`` is told of each (and of how the files were paired)."""
    warn = warn or (lambda line: None)
    if metrics is None:
        metrics = list(DEFAULT_METRICS) if hr_dir is not None else list(NO_REFERENCE)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    check(not unknown, "--metrics", f"unknown {unknown}; choose from {list(METRIC_NAMES)}")
    if hr_dir is None:
        needs = [m for m in metrics if m not in NO_REFERENCE]
        check(not needs, "--metrics", f"{needs} need HR images: give HR_DIR, or score only the no-reference "
                                      f"metrics {list(NO_REFERENCE)}")
        files = _images(Path(sr_dir), "SR_DIR")
        suffix, how = sr_suffix_of(files, t, sr_suffix) if (t is not None or sr_suffix is not None) else ("", "")
        pairs = [(f, None) for f in sorted(_keyed([f for f in files if f.stem.endswith(suffix)], "SR_DIR",
                                                   suffix).values())]
        if suffix and not pairs:
            raise ConfigError(f"no SR file name in '{shown(sr_dir)}' ends in '{shown(suffix)}'")
        if suffix:
            warn(f"scoring the {len(pairs)} SR image(s) whose names end in '{shown(suffix)}' ({how})")
    else:
        pairs, how, suffix = match_files(sr_dir, hr_dir, t, sr_suffix)
        warn(f"paired {len(pairs)} SR/HR image(s) {how}")
    suite = MetricSuite(metrics, color_space, crop_border, weights).to(device)  # weights checked before reading
    if "fid" in suite.names and len(pairs) < 2:
        check(len(suite.names) > 1, "--metrics", f"fid needs 2 image pairs or more, got {len(pairs)}")
        warn(f"fid needs 2 image pairs or more, got {len(pairs)}: no fid column")
        suite = suite.subset([m for m in suite.names if m != "fid"])
    suite.sr_suffix = suffix  # what the SR names carried (``ctsr upscale``'s _t<T>: the row's t, upscale_t)
    examples: dict[str, tuple[Path, tuple[int, int]]] = {}
    for sr_path, hr_path in pairs:
        sr = _read(sr_path).to(device)
        hr = None if hr_path is None else _read(hr_path).to(device)
        if hr is not None and sr.shape != hr.shape:
            raise DataError(f"size mismatch: SR '{shown(sr_path)}' is {tuple(sr.shape[-2:])}, HR '{shown(hr_path)}' "
                            f"is {tuple(hr.shape[-2:])} (height, width)")
        for name in suite.too_small(*sr.shape[-2:]):
            examples.setdefault(name, (sr_path, tuple(sr.shape[-2:])))
        suite.update(sr, hr)
    parts = []
    for name, count in suite.skipped.items():
        path, (h, w) = examples[name]
        side = suite.min_size(name)
        rest = f"the mean of the other {suite.scored[name]}" if suite.scored.get(name) else "no column"
        parts.append(f"{name} needs {side}×{side}: {count} of {len(pairs)} skipped (e.g. '{shown(path.name)}', "
                     f"{w}×{h}), {rest}")
    if parts:
        warn("images too small for some metrics are skipped for them: " + "; ".join(parts))
    return suite.compute(), suite, len(pairs)


def score_to_table(sr_dir: str | Path, hr_dir: str | Path | None = None, *, out: str | Path,
                   metrics: Sequence[str] | None = None, name: str | None = None, t: float | None = None,
                   sr_suffix: str | None = None, split: str | None = None, color_space: str = "y",
                   crop_border: int = 0, metric_weights: str = "pretrained", device: str | None = None,
                   stem: str = "metrics") -> int:
    """``ctsr score``: score ``sr_dir`` (against ``hr_dir``) and add the row (``name``, ``t``) to the table in
    ``out``; prints the row and the protocol. Returns 0. The arguments are the command's options
    (:mod:`ctsr.cli.score`)."""
    from ctsr.inference.upscale import resolve_device

    name = name or Path(sr_dir).resolve().name
    check(bool(name) and "," not in name, "--name", f"a non-empty name without commas, got {name!r}")
    check(t is None or 0 <= t <= 1, "--t", f"must lie in [0, 1], got {t}")
    check(crop_border >= 0, "--crop-border", f"must be ≥ 0, got {crop_border}")
    check(sr_suffix is None or sr_suffix != "", "--sr-suffix", "give a non-empty suffix")
    check_writable(out, "--out")  # a read-only or unwritable table folder fails now, not after the scoring
    existing = read_table(out, stem)  # a table ctsr did not write fails now too
    lines: list[str] = []

    def warn(line: str) -> None:
        lines.append(line)
        print(f"ctsr score: {line}" if line.startswith(("paired", "scoring")) else f"ctsr score: warning: {line}",
              file=sys.stderr)

    values, suite, n = score_folder(sr_dir, hr_dir, metrics, color_space, crop_border,
                                    metric_weights, resolve_device(device), t, sr_suffix, warn)
    if not values:
        raise DataError(f"no metric could score these images: {suite.skipped_note()}")
    if t is None and sr_suffix is None and upscale_t(suite.sr_suffix) is not None:
        t = upscale_t(suite.sr_suffix)  # the one t of a folder of `ctsr upscale` outputs: the row's t
    settings = {"color_space": suite.color_space, "crop_border": suite.crop_border, "weights": suite.weights,
                "quantize": suite.quantize}
    note = f"{name}{'' if t is None else f' (t={t:g})'}: {n} images of '{sr_dir}', `ctsr score`."
    if suite.skipped_note():
        note += f" {suite.skipped_note()}."
    new = Table([Row(name, t, values)], settings, f"metrics of {name}", [note], split=split)
    table = new if existing is None else existing.merge(new)
    if existing is not None:
        table.title = existing.title
    paths = write_table(out, table, stem)
    print(f"{shown(name)}" + ("" if t is None else f" t={t:g}") + f" ({n} images): "
          + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    print(f"protocol: {suite.protocol()}")
    print(f"table: {shown(paths[1])}", file=sys.stderr)
    return 0
