"""torchmetrics ``Metric``s over a data set: the mean of a per-image score, and FID between the SR and HR sets.

Both keep only sums in their states (``dist_reduce_fx='sum'``), so DDP ranks merge by adding and memory does not
grow with the data set. ``fresh()`` returns the same metric with empty states that shares the (frozen) network, so a
t-sweep can hold one metric per t without copying backbones.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from ctsr.metrics.networks import CleanFIDInception


class ImageMean(Metric):
    """Mean over images of ``scorer(sr, hr) -> (B,)``: states ``total`` (float64 sum) and ``count``. One subclass
    per column below sets ``higher_is_better`` (torchmetrics makes it a class constant)."""

    is_differentiable = False
    full_state_update = False
    total: Tensor
    count: Tensor

    def __init__(self, scorer: nn.Module, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scorer = scorer
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, sr: Tensor, hr: Tensor | None = None) -> None:
        """sr, hr: (B, 3, H, W) in [0, 1]; ``hr`` None for a no-reference scorer."""
        with torch.no_grad():
            scores = self.scorer(sr, hr).reshape(-1).to(torch.float64)
        self.total += scores.sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count

    def fresh(self) -> ImageMean:
        return type(self)(self.scorer).to(self.device)


class PSNR(ImageMean):
    higher_is_better = True


class SSIM(ImageMean):
    higher_is_better = True


class LPIPS(ImageMean):
    higher_is_better = False


class LPIPS_VGG(ImageMean):  # the column's display name, LPIPS-VGG
    higher_is_better = False


class DISTS(ImageMean):
    higher_is_better = False


class NIQE(ImageMean):
    higher_is_better = False


class MUSIQ(ImageMean):
    higher_is_better = True


class MANIQA(ImageMean):
    higher_is_better = True


class CLIPIQA(ImageMean):
    higher_is_better = True


class FID(FrechetInceptionDistance):
    """FID of the SR set against the HR set (torchmetrics: running feature sums and Gram matrices, float64), on
    clean-fid Inception features. Fewer than 2 images on either side gives NaN with a warning, not an error."""

    higher_is_better = False

    def __init__(self, features: CleanFIDInception, **kwargs) -> None:
        super().__init__(feature=features, reset_real_features=True, normalize=True, **kwargs)

    def update(self, sr: Tensor, hr: Tensor) -> None:  # type: ignore[override]
        """sr, hr: (B, 3, H, W) in [0, 1]; HR images are the real set, SR images the fake set."""
        with torch.no_grad():
            super().update(hr, real=True)
            super().update(sr, real=False)

    def compute(self) -> Tensor:
        n_real, n_fake = int(self.real_features_num_samples), int(self.fake_features_num_samples)
        if n_real < 2 or n_fake < 2:
            warnings.warn(
                f"FID needs at least 2 SR and 2 HR images, got {n_fake} and {n_real}; reporting NaN.", stacklevel=2
            )
            return torch.tensor(float("nan"), dtype=torch.float64)
        return super().compute()

    def fresh(self) -> FID:
        return FID(self.inception).to(self.device)
