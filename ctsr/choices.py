"""The named choices and defaults of the user commands' options, importable without torch.

The command-line parsers (``ctsr/cli``) read them to build ``--help`` without loading torch; the library modules
that act on them import them from here, so a choice is spelled once: precisions (:mod:`ctsr.inference.upscale`),
tile normalisation (:mod:`ctsr.inference.tiling`), colour fixes (:mod:`ctsr.inference.color`), prompt modes
(:mod:`ctsr.models.prompting`), metric names (:mod:`ctsr.metrics.suite`), t-selection rules
(:mod:`ctsr.evaluation.select_t`), the model card's licence (:mod:`ctsr.models.hub`), the demo's upload limit.
"""
from __future__ import annotations

PRECISION_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")  # "auto" besides: bf16 on CUDA, fp32 on the CPU
SHARED_NORMS: tuple[str, ...] = ("unet", "all", "none")  # whose tiles share each image's GroupNorm statistics
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")
PROMPTINGS: tuple[str, ...] = ("model", "fixed", "dape")

METRIC_NAMES: tuple[str, ...] = (
    "psnr", "ssim", "lpips", "lpips_vgg", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa",
)
DEFAULT_METRICS: tuple[str, ...] = tuple(m for m in METRIC_NAMES if m != "lpips_vgg")
NO_REFERENCE: tuple[str, ...] = ("niqe", "musiq", "maniqa", "clipiqa")

SELECTION_RULES: tuple[str, ...] = ("psnr-drop", "weighted")
SWEEP_METHOD = "CTSR"  # the method name of the t-sweep rows in the metric tables
SD21_BASE_LICENSE = "openrail++"  # CreativeML Open RAIL++-M: SD 2.1-base's licence, inherited by models built on it
DEFAULT_MAX_PIXELS = 1024 * 1024  # the demo's largest upload, LR pixels (w × h): a 1024² input becomes a 4096² output
