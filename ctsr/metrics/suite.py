"""The paper's metric suite: one torchmetrics ``Metric`` per column, updated with (SR, HR) batches.

Columns, in the paper's order: PSNR↑ SSIM↑ LPIPS↓ DISTS↓ FID↓ NIQE↓ MUSIQ↑ MANIQA↑ CLIPIQA↑ (DESIGN.md §8).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from ctsr.errors import check
from ctsr.metrics import image_metrics as im
from ctsr.metrics.functional import ColorSpace, quantize_8bit
from ctsr.metrics.networks import Fidelity, Weights, build_fid_features, build_scorer
from ctsr.metrics.weight_files import check_weights

METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa")
DEFAULT_METRICS: tuple[str, ...] = METRIC_NAMES
DISPLAY_NAMES: dict[str, str] = {
    "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID",
    "niqe": "NIQE", "musiq": "MUSIQ", "maniqa": "MANIQA", "clipiqa": "CLIPIQA",
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True, "ssim": True, "lpips": False, "dists": False, "fid": False,
    "niqe": False, "musiq": True, "maniqa": True, "clipiqa": True,
}
_PROTOCOL = {
    "lpips": "LPIPS-VGG", "dists": "DISTS", "fid": "FID (SR set vs HR set, clean-fid Inception)", "niqe": "NIQE",
    "musiq": "MUSIQ (KonIQ)", "maniqa": "MANIQA (PIPAL)", "clipiqa": "CLIPIQA",
}


def column_name(name: str) -> str:
    """'psnr' -> 'PSNR↑', 'lpips' -> 'LPIPS↓'."""
    return DISPLAY_NAMES[name] + ("↑" if HIGHER_IS_BETTER[name] else "↓")


class MetricSuite(nn.Module):
    """The evaluation metrics of one model setting (e.g. one t of a sweep), accumulated over a data set.

    Args:
        metrics: which columns to compute (any order; results come in the paper's order).
        color_space: PSNR/SSIM on ``y`` (Y of BT.601 YCbCr, as BasicSR/OSEDiff) or on ``rgb``.
        crop_border: pixels cut from each side before PSNR/SSIM (OSEDiff: 0).
        weights: ``pretrained`` (the libraries' weight files, checked before anything is built) or ``random``
            (test-only: the same networks with random weights; scores are meaningless).
        quantize: round SR and HR to 8 bit first, so scores equal those of the saved PNGs.

    Every weight file missing for ``metrics`` raises one ``MissingWeightsError`` at construction, naming metric,
    file and folder. Nets are frozen and stay in eval mode; hold suites outside the LightningModule (in the
    callback) so their backbones stay out of checkpoints, and move them with ``.to(device)``.
    """

    def __init__(
        self,
        metrics: Sequence[str] = DEFAULT_METRICS,
        color_space: Literal["y", "rgb"] = "y",
        crop_border: int = 0,
        weights: Literal["pretrained", "random"] = "pretrained",
        quantize: bool = True,
    ) -> None:
        super().__init__()
        unknown = [m for m in metrics if m not in METRIC_NAMES]
        check(not unknown, "metrics", f"unknown {unknown}; choose from {list(METRIC_NAMES)}")
        check(len(metrics) > 0, "metrics", "select at least one metric")
        check(color_space in ("y", "rgb"), "color_space", f"must be 'y' or 'rgb', got {color_space!r}")
        check(isinstance(crop_border, int) and crop_border >= 0, "crop_border",
              f"must be an int >= 0, got {crop_border!r}")
        check(weights in ("pretrained", "random"), "weights", f"must be 'pretrained' or 'random', got {weights!r}")
        self._settings(tuple(m for m in METRIC_NAMES if m in metrics), color_space, crop_border, weights, quantize)
        if weights == "pretrained":
            check_weights(self.names)  # before building anything: offline, fail in seconds and list every file
        self.metrics = nn.ModuleDict({name: self._build(name) for name in self.names})
        self.train(False)

    def _settings(self, names: tuple[str, ...], color_space: ColorSpace, crop_border: int, weights: Weights,
                  quantize: bool) -> None:
        self.names = names
        self.color_space, self.crop_border, self.weights, self.quantize = color_space, crop_border, weights, quantize
        self.higher_is_better = {n: HIGHER_IS_BETTER[n] for n in names}
        self.columns = {n: column_name(n) for n in names}

    def _build(self, name: str) -> Metric:
        if name == "fid":
            return im.FID(build_fid_features(self.weights))
        cls = getattr(im, DISPLAY_NAMES[name])
        if name in ("psnr", "ssim"):
            return cls(Fidelity(name, self.color_space, self.crop_border))
        return cls(build_scorer(name, self.weights))

    @torch.no_grad()
    def update(self, sr: Tensor, hr: Tensor) -> None:
        """sr, hr: (B, 3, H, W) in [0, 1] (both clamped), same size. Scores run in float32, outside autocast."""
        if sr.shape != hr.shape or sr.ndim != 4 or sr.shape[1] != 3:
            raise ValueError(f"sr and hr must both be (B, 3, H, W); got {tuple(sr.shape)} and {tuple(hr.shape)}")
        for name, metric in self.metrics.items():  # check before any state changes
            min_size = getattr(getattr(metric, "scorer", None), "min_size", 0)
            if min(sr.shape[-2:]) < min_size:
                raise ValueError(
                    f"metric '{name}' needs images of at least {min_size}x{min_size} pixels, got "
                    f"{tuple(sr.shape[-2:])}; leave '{name}' out of `metrics` for smaller images."
                )
        sr, hr = sr.float().clamp(0, 1), hr.float().clamp(0, 1)
        if self.quantize:
            sr, hr = quantize_8bit(sr), quantize_8bit(hr)
        with torch.autocast(device_type=sr.device.type, enabled=False):
            for metric in self.metrics.values():
                metric.update(sr, hr)

    def compute(self) -> dict[str, float]:
        """{name: value} in the paper's column order (synchronised across DDP ranks by torchmetrics)."""
        return {name: float(self.metrics[name].compute()) for name in self.names}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def clone(self) -> MetricSuite:
        """The same suite with empty states, on the same device, sharing the frozen networks (one per t value)."""
        other = MetricSuite.__new__(MetricSuite)
        nn.Module.__init__(other)
        other._settings(self.names, self.color_space, self.crop_border, self.weights, self.quantize)
        other.metrics = nn.ModuleDict({name: m.fresh() for name, m in self.metrics.items()})
        return other.train(False)

    def protocol(self) -> str:
        """One line to print beside every table, e.g. 'PSNR/SSIM on Y (BT.601), crop border 0; LPIPS-VGG; ...;
        images rounded to 8 bit'."""
        parts = []
        if "psnr" in self.names or "ssim" in self.names:
            space = "Y (BT.601)" if self.color_space == "y" else "RGB"
            parts.append(f"PSNR/SSIM on {space}, crop border {self.crop_border}")
        parts += [_PROTOCOL[n] for n in self.names if n in _PROTOCOL]
        line = "; ".join(parts) + ("; images rounded to 8 bit" if self.quantize else "; float images")
        if self.weights == "random":
            line = "RANDOM WEIGHTS (test only, scores meaningless): " + line
        return line

    def train(self, mode: bool = True) -> MetricSuite:
        return super().train(False)  # metric networks stay in eval mode (e.g. MANIQA crops at random in train mode)

    def extra_repr(self) -> str:
        return self.protocol()
