"""The paper's metric suite: one torchmetrics ``Metric`` per column, updated with (SR, HR) batches.

Columns, in the paper's order: PSNR↑ SSIM↑ LPIPS↓ DISTS↓ FID↓ NIQE↓ MUSIQ↑ MANIQA↑ CLIPIQA↑ (DESIGN.md §8), with
OSEDiff's protocol (its ``test_metrics.py``: pyiqa's metrics with their default settings; PSNR/SSIM on Y). LPIPS-VGG,
the network the suite trains with, is available as the extra column ``lpips_vgg`` (not in the default set: it is
not what published tables report).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

# the metric names are spelled once in ctsr.choices (the command lines read them without torch):
# DEFAULT_METRICS: OSEDiff's test_metrics.py set (and the paper's columns), every metric but LPIPS-VGG;
# NO_REFERENCE: the metrics that score SR images alone (``ctsr score SR_DIR`` without HR_DIR)
from ctsr.choices import DEFAULT_METRICS, METRIC_NAMES, NO_REFERENCE
from ctsr.errors import check
from ctsr.metrics import image_metrics as im
from ctsr.metrics.functional import ColorSpace, quantize_8bit
from ctsr.metrics.networks import Fidelity, Weights, build_fid_features, build_scorer
from ctsr.metrics.weight_files import check_weights

DISPLAY_NAMES: dict[str, str] = {
    "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "lpips_vgg": "LPIPS-VGG", "dists": "DISTS", "fid": "FID",
    "niqe": "NIQE", "musiq": "MUSIQ", "maniqa": "MANIQA", "clipiqa": "CLIPIQA",
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True, "ssim": True, "lpips": False, "lpips_vgg": False, "dists": False, "fid": False,
    "niqe": False, "musiq": True, "maniqa": True, "clipiqa": True,
}
# The smallest side each metric's network accepts (measured on pyiqa's architectures: AlexNet, VGG16 and CLIP RN50
# pool an image to nothing below these; SSIM's 11×11 window; NIQE's 96×96 blocks). Smaller images are skipped
# for that metric (MetricSuite.update), never an error mid-run.
MIN_SIZES: dict[str, int] = {"ssim": 11, "lpips": 31, "lpips_vgg": 16, "niqe": 96, "clipiqa": 31}
_PROTOCOL = {
    "lpips": "LPIPS (pyiqa lpips: AlexNet, v0.1)", "lpips_vgg": "LPIPS-VGG (lpips package, v0.1)",
    "dists": "DISTS (pyiqa)", "fid": "FID (SR set vs HR set, clean-fid Inception as pyiqa fid)",
    "niqe": "NIQE (pyiqa)", "musiq": "MUSIQ (pyiqa musiq: KonIQ)", "maniqa": "MANIQA (pyiqa maniqa-pipal)",
    "clipiqa": "CLIPIQA (pyiqa clipiqa: RN50)",
}


def protocol_line(names: Sequence[str], color_space: ColorSpace = "y", crop_border: int = 0,
                  weights: Weights = "pretrained", quantize: bool = True) -> str:
    """The protocol line of a table with these metric columns and settings (see :meth:`MetricSuite.protocol`)."""
    parts = []
    if "psnr" in names or "ssim" in names:
        space = "Y (BT.601, pyiqa ycbcr" if color_space == "y" else "RGB (pyiqa"
        parts.append(f"PSNR/SSIM on {space}; SSIM on 8-bit levels, cs clipped at 0), crop border {crop_border}")
    parts += [_PROTOCOL[n] for n in METRIC_NAMES if n in names and n in _PROTOCOL]
    if "niqe" in names and weights == "pretrained":
        from ctsr.metrics.weight_files import NIQE_PYIQA

        if not NIQE_PYIQA.present():
            parts = [p + " with BasicSR's pristine parameters" if p == _PROTOCOL["niqe"] else p for p in parts]
    line = "OSEDiff test_metrics.py / pyiqa: " + "; ".join(parts)
    line += "; images rounded to 8 bit" if quantize else "; float images"
    if weights == "random":
        line = "RANDOM WEIGHTS (test only, scores meaningless): " + line
    return line


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

    def min_size(self, name: str) -> int:
        """The smallest image side ``name`` scores (its network's limit; PSNR/SSIM: after ``crop_border``)."""
        border = 2 * self.crop_border if name in ("psnr", "ssim") else 0
        scorer = getattr(self.metrics[name], "scorer", None) if name in self.metrics else None
        return max(MIN_SIZES.get(name, 1), getattr(scorer, "min_size", 0)) + border

    def too_small(self, height: int, width: int) -> list[str]:
        """The metrics of this suite that cannot score an image of this size."""
        return [n for n in self.names if min(height, width) < self.min_size(n)]

    def _settings(self, names: tuple[str, ...], color_space: ColorSpace, crop_border: int, weights: Weights,
                  quantize: bool) -> None:
        self.names = names
        self.color_space, self.crop_border, self.weights, self.quantize = color_space, crop_border, weights, quantize
        self.skipped: dict[str, int] = {}  # images each metric passed over (too small for it: min_size)
        self.scored: dict[str, int] = {}   # images each metric scored
        self.higher_is_better = {n: HIGHER_IS_BETTER[n] for n in names}
        self.columns = {n: column_name(n) for n in names}

    def _build(self, name: str) -> Metric:
        if name == "fid":
            return im.FID(build_fid_features(self.weights))
        cls = getattr(im, DISPLAY_NAMES[name].replace("-", "_"))
        if name in ("psnr", "ssim"):
            return cls(Fidelity(name, self.color_space, self.crop_border))
        return cls(build_scorer(name, self.weights))

    @property
    def full_reference(self) -> bool:
        """Whether any metric of the suite needs the HR image."""
        return any(n not in NO_REFERENCE for n in self.names)

    @torch.no_grad()
    def update(self, sr: Tensor, hr: Tensor | None = None) -> None:
        """sr, hr: (B, 3, H, W) in [0, 1] (both clamped), same size; ``hr`` may be None when every metric is
        no-reference. Scores run in float32, outside autocast."""
        if hr is None:
            if self.full_reference or sr.ndim != 4 or sr.shape[1] != 3:
                needs = [n for n in self.names if n not in NO_REFERENCE]
                raise ValueError(f"sr must be (B, 3, H, W), and {needs} need the HR image too; got {tuple(sr.shape)}")
        elif sr.shape != hr.shape or sr.ndim != 4 or sr.shape[1] != 3:
            raise ValueError(f"sr and hr must both be (B, 3, H, W); got {tuple(sr.shape)} and {tuple(hr.shape)}")
        small = set(self.too_small(*sr.shape[-2:]))  # those metrics skip this batch (counted in `skipped`)
        for name in small:
            self.skipped[name] = self.skipped.get(name, 0) + sr.shape[0]
        sr = sr.float().clamp(0, 1)
        hr = None if hr is None else hr.float().clamp(0, 1)
        if self.quantize:
            sr = quantize_8bit(sr)
            hr = None if hr is None else quantize_8bit(hr)
        with torch.autocast(device_type=sr.device.type, enabled=False):
            for name, metric in self.metrics.items():
                if name not in small:
                    metric.update(sr, hr)
                    self.scored[name] = self.scored.get(name, 0) + sr.shape[0]

    def compute(self) -> dict[str, float]:
        """{name: value} in the paper's column order (synchronised across DDP ranks by torchmetrics); a metric
        that scored no image (every image too small for it: ``skipped``) is left out."""
        return {name: float(self.metrics[name].compute()) for name in self.names
                if self.scored.get(name, 0) > 0 or not self.skipped.get(name)}

    def skipped_note(self) -> str | None:
        """One line on the metrics that skipped images too small for them, None when none did."""
        if not self.skipped:
            return None
        parts = [f"{n} (needs {self.min_size(n)}×{self.min_size(n)}: {k} image(s) skipped, "
                 f"{self.scored.get(n, 0)} scored)" for n, k in self.skipped.items()]
        return "images too small for " + "; ".join(parts)

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.skipped, self.scored = {}, {}

    def subset(self, names: Sequence[str]) -> MetricSuite:
        """A suite of some of these metrics, with empty states, sharing the networks."""
        other = self.clone()
        kept = tuple(n for n in other.names if n in names)
        other._settings(kept, self.color_space, self.crop_border, self.weights, self.quantize)
        other.metrics = nn.ModuleDict({n: other.metrics[n] for n in kept})
        return other

    def clone(self) -> MetricSuite:
        """The same suite with empty states, on the same device, sharing the frozen networks (one per t value)."""
        other = MetricSuite.__new__(MetricSuite)
        nn.Module.__init__(other)
        other._settings(self.names, self.color_space, self.crop_border, self.weights, self.quantize)
        other.metrics = nn.ModuleDict({name: m.fresh() for name, m in self.metrics.items()})
        return other.train(False)

    def protocol(self) -> str:
        """One line to print beside every table, e.g. 'OSEDiff test_metrics.py / pyiqa: PSNR/SSIM on Y (BT.601,
        pyiqa ycbcr; SSIM on 8-bit Y levels, cs clipped at 0), crop border 0; LPIPS (pyiqa lpips: AlexNet, v0.1);
        ...; images rounded to 8 bit'."""
        return protocol_line(self.names, self.color_space, self.crop_border, self.weights, self.quantize)

    def train(self, mode: bool = True) -> MetricSuite:
        return super().train(False)  # metric networks stay in eval mode (e.g. MANIQA crops at random in train mode)

    def extra_repr(self) -> str:
        return self.protocol()
