"""Evaluation metrics (DESIGN.md §8): PSNR, SSIM, LPIPS (Alex), DISTS, FID, NIQE, MUSIQ, MANIQA, CLIPIQA with
OSEDiff's protocol (pyiqa's metrics and settings), plus LPIPS-VGG as ``lpips_vgg``.

``MetricSuite`` holds one DDP-safe torchmetrics ``Metric`` per column; weight files are checked before anything is
built (``weight_files``); ``download_weights`` fetches them on a connected machine.
"""
from __future__ import annotations

from collections.abc import Sequence

from ctsr.metrics.functional import prepare, psnr, quantize_8bit, rgb_to_y, ssim, ssim_levels
from ctsr.metrics.image_metrics import FID, ImageMean
from ctsr.metrics.suite import (
    DEFAULT_METRICS,
    DISPLAY_NAMES,
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    NO_REFERENCE,
    MetricSuite,
    column_name,
    protocol_line,
)
from ctsr.metrics.weight_files import REQUIRED_FILES, check_weights, missing_files


def download_weights(metrics: Sequence[str] = DEFAULT_METRICS) -> None:
    """On a connected machine: let each library download what ``metrics`` need into its cache, then check."""
    import torchvision

    from ctsr.checkpoints import weights_only_loads
    from ctsr.metrics.networks import build_fid_features, build_scorer

    if "lpips_vgg" in metrics:
        with weights_only_loads("metric 'lpips_vgg' weights"):  # the downloaded file is read as tensors only
            torchvision.models.vgg16(weights="IMAGENET1K_V1")  # build_lpips only reads the cache
    for name in metrics:
        if name == "fid":
            build_fid_features("pretrained")
        elif name not in ("psnr", "ssim"):  # pyiqa's LPIPS-Alex downloads AlexNet and its heads itself
            build_scorer(name, "pretrained")
    check_weights(list(metrics))


__all__ = [
    "DEFAULT_METRICS",
    "DISPLAY_NAMES",
    "FID",
    "HIGHER_IS_BETTER",
    "METRIC_NAMES",
    "NO_REFERENCE",
    "REQUIRED_FILES",
    "ImageMean",
    "MetricSuite",
    "check_weights",
    "column_name",
    "download_weights",
    "missing_files",
    "prepare",
    "protocol_line",
    "psnr",
    "quantize_8bit",
    "rgb_to_y",
    "ssim",
    "ssim_levels",
]
